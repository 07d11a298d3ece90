"""Packed documents (cu_seqlens / segment_ids): each document of a packed buffer equals the
document run alone, bit for bit — layer(x), attention maps, backward's dx, dsv4.torch.Attention's
autograd — at 1, 2 and 3 threads; bad boundaries are refused; and MaxText's packing rule (windows in
the packed index space, segment ids) sees exactly what dsv4's does when every document starts at a
multiple of 128 tokens (a small model of both rules, docs/packing.md)."""
import math

import numpy as np
import pytest
import torch

import dsv4
import dsv4.torch
from conftest import random_weights

# Window 16, CSA m = 4 (top-8), HCA m' = 32 (conftest.small_config): 5 < W, 3 < m, an empty
# document, 40 tokens (10 CSA entries > k), one token, 13 < m', a 1100-token one (two pieces).
LENGTHS = [5, 3, 0, 40, 1, 13, 1100, 17, 70]
CU = np.cumsum([0] + LENGTHS)


def packed_input(config, seed=0):
    return np.random.default_rng(seed).standard_normal((CU[-1], config.hidden_size)).astype(np.float32)


def documents(x):
    return [x[a:b] for a, b in zip(CU[:-1], CU[1:])]


def segment_ids():
    return np.repeat(np.arange(len(LENGTHS)) * 3, LENGTHS)  # ids need not be consecutive


@pytest.mark.parametrize("numerics", ["reference", "deployment"])
def test_forward_equals_each_document_alone(layer_type, numerics):
    _, w, cfg = random_weights(layer_type, seed=11)
    layer = dsv4.Layer(cfg, layer_type, w, numerics=numerics)
    x = packed_input(cfg)
    want = np.concatenate([layer(d) for d in documents(x)])
    n0 = dsv4.get_num_threads()
    try:
        for n in (1, 2, 3):
            dsv4.set_num_threads(n)
            assert np.array_equal(layer(x, cu_seqlens=CU), want), f"{n} threads"
    finally:
        dsv4.set_num_threads(n0)
    assert np.array_equal(layer(x[None], segment_ids=segment_ids()), want[None])
    y = layer(torch.from_numpy(x), cu_seqlens=torch.from_numpy(CU))
    assert isinstance(y, torch.Tensor) and np.array_equal(y.numpy(), want)
    y, dbg = layer(x, cu_seqlens=list(CU), return_intermediates=True)
    assert np.array_equal(y, want) and len(dbg) == len(LENGTHS)
    for d, doc in zip(dbg, documents(x)):
        if len(doc):
            assert np.array_equal(d["kv"], layer(doc, return_intermediates=True)[1]["kv"])


def test_backward_equals_each_document_alone(layer_type):
    _, w, cfg = random_weights(layer_type, seed=12)
    layer = dsv4.Layer(cfg, layer_type, w)
    x = packed_input(cfg, 1)
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    alone = [layer.backward(a, b) for a, b in zip(documents(x), documents(dy))]
    g = layer.backward(x, dy, cu_seqlens=CU)
    assert np.array_equal(g.dx, np.concatenate([a.dx for a in alone]))
    for k, v in g.weights.items():  # summed over the documents (in place, in document order)
        total = sum(a.weights[k] for a in alone)
        assert np.allclose(v, total, rtol=1e-5, atol=1e-5 * max(1e-30, np.abs(total).max())), k
    y, tape = layer.forward_train(x, segment_ids=segment_ids())
    assert np.array_equal(y, layer(x, cu_seqlens=CU))
    g2 = layer.backward(tape, dy)
    assert np.array_equal(g2.dx, g.dx) and all(np.array_equal(g2.weights[k], v) for k, v in g.weights.items())
    # Equal lengths: packed is the batch [B, S, d], gradients to the bit.
    xb, dyb = x[:3 * 40].reshape(3, 40, -1), dy[:3 * 40].reshape(3, 40, -1)
    gb, gp = layer.backward(xb, dyb), layer.backward(x[:120], dy[:120], cu_seqlens=[0, 40, 80, 120])
    assert np.array_equal(gb.dx.reshape(120, -1), gp.dx)
    assert all(np.array_equal(gb.weights[k], v) for k, v in gp.weights.items())


