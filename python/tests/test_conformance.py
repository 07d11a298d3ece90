"""Every shipped conformance file through the Python API, with NumPy and with torch."""
import numpy as np
import pytest
import torch

import dsv4
from conftest import assert_close, topk_sets

DEBUG_KEYS = {"q": "q", "kv": "kv", "compressed_kv": "compressed_kv", "indexer_q": "indexer_q",
              "indexer_kv": "indexer_kv", "index_scores": "index_scores"}


def check_chunk(case, c, b, y, dbg):
    ref = case.chunks[c]
    at = f"{case.name} chunk{c}[{b}]"
    assert_close(y, ref["output"][b], at + " output")
    for ours, theirs in DEBUG_KEYS.items():
        if theirs in ref:
            r = ref[theirs][b]
            if ours == "kv" or ours == "compressed_kv":
                r = r[0]  # the files keep a head axis of 1
            assert_close(dbg[ours], r, f"{at} {ours}")
    if "topk_indices" in ref:
        assert topk_sets(dbg["topk"]) == topk_sets(ref["topk_indices"][b]), f"{at} top-k sets differ"


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_conformance(case, kind):
    weights = case.weights if kind == "numpy" else {k: torch.from_numpy(v) for k, v in case.weights.items()}
    layer = dsv4.Layer(case.config, case.layer_type, weights)
    conv = (lambda a: a) if kind == "numpy" else torch.from_numpy
    batch = case.chunks[0]["hidden_states"].shape[0]
    if case.meta["mode"] == "stateless":
        x = conv(case.chunks[0]["hidden_states"])
        y, dbg = layer(x, return_intermediates=True)
        assert isinstance(y, np.ndarray if kind == "numpy" else torch.Tensor)
        assert y.dtype in (np.float32, torch.float32) and tuple(y.shape) == tuple(x.shape)
        y = np.asarray(y)
        for b in range(batch):
            check_chunk(case, 0, b, y[b], {k: v[b] for k, v in dbg.items()})
        return
    states = [layer.new_state() for _ in range(batch)]
    for c, chunk in enumerate(case.chunks):
        for b in range(batch):
            assert states[b].position == chunk["position_ids"][b][0]
            y, dbg = layer(conv(chunk["hidden_states"][b]), state=states[b], return_intermediates=True)
            check_chunk(case, c, b, np.asarray(y), dbg)
