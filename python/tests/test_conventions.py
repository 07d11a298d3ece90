"""Python conventions: the lazy dsv4.torch, Attention.from_model and checkpoint names, dtypes in and out,
.to()/.double(), the warning of Layer on tensors that require grad, block-wise attention maps and
the plot's summary."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import dsv4
import dsv4._layer
from conftest import CONFORMANCE, Case, assert_close, random_weights
from dsv4.plot import AttentionSummary
from test_tools import PYENV, synth


def test_version_is_the_cmake_project_version():
    import re
    from conftest import ROOT
    text = open(f"{ROOT}/CMakeLists.txt").read()
    assert dsv4.__version__ == re.search(r"project\(dsv4 VERSION ([0-9.]+)", text).group(1)
    info = dsv4.build_info()
    assert info["version"] == dsv4.__version__ and "OpenBLAS" in info["blas"] and info["isa"]


def test_torch_submodule_is_lazy():
    code = ("import sys, dsv4\n"
            "assert 'torch' not in sys.modules, 'import dsv4 imported torch'\n"
            "cls = dsv4.torch.Attention\n"
            "assert 'torch' in sys.modules and cls.__module__ == 'dsv4.torch'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], env=PYENV, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_mpi_is_optional(monkeypatch):
    """import dsv4 does not import mpi4py (context_parallel_forward does, on first use); a build
    without MPI says so when context parallelism is asked for."""
    code = ("import sys, dsv4\n"
            "assert 'mpi4py' not in sys.modules, 'import dsv4 imported mpi4py'\n"
            "print(dsv4.build_info()['mpi'])\n")
    r = subprocess.run([sys.executable, "-c", code], env=PYENV, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() in ("True", "False"), r.stderr

    class NoMpi:
        @staticmethod
        def build_info():
            return dict(dsv4.build_info(), mpi=False)

    import dsv4._parallel
    monkeypatch.setattr(dsv4._parallel, "_core", NoMpi)
    for call in (lambda: dsv4.rank_blocks(10, 2, 0), lambda: dsv4.context_parallel_forward(None, None, 0, None)):
        with pytest.raises(ImportError, match="dsv4 was built without MPI"):
            call()


@pytest.mark.parametrize("scheme", ["hf", "original"])
def test_attention_from_model_and_checkpoint_names(tmp_path, scheme):
    """from_model(dir, i) and a constructor given the checkpoint's own tensors (full names, FP8 with
    scales) hold the dequantised weights under the reference keys: the same layer as Layer.from_model."""
    model = synth(tmp_path, "--scheme", scheme, "--dtype", "fp8", "--sharded")
    x = torch.from_numpy(dsv4.load_safetensors(model / "sample_input.safetensors")["hidden_states"])
    from test_tools import raw_tensors
    raw = raw_tensors(model)
    for i, layer_type in enumerate(dsv4.Config.from_hf(model).layer_types):
        want = dsv4.Layer.from_model(model, i)(x)
        attn = dsv4.torch.Attention.from_model(model, i)
        assert attn.layer_type == layer_type and "q_a_proj.weight" in dict(attn.named_parameters())
        prefix = f"model.layers.{i}.self_attn." if scheme == "hf" else f"layers.{i}.attn."
        given = {k: (d, a) for k, (d, a) in raw.items() if k.startswith(prefix)}
        again = dsv4.torch.Attention(attn.config, layer_type, given)
        assert list(dict(again.named_parameters())) == list(dict(attn.named_parameters()))
        with torch.no_grad():
            assert torch.equal(attn(x), want) and torch.equal(again(x), want)


def test_output_dtype_follows_input_and_gradients(layer_type):
    ref, sd, cfg = random_weights(layer_type, seed=6)
    attn = dsv4.torch.Attention(cfg, layer_type, ref.state_dict())
    x = torch.randn(21, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    want = dsv4.Layer(cfg, layer_type, sd)(x)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        xi = x.to(dtype).clone().requires_grad_()
        y = attn(xi)
        assert y.dtype == dtype and y.requires_grad
        y.float().sum().backward()
        assert xi.grad.dtype == dtype
        with torch.no_grad():
            assert attn(x.to(dtype)).dtype == dtype
    assert torch.equal(attn(x.double()).float(), dsv4.Layer(cfg, layer_type, sd)(x.double()))
    assert_close(attn(x).detach().numpy(), want.numpy(), "float32", atol=0, rtol=0)


def test_to_dtype_honoured_or_refused(layer_type):
    ref, sd, cfg = random_weights(layer_type, seed=7)
    attn = dsv4.torch.Attention(cfg, layer_type, ref.state_dict())
    x = torch.randn(2, 19, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    for bad in (lambda m: m.double(), lambda m: m.to(torch.float64)):
        with pytest.raises(dsv4.Error, match="float64 are not supported: dsv4 computes in float32"):
            bad(attn)
    assert all(p.dtype == torch.float32 for p in attn.parameters())  # refused before anything changed
    attn.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in attn.parameters())
    bf16 = {k: torch.from_numpy(v).bfloat16() for k, v in sd.items()}  # the same rounding, widened exactly
    with torch.no_grad():
        assert torch.equal(attn(x), dsv4.Layer(cfg, layer_type, bf16)(x))
    y = attn(x.requires_grad_())
    y.sum().backward()
    assert attn.q_a_proj.weight.grad.dtype == torch.bfloat16 and x.grad is not None
    attn.float()
    assert all(p.dtype == torch.float32 for p in attn.parameters())


def test_layer_warns_once_that_it_has_no_graph(layer_type, monkeypatch):
    _, sd, cfg = random_weights(layer_type, seed=8)
    layer = dsv4.Layer(cfg, layer_type, sd)
    x = torch.randn(5, cfg.hidden_size)
    monkeypatch.setattr(dsv4._layer, "_warned_no_graph", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)                                  # no grad asked: no warning
        with torch.no_grad():
            layer(x.clone().requires_grad_())     # grad mode off: none either
        y = layer(x.clone().requires_grad_())
        layer(x.clone().requires_grad_())
        layer.forward_batch([x.clone().requires_grad_()], [layer.new_state()])
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "no autograd graph" in msgs[0] and "dsv4.torch.Attention" in msgs[0]
    assert not y.requires_grad


def test_attention_map_block_by_block(layer_type):
    """Maps of chunks through a state are the one-shot map's rows (dense: its columns so far)."""
    _, sd, cfg = random_weights(layer_type, seed=9)
    layer = dsv4.Layer(cfg, layer_type, sd)
    s = 70
    x = np.random.default_rng(3).standard_normal((s, cfg.hidden_size)).astype(np.float32)
    full = layer.attention_map(x, dense=True)
    r = cfg.compress_rate(layer.layer_type)
    state, q0 = layer.new_state(), 0
    for n in (1, 16, 3, 50):
        m = layer.attention_map(x[q0:q0 + n], dense=True, state=state)
        q1, t = q0 + n, (q0 + n) // r if r else 0
        assert state.position == q1 and m["dense"].shape == (cfg.num_attention_heads, n, q1 + t)
        for k in ("window", "compressed", "sink"):
            assert_close(m[k], full[k][:, q0:q1], f"{k} of queries {q0}..{q1}", atol=1e-6, rtol=1e-6)
        want = np.concatenate([full["dense"][:, q0:q1, :q1], full["dense"][:, q0:q1, s:s + t]], axis=2)
        assert_close(m["dense"], want, f"dense of queries {q0}..{q1}", atol=1e-6, rtol=1e-6)
        if "selected" in full:
            assert np.array_equal(m["selected"], full["selected"][q0:q1, :m["selected"].shape[1]])
        q0 = q1
    with pytest.raises(dsv4.Error, match="made by another dsv4.Layer"):
        layer.attention_map(x[:3], state=dsv4.Layer(cfg, layer_type, sd).new_state())