def test_torch_attention_autograd(layer_type):
    ref, _, cfg = random_weights(layer_type, seed=13)
    mod = dsv4.torch.Attention(cfg, layer_type, ref.state_dict())
    x = torch.from_numpy(packed_input(cfg, 3)[:300])
    cu = [0, 5, 45, 45, 200, 300]
    xp = x.clone().requires_grad_(True)
    y = mod(xp, cu_seqlens=torch.tensor(cu))
    (y * y).sum().backward()
    dx_packed = xp.grad.clone()
    grads_packed = {n: p.grad.clone() for n, p in mod.named_parameters()}
    mod.zero_grad()
    parts = []
    for a, b in zip(cu[:-1], cu[1:]):
        xd = x[a:b].clone().requires_grad_(True)
        yd = mod(xd)
        (yd * yd).sum().backward()
        parts.append((yd.detach(), xd.grad))
    assert torch.equal(y.detach(), torch.cat([p[0] for p in parts]))
    assert torch.equal(dx_packed, torch.cat([p[1] for p in parts]))
    for n, p in mod.named_parameters():
        assert torch.allclose(grads_packed[n], p.grad, rtol=1e-5, atol=1e-5 * float(p.grad.abs().max()) + 1e-30), n


def test_attention_maps_per_document(layer_type):
    _, w, cfg = random_weights(layer_type, seed=14)
    layer = dsv4.Layer(cfg, layer_type, w)
    x = packed_input(cfg, 4)[:CU[6]]
    maps = layer.attention_map(x, cu_seqlens=CU[:7], dense=True)
    assert len(maps) == 6
    for m, doc in zip(maps, documents(x)):
        if len(doc):
            alone = layer.attention_map(doc, dense=True)
            assert all(np.array_equal(m[k], alone[k]) for k in alone), list(alone)


def test_bad_boundaries_are_refused():
    _, w, cfg = random_weights("csa", seed=15)
    layer = dsv4.Layer(cfg, "csa", w)
    x = packed_input(cfg)[:10]
    for cu, msg in [([], "empty"), ([1, 10], "first boundary must be 0"), ([0, 6, 4, 10], "must not decrease"),
                    ([0, 4, 9], "length T = 10"), ([0.0, 10.0], "integers"), ([[0, 10]], "1-D")]:
        with pytest.raises(dsv4.Error, match=msg):
            layer(x, cu_seqlens=cu)
    with pytest.raises(dsv4.Error, match=r"segment_ids\[3\] = 0 < segment_ids\[2\] = 1"):
        layer(x[:4], segment_ids=[0, 0, 1, 0])
    with pytest.raises(dsv4.Error, match="not both"):
        layer(x, cu_seqlens=[0, 10], segment_ids=np.zeros(10, np.int64))
    with pytest.raises(dsv4.Error, match="decode state"):
        layer(x, state=layer.new_state(), cu_seqlens=[0, 10])
    with pytest.raises(dsv4.Error, match=r"\[T, 256\]"):
        layer(x.reshape(2, 5, -1), cu_seqlens=[0, 10])
    _, tape = layer.forward_train(x, cu_seqlens=[0, 3, 10])
    with pytest.raises(dsv4.Error, match="tape knows"):
        layer.backward(tape, x, cu_seqlens=[0, 10])
    assert list(dsv4.cu_seqlens_from_segment_ids([4, 4, 9])) == [0, 2, 3]


# --- MaxText's rule, modelled: what each query sees, as sets of packed token indices -------------
#
# A window key is (packed index, RoPE position); a compressed entry is (the slots it pools: (packed
# index, bias row, series), its RoPE position). dsv4: per document, positions from 0. MaxText:
# windows and compressor windows cut in the packed index space, a segment mask on keys and on pooled
# slots, a compressor window whose own tokens span two documents dropped, positions from the
# per-token (segment-relative) positions array.

