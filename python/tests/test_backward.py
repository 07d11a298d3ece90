"""Gradients: dsv4's fast backward (fp32) and the naive reference backward (double) against
PyTorch autograd of the project's reference module (bench/torch_baseline.py) run in float64.

Ground truth: torch_baseline.DeepseekV4Attention in float64 (its norms and softmaxes keep
float64; the RoPE angles stay float32, as the spec computes them), loss = sum(y * dy).

Tolerance, elementwise: |ours - torch| <= 1e-5 * scale + 1e-5 * |torch|, scale = max |torch|
of that tensor. A weight's gradient is a sum over every token (and batch row) of products of
activations and upstream gradients; the terms are of the size of the tensor's largest
entries and cancel, so an fp32 sum carries an error relative to the terms, not to the
(possibly tiny) result. A purely elementwise bound would fail on exactly the entries that
cancel to near zero; the tensor's scale bounds the terms. dx gets the same rule (its rows
are sums over the queries that read each token).

CSA top-k selection is discrete: when two index scores nearly tie, fp32 (dsv4) and float64
(torch) may pick different entries, and then the gradients legitimately differ. Every CSA
case compares dsv4's selection (Layer intermediates) with torch's topk_indices and, for the
random cases, draws a new input when they differ; the redraws are counted, reported as a
warning and bounded. The shipped conformance files must select identically as they are.
"""
import glob
import os
import threading
import warnings

import numpy as np
import pytest
import torch

import dsv4
import dsv4.torch
from conftest import ROOT, Case, random_weights, small_config, topk_sets, torch_baseline

try:
    import _dsv4_reference  # the tests' own module: python/tests/reference_ext.cpp
except ImportError as e:
    raise ImportError("_dsv4_reference is built with the tests (DSV4_BUILD_TESTS) into build/python/tests, "
                      "which ctest puts on PYTHONPATH; run the tests through ctest or add that folder") from e

ATOL_SCALE, RTOL = 1e-5, 1e-5
MAX_REDRAWS = 3
STATELESS = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "conformance", "*stateless*.safetensors")))
LONG = {"swa": "sliding_attention", "csa": "compressed_sparse_attention", "hca": "heavily_compressed_attention"}
INDEXER = "compressor.indexer."


def assert_grad_close(ours, truth, what):
    """|ours - truth| <= 1e-5 max|truth| + 1e-5 |truth| elementwise; returns max err / bound."""
    ours, truth = np.asarray(ours, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    assert ours.shape == truth.shape, f"{what}: shape {ours.shape}, torch {truth.shape}"
    assert np.isfinite(ours).all(), f"{what}: non-finite values"
    if truth.size == 0:
        return 0.0
    bound = ATOL_SCALE * np.abs(truth).max() + RTOL * np.abs(truth)
    err = np.abs(ours - truth)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} values out of tolerance, max err {err.max():.3g}, "
                           f"scale {np.abs(truth).max():.3g}")
    return float((err / np.maximum(bound, np.finfo(np.float64).tiny)).max())


class Truth:
    """torch float64 autograd of the reference module: dx, {name: dweight} (zeros where torch gives
    None: the indexer), which names torch gave no gradient, and the CSA selection."""

    def __init__(self, config, layer_type, weights, x, dy):
        tb = torch_baseline()
        m = tb.DeepseekV4Attention(dict(config.to_dict(), layer_type=LONG.get(layer_type, layer_type))).double()
        m.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in weights.items()},
                          strict=True)
        xt = torch.from_numpy(np.asarray(x, dtype=np.float64)).requires_grad_()
        dbg = {}
        y = m(xt, torch.arange(xt.shape[1]), dbg)
        (y * torch.from_numpy(np.asarray(dy, dtype=np.float64))).sum().backward()
        self.dx = xt.grad.numpy()
        self.no_grad = {n for n, p in m.named_parameters() if p.grad is None}
        self.weights = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().numpy()
                        for n, p in m.named_parameters()}
        self.topk = dbg["topk_indices"].numpy() if "topk_indices" in dbg else None


