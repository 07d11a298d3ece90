#!/usr/bin/env python3
"""dsv4 from Python in a minute: a conformance file's layer, one-shot and decoding.

Run from the repository root after ./scripts/build.sh:  python3 examples/quickstart.py
"""
import numpy as np

import dsv4

FILE = "tests/data/conformance/small_csa_stateless_s37.safetensors"

tensors = dsv4.load_safetensors(FILE)                  # dict name -> NumPy array
config = dsv4.Config.from_json(dsv4.safetensors_metadata(FILE)["config"])   # or Config.preset("v4-flash")
state_dict = {k: v for k, v in tensors.items() if not k.startswith(("chunk", "rope."))}
layer = dsv4.Layer(config, "csa", state_dict)          # keys of DeepseekV4Attention.state_dict()

x = tensors["chunk0.hidden_states"]                    # [B, S, d]
y = layer(x)                                           # one-shot, positions 0..S-1
print(f"one-shot {y.shape}: max |dsv4 - reference| = {np.abs(y - tensors['chunk0.output']).max():.2e}")

state = layer.new_state()                              # decode: one state per sequence
prompt = layer(x[0, :30], state=state)                 # prefill a chunk ...
steps = [layer(x[0, t:t + 1], state=state) for t in range(30, 37)]   # ... then token by token
print(f"decoded to position {state.position}; state holds {state.nbytes} bytes")
assert np.allclose(np.concatenate([prompt, *steps]), y[0], atol=1e-5, rtol=1e-5)

y, debug = layer(x[0], return_intermediates=True)      # q, kv, compressed_kv, indexer_*, index_scores, topk
where = layer.attention_map(x[0])                      # softmax mass per head and query
print("top-k of the last query:", debug["topk"][-1],
      "| mass on window / entries / sink:", [round(float(where[k].mean()), 3) for k in ("window", "compressed", "sink")])
