"""Every failure is a dsv4.Error (a ValueError) whose message names the thing."""
import numpy as np
import pytest
import torch

import dsv4
from conftest import random_weights


@pytest.fixture(scope="module")
def csa():
    _, sd, cfg = random_weights("csa", seed=1)
    return cfg, sd, dsv4.Layer(cfg, "csa", sd)


def test_error_is_a_value_error():
    assert issubclass(dsv4.Error, ValueError)


def test_missing_extra_and_wrong_shape_weights(csa):
    cfg, sd, _ = csa
    w = dict(sd)
    del w["compressor.indexer.scorer.weights_proj.weight"]
    with pytest.raises(dsv4.Error, match=r"compressor\.indexer\.scorer\.weights_proj\.weight': missing"):
        dsv4.Layer(cfg, "csa", w)
    with pytest.raises(dsv4.Error, match=r"'q_a_proj\.bias': unexpected"):
        dsv4.Layer(cfg, "csa", dict(sd, **{"q_a_proj.bias": np.zeros(4, np.float32)}))
    w = dict(sd, **{"kv_norm.weight": np.ones(3, np.float32)})
    with pytest.raises(dsv4.Error, match=r"'kv_norm\.weight': shape \[3\], expected \[64\]"):
        dsv4.Layer(cfg, "csa", w)
    with pytest.raises(dsv4.Error, match=r"weight 'sinks': dtype int64 is not a floating-point dtype"):
        dsv4.Layer(cfg, "csa", dict(sd, sinks=np.zeros(8, np.int64)))
    with pytest.raises(dsv4.Error, match=r"weight 'sinks' has 1 non-finite"):
        s = sd["sinks"].copy()
        s[2] = np.nan
        dsv4.Layer(cfg, "csa", dict(sd, sinks=s))
    with pytest.raises(dsv4.Error, match=r"unknown layer type|layer type"):
        dsv4.Layer(cfg, "mla", sd)
    with pytest.raises(dsv4.Error, match="weights format"):
        dsv4.Layer(cfg, "csa", sd, weights_format="fp4")


def test_full_checkpoint_names_of_both_schemes(csa):
    cfg, sd, layer = csa
    x = np.random.default_rng(0).standard_normal((9, cfg.hidden_size)).astype(np.float32)
    hf = {f"model.layers.7.self_attn.{k}": v for k, v in sd.items()}
    assert np.array_equal(dsv4.Layer(cfg, "csa", hf)(x), layer(x))
    original = {"layers.2.attn." + {"q_a_proj.weight": "wq_a.weight"}.get(k, k): v for k, v in sd.items()}
    with pytest.raises(dsv4.Error, match=r"'layers\.2\.attn\.q_b_proj\.weight': unexpected"):
        dsv4.Layer(cfg, "csa", original)  # half-renamed: wq_b is the original name
    both = dict(sd, **{"model.layers.0.self_attn.sinks": sd["sinks"]})
    with pytest.raises(dsv4.Error, match="duplicates 'sinks'"):
        dsv4.Layer(cfg, "csa", both)


def test_bad_inputs(csa):
    cfg, _, layer = csa
    d = cfg.hidden_size
    with pytest.raises(dsv4.Error, match=r"expected shape \[B, S, 256\] or \[S, 256\], got \[1, 2, 3, 256\]"):
        layer(np.zeros((1, 2, 3, d), np.float32))
    with pytest.raises(dsv4.Error, match=r"expected shape \[B, S, 256\] or \[S, 256\], got \[4, 7\]"):
        layer(np.zeros((4, 7), np.float32))
    with pytest.raises(dsv4.Error, match="dtype int32 is not a floating-point dtype"):
        layer(np.zeros((4, d), np.int32))
    with pytest.raises(dsv4.Error, match="torch.int64 is not a floating-point dtype"):
        layer(torch.zeros((4, d), dtype=torch.int64))
    x = np.zeros((5, d), np.float32)
    x[3, 7] = np.nan
    with pytest.raises(dsv4.Error, match=r"non-finite value\(s\), first at flat index 775"):
        layer(x)
    state = layer.new_state()
    with pytest.raises(dsv4.Error, match="non-finite"):
        layer(x, state=state)
    assert state.position == 0  # a rejected chunk moves nothing
    with pytest.raises(dsv4.Error, match=r"chunk 0: expected shape \[S, 256\]"):
        layer(np.zeros((2, 3, d), np.float32), state=state)


def test_state_of_another_layer(csa):
    cfg, sd, layer = csa
    x = np.zeros((3, cfg.hidden_size), np.float32)
    _, sd_h, _ = random_weights("hca", seed=1)
    hca = dsv4.Layer(cfg, "hca", sd_h)
    with pytest.raises(dsv4.Error, match="made by another dsv4.Layer"):
        layer(x, state=hca.new_state())
    twin = dsv4.Layer(cfg, "csa", sd)  # same type and dims, another layer
    with pytest.raises(dsv4.Error, match="made by another dsv4.Layer"):
        layer(x, state=twin.new_state())
    with pytest.raises(dsv4.Error, match=r"state 1: made by another"):
        layer.forward_batch([x, x], [layer.new_state(), twin.new_state()])
    with pytest.raises(dsv4.Error, match="expected a dsv4.State"):
        layer(x, state="nope")
    s = layer.new_state()
    with pytest.raises(dsv4.Error, match="the same state is given twice"):
        layer.forward_batch([x, x], [s, s])


def test_state_file_of_another_layer_type(csa, tmp_path):
    cfg, _, layer = csa
    _, sd_h, _ = random_weights("hca", seed=1)
    hca = dsv4.Layer(cfg, "hca", sd_h)
    hca.new_state().save(tmp_path / "h.state")
    with pytest.raises(dsv4.Error, match="h.state"):
        layer.load_state(tmp_path / "h.state")
    with pytest.raises(dsv4.Error, match="missing.state"):
        layer.load_state(tmp_path / "missing.state")


def test_config_errors(tmp_path):
    with pytest.raises(dsv4.Error, match="unknown field 'hidden'"):
        dsv4.Config(hidden=3)
    with pytest.raises(dsv4.Error, match="head_dim"):
        dsv4.Config(head_dim=63)
    with pytest.raises(dsv4.Error, match="v4-max"):
        dsv4.Config.preset("v4-max")
    with pytest.raises(dsv4.Error, match="config.json"):
        dsv4.Config.from_hf(tmp_path)
    with pytest.raises(dsv4.Error, match=str(tmp_path)):
        dsv4.Layer.from_model(tmp_path, 0)
    with pytest.raises(dsv4.Error, match="set_num_threads"):
        dsv4.set_num_threads(0)
    d = dsv4.Config.preset("v4-flash").to_dict()  # a likely typo: refused, naming the key it resembles
    d["rms_norm_epss"] = d.pop("rms_norm_eps")
    with pytest.raises(dsv4.Error, match="unknown key 'rms_norm_epss': did you mean 'rms_norm_eps'"):
        dsv4.Config.from_hf(d)