def same_selection(layer, x, truth):
    if truth.topk is None:
        return True
    _, dbg = layer(x, return_intermediates=True)
    return topk_sets(dbg["topk"]) == topk_sets(truth.topk)


def check_gradients(dx, weights, truth, what):
    """Every gradient against torch's; the indexer's are exactly zero. Returns the worst err / bound."""
    assert set(weights) == set(truth.weights), f"{what}: names {sorted(set(weights) ^ set(truth.weights))} differ"
    worst = assert_grad_close(dx, truth.dx, f"{what} dx")
    for name, g in weights.items():
        if name.startswith(INDEXER):
            assert name in truth.no_grad, f"torch gives {name} a gradient"
            assert np.asarray(g).shape == truth.weights[name].shape and not np.asarray(g).any(), \
                f"{what} {name}: the indexer's gradient must be zero"
            continue
        worst = max(worst, assert_grad_close(g, truth.weights[name], f"{what} d{name}"))
    return worst


def check_both(config, layer_type, weights, x, dy, truth, what):
    """dsv4's fast backward and the reference backward, both against torch."""
    layer = dsv4.Layer(config, layer_type, weights)
    g = layer.backward(x, dy)
    assert isinstance(g, dsv4.Gradients) and g.dx.dtype == np.float32 and g.dx.shape == x.shape
    check_gradients(g.dx, g.weights, truth, f"{what} dsv4")
    rdx, rw = _dsv4_reference.reference_backward(config, layer_type, weights, x, dy)
    check_gradients(rdx, rw, truth, f"{what} reference")


# ---------------------------------------------------------------------------------------------
# The shipped conformance configurations: weights and x from the file, dy seeded.

@pytest.mark.parametrize("path", STATELESS, ids=[os.path.basename(p)[:-12] for p in STATELESS])
def test_conformance_gradients(path):
    case = Case(path)
    x = case.chunks[0]["hidden_states"]
    dy = np.random.default_rng(11).standard_normal(x.shape).astype(np.float32)
    truth = Truth(case.config, case.layer_type, case.weights, x, dy)
    layer = dsv4.Layer(case.config, case.layer_type, case.weights)
    assert same_selection(layer, x, truth), f"{case.name}: dsv4 and torch float64 select different top-k entries"
    check_both(case.config, case.layer_type, case.weights, x, dy, truth, case.name)


# ---------------------------------------------------------------------------------------------
# Random configurations: odd S, S < W, S < m, T < k and T > k, batch 1-3, all three types.

# The conformance "medium" dims (W 16, m 4 / 32, k 8), and a smaller config with other rates.
CONFIGS = {
    "medium": small_config,
    "narrow": lambda: small_config(hidden_size=96, num_attention_heads=4, head_dim=32, qk_rope_head_dim=8,
                                   q_lora_rank=48, o_groups=2, o_lora_rank=24, sliding_window=8,
                                   compress_rate_csa=2, compress_rate_hca=8, index_n_heads=4, index_head_dim=16,
                                   index_topk=5),
}
RANDOM_CASES = [  # config, type, B, S, what it covers
    ("medium", "swa", 1, 5, "S < W"),
    ("medium", "swa", 3, 37, "odd S > W"),
    ("narrow", "swa", 2, 19, "odd S > W"),
    ("medium", "csa", 2, 3, "S < m: no entries"),
    ("medium", "csa", 1, 21, "T = 5 < k"),
    ("medium", "csa", 2, 45, "T = 11 > k"),
    ("narrow", "csa", 1, 9, "T = 4 < k"),
    ("narrow", "csa", 3, 23, "T = 11 > k"),
    ("medium", "hca", 2, 31, "S < m: no entries"),
    ("medium", "hca", 1, 33, "T = 1"),
    ("medium", "hca", 3, 70, "T = 2"),
    ("narrow", "hca", 2, 27, "T = 3"),
]
REDRAWS = {}  # case id -> inputs drawn again because of a top-k near-tie


