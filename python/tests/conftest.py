"""Shared fixtures: the shipped conformance files, the project's PyTorch layer, tolerances."""
import glob
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFORMANCE = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "conformance", "*.safetensors")))
assert CONFORMANCE, "no conformance files under tests/data/conformance"

import dsv4  # noqa: E402  (PYTHONPATH=build/python, set by ctest)


def assert_close(ours, ref, what, atol=1e-5, rtol=1e-5):
    """|ours - ref| <= atol + rtol |ref| elementwise, as the conformance README asks."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape}, reference {ref.shape}"
    err = np.abs(ours - ref)
    bad = ~(err <= atol + rtol * np.abs(ref))
    assert not bad.any(), f"{what}: {bad.sum()} values out of tolerance, max err {err.max():.3g}"


def topk_sets(topk):
    """Per query, the set of selected entries (the order is not part of the contract)."""
    topk = np.asarray(topk)
    rows = topk.reshape(int(np.prod(topk.shape[:-1])), topk.shape[-1])
    return [set(int(i) for i in row if i >= 0) for row in rows]


class Case:
    """A conformance file: config, layer type, weights (the state_dict keys) and chunks."""

    def __init__(self, path):
        self.path, self.name = path, os.path.basename(path)
        self.tensors = dsv4.load_safetensors(path)
        self.meta = dsv4.safetensors_metadata(path)
        cfg = json.loads(self.meta["config"])
        self.layer_type = cfg["layer_type"]
        self.config = dsv4.Config.from_json(self.meta["config"])
        self.weights = {k: v for k, v in self.tensors.items() if not k.startswith(("chunk", "rope."))}
        self.chunks = []
        while f"chunk{len(self.chunks)}.hidden_states" in self.tensors:
            c = f"chunk{len(self.chunks)}."
            self.chunks.append({k[len(c):]: v for k, v in self.tensors.items() if k.startswith(c)})


@pytest.fixture(params=CONFORMANCE, ids=[os.path.basename(p)[:-12] for p in CONFORMANCE])
def case(request):
    return Case(request.param)


def torch_baseline():
    """bench/torch_baseline.py: the project's PyTorch layer (reference state_dict keys)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import torch_baseline
    return torch_baseline


def small_config(**over):
    """The conformance 'medium' dims: small enough for many cases, big enough to split work."""
    fields = dict(hidden_size=256, num_attention_heads=8, head_dim=64, qk_rope_head_dim=16, q_lora_rank=64,
                  o_groups=4, o_lora_rank=32, sliding_window=16, compress_rate_csa=4, compress_rate_hca=32,
                  index_n_heads=8, index_head_dim=32, index_topk=8,
                  rope_scaling=dict(type="yarn", factor=16.0, original_max_position_embeddings=256,
                                    beta_fast=32.0, beta_slow=1.0))
    fields.update(over)
    return dsv4.Config(**fields)


def random_weights(layer_type, seed=0, config=None):
    """A reference-module state_dict with seeded weights, as NumPy arrays, and its dsv4 config."""
    tb = torch_baseline()
    config = config or small_config()
    cfg = dict(config.to_dict(), layer_type=_long(layer_type))
    ref = tb.DeepseekV4Attention(cfg)
    tb.init_random(ref, seed)
    return ref, {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}, config


def _long(t):
    return {"swa": "sliding_attention", "csa": "compressed_sparse_attention",
            "hca": "heavily_compressed_attention"}.get(t, t)


@pytest.fixture(params=["swa", "csa", "hca"])
def layer_type(request):
    return request.param
