"""The Python Layer: shapes, chunked == one-shot, batch == separate, states, dtypes, attention maps."""
import numpy as np
import pytest
import torch

import dsv4
from conftest import assert_close, random_weights, topk_sets

S = 70  # > W, > several compress windows of both rates, T > k for CSA


@pytest.fixture
def built(layer_type):
    ref, sd, cfg = random_weights(layer_type, seed=3)
    x = np.random.default_rng(5).standard_normal((2, S, cfg.hidden_size)).astype(np.float32)
    return ref, dsv4.Layer(cfg, layer_type, sd), x


def test_matches_the_reference_module(built):
    """A layer built from the reference module's state_dict() gives its output."""
    ref, layer, x = built
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.arange(S)).numpy()
    assert_close(layer(x), want, "one-shot")
    state = layer.new_state()
    got = np.concatenate([layer(x[0, a:b], state=state) for a, b in [(0, 13), (13, 14), (14, 50), (50, S)]])
    assert_close(got, want[0], "chunked")


def test_chunked_equals_one_shot(built):
    _, layer, x = built
    full = layer(x[0])
    for cuts in ([1] * 20 + [S - 20], [4, 4, 8, 54], [S - 1, 1]):
        state, outs, at = layer.new_state(), [], 0
        for n in cuts:
            outs.append(layer(x[0, at:at + n], state=state))
            at += n
        assert state.position == S
        assert_close(np.concatenate(outs), full, f"chunks {cuts[:4]}", atol=1e-6, rtol=1e-6)


def test_forward_batch_equals_separate_bit_for_bit(built):
    _, layer, x = built
    lens = [(5, 1), (20, 3), (0, 1)]  # prefix, then a ragged step
    sep, bat = [layer.new_state() for _ in lens], [layer.new_state() for _ in lens]
    for i, (p, _) in enumerate(lens):
        layer(x[i % 2, :p], state=sep[i])
        layer(x[i % 2, :p], state=bat[i])
    chunks = [x[i % 2, p:p + n] for i, (p, n) in enumerate(lens)]
    want = [layer(c, state=s) for c, s in zip(chunks, sep)]
    got = layer.forward_batch(chunks, bat)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
    assert [s.position for s in bat] == [p + n for p, n in lens]


def test_shapes_kinds_and_dtypes(built):
    _, layer, x = built
    y3 = layer(x)
    y2 = layer(x[1])
    assert y3.shape == x.shape and y2.shape == x[1].shape and y3.dtype == np.float32
    assert np.array_equal(y3[1], y2)  # a batch row is computed alone
    t = torch.from_numpy(x)
    yt = layer(t)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32 and np.array_equal(yt.numpy(), y3)
    for dt in (torch.bfloat16, torch.float16):
        xr = t.to(dt)
        y = layer(xr)
        assert y.dtype == torch.float32 and y.shape == t.shape
        assert np.array_equal(y.numpy(), layer(xr.float().numpy()))  # computed in fp32 on the rounded input
    assert np.array_equal(layer(x.astype(np.float16)), layer(x.astype(np.float16).astype(np.float32)))
    assert np.array_equal(layer(x.astype(np.float64)), y3)
    xf = np.asfortranarray(x[0])
    assert np.array_equal(layer(xf), y3[0])