def draw(case_id, config, layer_type, weights, B, S, seed):
    """(x, dy, truth) whose CSA selection is the same in dsv4 and torch, redrawing (counted) if not."""
    layer = dsv4.Layer(config, layer_type, weights)
    for redraw in range(MAX_REDRAWS + 1):
        rng = np.random.default_rng([seed, redraw])
        x = rng.standard_normal((B, S, config.hidden_size)).astype(np.float32)
        dy = rng.standard_normal((B, S, config.hidden_size)).astype(np.float32)
        truth = Truth(config, layer_type, weights, x, dy)
        if same_selection(layer, x, truth):
            REDRAWS[case_id] = redraw
            if redraw:
                warnings.warn(f"{case_id}: top-k near-tie between fp32 and float64, input redrawn {redraw} time(s)")
            return x, dy, truth
    pytest.fail(f"{case_id}: the top-k selections differ on {MAX_REDRAWS + 1} inputs in a row")


@pytest.mark.parametrize("cfg,layer_type,B,S,why", RANDOM_CASES,
                         ids=[f"{c}-{t}-B{b}-S{s}" for c, t, b, s, _ in RANDOM_CASES])
def test_random_gradients(cfg, layer_type, B, S, why):
    config = CONFIGS[cfg]()
    seed = RANDOM_CASES.index((cfg, layer_type, B, S, why))
    _, weights, _ = random_weights(layer_type, seed=100 + seed, config=config)
    x, dy, truth = draw(f"{cfg}-{layer_type}-B{B}-S{S}", config, layer_type, weights, B, S, seed)
    check_both(config, layer_type, weights, x, dy, truth, f"{cfg} {layer_type} B={B} S={S} ({why})")


# ---------------------------------------------------------------------------------------------
# The API: tape and one-call forms, kinds, shapes, determinism, errors.

@pytest.fixture
def built(layer_type):
    _, sd, cfg = random_weights(layer_type, seed=21)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 29, cfg.hidden_size)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    return dsv4.Layer(cfg, layer_type, sd), sd, x, dy


def assert_same_bits(a, b, what):
    assert a.dx.shape == b.dx.shape and np.array_equal(np.asarray(a.dx), np.asarray(b.dx)), f"{what}: dx"
    assert list(a.weights) == list(b.weights), f"{what}: names"
    for k in a.weights:
        assert np.array_equal(np.asarray(a.weights[k]), np.asarray(b.weights[k])), f"{what}: d{k}"


def test_tape_and_one_call_agree_bit_for_bit(built):
    layer, sd, x, dy = built
    y, tape = layer.forward_train(x)
    assert isinstance(tape, dsv4.Tape) and tape.nbytes >= x.nbytes  # it keeps the input at least
    assert np.array_equal(y, layer(x)), "forward_train must give forward's output bit for bit"
    g = layer.backward(tape, dy)
    assert set(g.weights) == set(sd), "the gradients carry exactly the state_dict's names"
    for k, v in sd.items():
        assert g.weights[k].shape == v.shape and g.weights[k].dtype == np.float32
    assert_same_bits(g, layer.backward(x, dy), "tape vs one call")
    assert_same_bits(g, layer.backward(tape, dy), "a tape can be used twice")
    dx, dweights = g  # a NamedTuple
    assert dx is g.dx and dweights is g.weights


def test_threads_do_not_change_gradients(built):
    layer, _, x, dy = built
    n0 = dsv4.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            dsv4.set_num_threads(n)
            runs.append(layer.backward(x, dy))
    finally:
        dsv4.set_num_threads(n0)
    for n, g in zip((2, 3), runs[1:]):
        assert_same_bits(g, runs[0], f"{n} threads vs 1")