@pytest.mark.parametrize("path", [p for p in CONFORMANCE if "stateless_s37." in p])
def test_plot_summary_is_the_map_binned(path):
    """The plot's block-wise summary: unbinned it is the one-shot map (CSA: the selection), binned
    it is that image summed over bins of keys and averaged over bins of queries."""
    case = Case(path)
    layer = dsv4.Layer(case.config, case.layer_type, case.weights)
    x = case.chunks[0]["hidden_states"][0]
    s, h = x.shape[0], case.config.num_attention_heads
    full = layer.attention_map(x, dense=True)
    if layer.layer_type == "compressed_sparse_attention":
        image = np.zeros((s, s // case.config.compress_rate_csa))
        for t, row in enumerate(full["selected"]):
            image[t, row[row >= 0]] = 1
    else:
        image = full["dense"].mean(axis=0)
    parts = np.stack([full[k].mean(axis=0) for k in ("window", "compressed", "sink")], axis=1)
    for block_bytes in (1, 1 << 30):  # one query per block, or all at once
        a = AttentionSummary(layer, x, bins=512, block_bytes=block_bytes)
        assert_close(a.image, image, "image", atol=1e-6, rtol=1e-6)
        assert_close(a.mass, parts, "mass by query", atol=1e-6, rtol=1e-6)
        assert_close(a.sink_per_head, full["sink"].mean(axis=1), "sink per head", atol=1e-6, rtol=1e-6)
        assert a.sink_per_head.shape == (h,)
    b = AttentionSummary(layer, x, bins=5, block_bytes=1)
    rows, cols = b.row_edges, b.col_edges
    assert len(rows) == 6 and rows[-1] == s and cols[-1] == image.shape[1]
    want = np.add.reduceat(np.add.reduceat(image, rows[:-1], axis=0), cols[:-1], axis=1) / np.diff(rows)[:, None]
    assert_close(b.image, want, "binned image", atol=1e-6, rtol=1e-6)


def test_plot_errors_are_one_line(tmp_path):
    model = synth(tmp_path)
    base = [sys.executable, "-m", "dsv4.plot", "--model", str(model), "--input",
            str(model / "sample_input.safetensors"), "--out", str(tmp_path / "x.png")]
    for args, says in ((["--layer", "7"], "layer 7 out of range (the model has 3 layers)"),
                       (["--layer", "-1"], "--layer -1: layers are numbered from 0"),
                       (["--layer", "0", "--input-name", "nope"], "no tensor 'nope' (has: hidden_states)")):
        r = subprocess.run(base + args, env=PYENV, capture_output=True, text=True)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("python3 -m dsv4.plot: error: ") and says in r.stderr
    assert not (tmp_path / "x.png").exists()