def test_intermediates(built):
    _, layer, x = built
    y, dbg = layer(x, return_intermediates=True)
    cfg = layer.config
    assert dbg["q"].shape == (2, cfg.num_attention_heads, S, cfg.head_dim)
    assert dbg["kv"].shape == (2, S, cfg.head_dim)
    if layer.layer_type == "sliding_attention":
        assert set(dbg) == {"q", "kv"}
        return
    r = cfg.compress_rate(layer.layer_type)
    assert dbg["compressed_kv"].shape == (2, S // r, cfg.head_dim)
    if layer.layer_type == "compressed_sparse_attention":
        assert dbg["index_scores"].shape == (2, S, S // r)
        assert dbg["topk"].shape == (2, S, cfg.index_topk) and dbg["topk"].dtype == np.int64
        assert dbg["indexer_q"].shape == (2, S, cfg.index_n_heads, cfg.index_head_dim)


def test_attention_map(built):
    _, layer, x = built
    m = layer.attention_map(x[0])
    d = layer.attention_map(x[0], dense=True)
    h = layer.config.num_attention_heads
    total = m["window"] + m["compressed"] + m["sink"]
    assert m["window"].shape == (h, S)
    assert_close(total, np.ones_like(total), "masses sum to 1", atol=1e-5)
    assert "dense" not in m
    dense = d["dense"]
    r = layer.config.compress_rate(layer.layer_type)
    t_n = S // r if r else 0
    assert dense.shape == (h, S, S + t_n)
    assert_close(dense[:, :, :S].sum(-1), m["window"], "dense window mass", atol=1e-5)
    assert_close(dense[:, :, S:].sum(-1), m["compressed"], "dense entry mass", atol=1e-5)
    assert_close(dense.sum(-1) + m["sink"], np.ones_like(total), "dense + sink", atol=1e-5)
    w = layer.config.sliding_window
    for t in (0, S // 2, S - 1):  # nothing outside the window, nothing in the future
        assert not dense[:, t, t + 1:S].any() and not dense[:, t, :max(0, t - w + 1)].any()
    if layer.layer_type == "compressed_sparse_attention":
        _, dbg = layer(x[0], return_intermediates=True)
        assert topk_sets(m["selected"]) == topk_sets(dbg["topk"])
        for t in range(S):
            attended = set(np.nonzero(dense[0, t, S:])[0].tolist())
            assert attended <= topk_sets(m["selected"][t:t + 1])[0]
    if layer.layer_type == "heavily_compressed_attention":
        for t in range(S):  # entry w is visible iff w < (t + 1) // r
            assert (dense[:, t, S + (t + 1) // r:] == 0).all()
            assert (dense[:, t, S:S + (t + 1) // r] > 0).all()
    if r:  # the first entry completes at query r - 1
        assert (m["compressed"][:, :r - 1] == 0).all() and (m["compressed"][:, r - 1:] > 0).all()
    else:
        assert (m["compressed"] == 0).all()
    mb = layer.attention_map(x)
    assert mb["window"].shape == (2, h, S) and np.array_equal(mb["sink"][0], m["sink"])


def test_state_save_load_continue(built, tmp_path):
    _, layer, x = built
    a = layer.new_state()
    layer(x[0, :37], state=a)
    b = a.clone()
    a.save(tmp_path / "s.bin")
    c = layer.load_state(tmp_path / "s.bin")
    assert c.position == 37 and c.nbytes > 0
    want = layer(x[0, 37:], state=a)
    assert np.array_equal(layer(x[0, 37:], state=b), want)
    assert np.array_equal(layer(x[0, 37:], state=c), want)
    a.reset()
    assert a.position == 0
    assert np.array_equal(layer(x[0, :5], state=a), layer(x[0, :5]))


def test_threads_do_not_change_results(built):
    _, layer, x = built
    n0 = dsv4.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            dsv4.set_num_threads(n)
            assert dsv4.get_num_threads() == n
            outs.append(layer(x))
        assert all(np.array_equal(o, outs[0]) for o in outs)
    finally:
        dsv4.set_num_threads(n0)


def test_deployment_numerics(layer_type, tmp_path):
    """numerics="deployment": a smaller state, chunked == one-shot, save/load, and it changes the numbers."""
    ref, sd, cfg = random_weights(layer_type, seed=6)
    dep = dsv4.Layer(cfg, layer_type, sd, numerics="deployment")
    base = dsv4.Layer(cfg, layer_type, sd)
    assert dep.numerics == "deployment" and base.numerics == "reference"
    x = np.random.default_rng(8).standard_normal((S, cfg.hidden_size)).astype(np.float32)
    full = dep(x)
    assert not np.array_equal(full, base(x))
    st = dep.new_state()
    got = np.concatenate([dep(x[:30], state=st), dep(x[30:31], state=st), dep(x[31:], state=st)])
    assert_close(got, full, "deployment chunked", atol=1e-6, rtol=1e-6)
    b = base.new_state()
    base(x, state=b)
    assert st.nbytes < b.nbytes
    st.save(tmp_path / "d.state")
    assert dep.load_state(tmp_path / "d.state").position == S
    with pytest.raises(dsv4.Error, match="d.state"):
        base.load_state(tmp_path / "d.state")  # a state of the other numerics
    with pytest.raises(dsv4.Error, match="numerics"):
        dsv4.Layer(cfg, layer_type, sd, numerics="fp4")


@pytest.mark.parametrize("numerics", ["reference", "deployment"])
def test_synthetic_state(layer_type, numerics, tmp_path):
    """Layer.synthetic_state: a state of any length without a prefill, seeded, in the layer's numerics."""
    _, sd, cfg = random_weights(layer_type, seed=4)
    layer = dsv4.Layer(cfg, layer_type, sd, numerics=numerics)
    st = layer.synthetic_state(1000, seed=7)
    assert st.position == 1000 and st.layer_type == layer.layer_type
    real = layer.new_state()
    layer(np.zeros((1000, cfg.hidden_size), np.float32), state=real)
    assert st.nbytes == real.clone().nbytes  # the shapes and formats of a prefilled state (tight)
    tok = np.random.default_rng(9).standard_normal((1, cfg.hidden_size)).astype(np.float32)
    y = layer(tok, state=st.clone())
    assert y.shape == (1, cfg.hidden_size) and np.isfinite(y).all()
    assert np.array_equal(layer(tok, state=layer.synthetic_state(1000, seed=7)), y)  # seeded
    assert not np.array_equal(layer(tok, state=layer.synthetic_state(1000, seed=8)), y)
    st.save(tmp_path / "s.state")  # passes load_state's checks
    assert np.array_equal(layer(tok, state=layer.load_state(tmp_path / "s.state")), y)
    assert layer.synthetic_state(np.int64(3)).position == 3
    with pytest.raises(dsv4.Error, match="tokens must be >= 0"):
        layer.synthetic_state(-1)
    with pytest.raises(dsv4.Error, match="tokens: expected an integer"):
        layer.synthetic_state(2.5)
    with pytest.raises(dsv4.Error, match="seed: expected an integer >= 0"):
        layer.synthetic_state(10, seed=-1)