def test_kinds_shapes_and_batch_rows(built):
    layer, _, x, dy = built
    g = layer.backward(x, dy)
    g2 = layer.backward(x[1], dy[1])  # [S, d] in, [S, d] out; a batch row alone
    assert g2.dx.shape == x[1].shape
    assert_grad_close(g2.dx, g.dx[1], "dx of a batch row alone")
    g0 = layer.backward(x[0], dy[0])
    for k in g.weights:  # weight gradients are summed over the batch
        assert_grad_close(g.weights[k], g0.weights[k] + g2.weights[k], f"d{k} of the batch = sum of its rows'")
    gt = layer.backward(torch.from_numpy(x), torch.from_numpy(dy))
    assert isinstance(gt.dx, torch.Tensor) and gt.dx.dtype == torch.float32
    assert all(isinstance(v, torch.Tensor) for v in gt.weights.values())
    assert_same_bits(gt, g, "torch vs NumPy")
    yt, tape = layer.forward_train(torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor)
    assert isinstance(layer.backward(tape, dy).dx, torch.Tensor), "a torch input's tape gives torch gradients"
    assert_same_bits(layer.backward(x.astype(np.float64), dy.astype(np.float64)), g, "float64 in")


def test_gil_is_released_during_backward():
    """While one thread runs forward_train + backward, Python code in another keeps running."""
    _, sd, cfg = random_weights("csa", seed=23)
    layer = dsv4.Layer(cfg, "csa", sd)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 600, cfg.hidden_size)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    want = layer.backward(x, dy)
    results, ticks = {}, 0

    def work():
        y, tape = layer.forward_train(x)
        results["g"] = layer.backward(tape, dy)

    t = threading.Thread(target=work)
    t.start()
    while t.is_alive():
        ticks += 1  # pure Python: runs only while the worker does not hold the GIL
    t.join()
    assert_same_bits(results["g"], want, "computed in a thread")
    assert ticks > 10000, f"only {ticks} Python steps ran during forward_train + backward"


def test_tape_holds_nothing_quadratic(layer_type):
    _, sd, cfg = random_weights(layer_type, seed=22)
    layer = dsv4.Layer(cfg, layer_type, sd)
    x = np.random.default_rng(4).standard_normal((128, cfg.hidden_size)).astype(np.float32)
    small, large = layer.forward_train(x[:64])[1].nbytes, layer.forward_train(x)[1].nbytes
    assert 0 < small < large <= 2.2 * small, f"tape bytes {small} at S=64, {large} at S=128"


def test_backward_errors(built):
    layer, sd, x, dy = built
    _, tape = layer.forward_train(x)
    with pytest.raises(dsv4.Error, match="dy"):
        layer.backward(tape, dy[:, :-1])
    with pytest.raises(dsv4.Error, match="dy"):
        layer.backward(x, dy[0])
    other = dsv4.Layer(layer.config, layer.layer_type, sd)
    with pytest.raises(dsv4.Error, match="another layer"):
        other.backward(tape, dy)
    with pytest.raises(dsv4.Error, match="floating-point"):
        layer.backward(x, dy.astype(np.int32))
    dep = dsv4.Layer(layer.config, layer.layer_type, sd, numerics="deployment")
    with pytest.raises(dsv4.Error, match="numerics"):
        dep.forward_train(x)
    with pytest.raises(dsv4.Error, match="numerics"):
        dep.backward(x, dy)


# ---------------------------------------------------------------------------------------------
# dsv4.torch.Attention: loss.backward() fills .grad as torch autograd of the reference does.

def test_attention_autograd_matches_the_reference(layer_type):
    ref, sd, cfg = random_weights(layer_type, seed=31)
    attn = dsv4.torch.Attention(cfg, layer_type, ref.state_dict())
    rng = np.random.default_rng(7)
    x_np = rng.standard_normal((2, 41, cfg.hidden_size)).astype(np.float32)
    dy_np = rng.standard_normal(x_np.shape).astype(np.float32)
    truth = Truth(cfg, layer_type, sd, x_np, dy_np)
    assert same_selection(attn.layer, x_np, truth), "seeded input with a top-k near-tie: pick another seed"
    x = torch.from_numpy(x_np).requires_grad_()
    y = attn(x)
    assert y.requires_grad and y.dtype == torch.float32
    (y * torch.from_numpy(dy_np)).sum().backward()
    grads = {n: p.grad for n, p in attn.named_parameters()}
    assert list(grads) == list(ref.state_dict())
    assert all(g is not None and g.dtype == torch.float32 for g in grads.values())
    check_gradients(x.grad.numpy(), {n: g.numpy() for n, g in grads.items()}, truth, f"{layer_type} Attention")
    for n, g in grads.items():
        if n.startswith(INDEXER):
            assert not g.any()


