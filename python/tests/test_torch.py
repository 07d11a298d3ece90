"""dsv4.torch.Attention against the project's PyTorch reference layer."""
import numpy as np
import pytest
import torch

import dsv4
import dsv4.torch
from conftest import assert_close, random_weights


@pytest.fixture
def pair(layer_type):
    ref, _, cfg = random_weights(layer_type, seed=4)
    return ref, dsv4.torch.Attention(cfg, layer_type, ref.state_dict()), cfg


def test_parameters_named_as_the_reference(pair):
    ref, mod, _ = pair
    ours = dict(mod.named_parameters())
    assert list(ours) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert ours[k].dtype == torch.float32 and torch.equal(ours[k].detach(), v)


def test_forward_matches_reference_one_shot_and_chunked(pair):
    ref, mod, cfg = pair
    x = torch.randn(2, 45, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(x, torch.arange(45))
        got = mod(x)
        assert_close(got.numpy(), want.numpy(), "one-shot")
        state = mod.new_state()
        parts = [mod(x[1, a:b], state=state) for a, b in [(0, 20), (20, 21), (21, 45)]]
    assert_close(torch.cat(parts).numpy(), want[1].numpy(), "chunked")
    y = mod(x.bfloat16())  # grad mode: goes through the autograd Function
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_synthetic_state_decodes(pair):
    _, mod, cfg = pair
    st = mod.synthetic_state(500, seed=1)
    assert st.position == 500
    with torch.no_grad():
        y = mod(torch.ones(1, cfg.hidden_size), state=st)
    assert isinstance(y, torch.Tensor) and y.shape == (1, cfg.hidden_size) and torch.isfinite(y).all()
    assert st.position == 501


def test_parameter_updates_rebuild_the_layer(pair):
    ref, mod, cfg = pair
    x = torch.randn(9, cfg.hidden_size)
    with torch.no_grad():
        before = mod(x)
        mod.sinks.add_(1.0)
        ref.sinks.add_(1.0)
        after = mod(x)
        assert not torch.equal(before, after)
        assert_close(after.numpy(), ref(x[None], torch.arange(9))[0].numpy(), "after update")
        mod.load_state_dict(ref.state_dict())
        assert torch.equal(mod(x), after)


def test_module_errors(pair):
    ref, _, cfg = pair
    sd = ref.state_dict()
    full = {"model.layers.3.self_attn." + k: v for k, v in sd.items() if k != "sinks"}
    with pytest.raises(dsv4.Error, match="sinks"):  # full checkpoint names are checked as the module's are
        dsv4.torch.Attention(cfg, ref.layer_type, full)
    other = "csa" if "compressor.kv_proj.weight" not in sd else "swa"
    with pytest.raises(dsv4.Error, match="missing" if other == "csa" else "unexpected"):
        dsv4.torch.Attention(cfg, other, sd)