def dsv4_view(lengths, window, rate, overlap):
    view, start = [], 0
    for n in lengths:
        entries = [dsv4_entry(start, w, rate, overlap) for w in range(n // rate if rate else 0)]
        for t in range(n):
            keys = frozenset((start + u, u) for u in range(max(0, t - window + 1), t + 1))
            view.append((keys, frozenset(entries[:(t + 1) // rate if rate else 0])))
        start += n
    return view


def dsv4_entry(start, w, rate, overlap):
    slots = {(start + w * rate + j, j, "B") for j in range(rate)}
    if overlap and w > 0:
        slots |= {(start + (w - 1) * rate + j, j, "A") for j in range(rate)}
    return frozenset(slots), w * rate


def maxtext_view(lengths, window, rate, overlap):
    seg = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.concatenate([np.arange(n) for n in lengths])
    entries = []  # packed window w: (its document, its entry), or None if it spans two documents
    for w in range(len(seg) // rate if rate else 0):
        own = range(w * rate, (w + 1) * rate)
        if any(seg[j] != seg[w * rate] for j in own):
            entries.append(None)
            continue
        slots = {(j, j - w * rate, "B") for j in own}
        if overlap and w > 0:  # the segment mask on the pooled slots
            slots |= {(j, j - (w - 1) * rate, "A") for j in range((w - 1) * rate, w * rate) if seg[j] == seg[w * rate]}
        entries.append((seg[w * rate], (frozenset(slots), int(pos[w * rate]))))
    view = []
    for i in range(len(seg)):
        keys = frozenset((j, int(pos[j])) for j in range(max(0, i - window + 1), i + 1) if seg[j] == seg[i])
        seen = entries[:(i + 1) // rate if rate else 0]
        view.append((keys, frozenset(e[1] for e in seen if e is not None and e[0] == seg[i])))
    return view


def flash_rules():
    """(name, window, rate, overlap) of V4-Flash's three layer types, and the alignment that makes
    every compressor window start a document's window: the rates' least common multiple."""
    c = dsv4.Config.preset("v4-flash")
    rates = dict(swa=0, csa=c.compress_rate_csa, hca=c.compress_rate_hca)
    return [(t, c.sliding_window, r, t == "csa") for t, r in rates.items()], math.lcm(*[r for r in rates.values() if r])


def test_maxtext_rule_equals_dsv4_when_documents_start_at_multiples_of_128():
    rules, align = flash_rules()
    assert align == 128  # CSA m = 4 (overlapping), HCA m' = 128
    aligned = [256, 128, 0, 384, 200]  # every start a multiple of 128; the last one ragged
    for name, window, rate, overlap in rules:
        assert maxtext_view(aligned, window, rate, overlap) == dsv4_view(aligned, window, rate, overlap), name
    # Otherwise the rules differ on the compressed entries (the sliding window never does): a
    # document starting mid-window loses the straddling window and pools the packed-space windows.
    ragged = [102, 300, 90]
    for name, window, rate, overlap in rules:
        same = maxtext_view(ragged, window, rate, overlap) == dsv4_view(ragged, window, rate, overlap)
        assert same == (rate == 0), name
    # CSA alone needs only multiples of m = 4.
    assert maxtext_view([64, 36, 80], 128, 4, True) == dsv4_view([64, 36, 80], 128, 4, True)


def test_cli_run_and_bench_packed(tmp_path):
    import json
    import subprocess

    from test_tools import CLI, synth
    model = synth(tmp_path)
    x = dsv4.load_safetensors(model / "sample_input.safetensors")["hidden_states"][0]  # [37, 64]
    cu = np.array([0, 10, 10, 37], dtype=np.int64)
    dsv4.save_safetensors(tmp_path / "packed.safetensors", {"hidden_states": x, "cu_seqlens": cu})
    r = subprocess.run([CLI, "run", "-m", model, "--layer", "1", "--input", tmp_path / "packed.safetensors",
                        "--cu-seqlens", "cu_seqlens", "--output", tmp_path / "y.safetensors"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    layer = dsv4.Layer.from_model(model, 1)
    y = dsv4.load_safetensors(tmp_path / "y.safetensors")["output"]
    assert np.array_equal(y, np.concatenate([layer(x[a:b]) for a, b in zip(cu[:-1], cu[1:])]))
    r = subprocess.run([CLI, "bench", "--packed", "--narrow", "16", "--docs", "3", "--doc-min", "20", "--doc-max",
                        "300", "--backward", "--repeats", "1", "-t", "2", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["identical"] and j["documents"] == 3 and j["tokens"] == sum(j["lengths"]) and j["packed_seconds"] > 0