def test_attention_autograd_kinds_and_partial_requests():
    ref, sd, cfg = random_weights("csa", seed=32)
    attn = dsv4.torch.Attention(cfg, "csa", ref.state_dict())
    x = torch.randn(17, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    dy = torch.randn(17, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    want = attn.layer.backward(x, dy)

    (attn(x) * dy).sum().backward()  # x does not require grad: the parameters only
    assert x.grad is None
    for n, p in attn.named_parameters():
        assert torch.equal(p.grad, want.weights[n]), n

    attn.zero_grad(set_to_none=True)
    for p in attn.parameters():
        p.requires_grad_(False)
    xb = x.bfloat16().requires_grad_()
    y = attn(xb)  # bf16 out: the gradient reaching the layer is dy rounded to bf16
    (y * dy).sum().backward(retain_graph=True)
    assert xb.grad.dtype == torch.bfloat16 and xb.grad.shape == xb.shape and y.dtype == torch.bfloat16
    assert torch.equal(xb.grad, attn.layer.backward(xb, dy.bfloat16()).dx.bfloat16())
    assert all(p.grad is None for p in attn.parameters())
    first = xb.grad.clone()
    (y * dy).sum().backward()  # the tape serves a second backward of a retained graph
    assert torch.equal(xb.grad, 2 * first)


def test_attention_optimizer_step_rebuilds_the_layer():
    """An SGD step with the module's gradients lowers the loss by lr * |grad|^2 to first order
    (a directional-derivative check independent of torch), and the rebuilt layer is the stepped one."""
    ref, _, cfg = random_weights("hca", seed=33)
    attn = dsv4.torch.Attention(cfg, "hca", ref.state_dict())
    x = torch.randn(1, 40, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    lr = 1e-6  # here lr * |grad|^2 is about 13 on a loss of 1750: the second order is 0.4% of it
    opt = torch.optim.SGD(attn.parameters(), lr=lr)
    loss0 = attn(x).pow(2).sum()
    loss0.backward()
    predicted = lr * sum(float(p.grad.double().pow(2).sum()) for p in attn.parameters())
    opt.step()
    with torch.no_grad():
        loss1 = attn(x).pow(2).sum()
        assert 0.99 < float(loss0 - loss1) / predicted < 1.01, (float(loss0 - loss1), predicted)
        ref.load_state_dict({n: p for n, p in attn.named_parameters()})
        assert torch.equal(attn(x), attn.layer(x))
        np.testing.assert_allclose(attn(x).numpy(), ref(x, torch.arange(40)).numpy(), rtol=1e-5, atol=1e-5)


def test_attention_refuses_backward_it_cannot_give():
    ref, sd, cfg = random_weights("csa", seed=34)
    attn = dsv4.torch.Attention(cfg, "csa", ref.state_dict())
    x = torch.randn(9, cfg.hidden_size, requires_grad=True)
    state = attn.new_state()
    y = attn(x, state=state)  # decoding in grad mode still works ...
    assert state.position == 9 and y.requires_grad
    with pytest.raises(dsv4.Error, match="decode state"):
        y.sum().backward()  # ... but has no gradient
    with torch.no_grad():
        assert not attn(x, state=attn.new_state()).requires_grad
    dep = dsv4.torch.Attention(cfg, "csa", ref.state_dict(), numerics="deployment")
    y = dep(x)
    with pytest.raises(dsv4.Error, match="deployment"):
        y.sum().backward()
