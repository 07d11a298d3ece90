"""The installed Python package as a user meets it (scripts/check_packaging.sh runs this from
outside the source tree): import dsv4 from the environment it was installed into, run the layer
of a conformance file and compare with its output. Usage: python run_layer.py FILE.safetensors"""
import json
import os
import sys

import numpy as np

import dsv4

path = sys.argv[1]
where = os.path.dirname(dsv4.__file__)
if not where.startswith(sys.prefix):
    sys.exit(f"dsv4 imported from {where}, not from this environment ({sys.prefix})")
tensors = dsv4.load_safetensors(path)
meta = dsv4.safetensors_metadata(path)
config = dsv4.Config.from_json(meta["config"])
weights = {k: v for k, v in tensors.items() if not k.startswith(("chunk", "rope."))}
layer = dsv4.Layer(config, json.loads(meta["config"])["layer_type"], weights)
y, ref = layer(tensors["chunk0.hidden_states"]), tensors["chunk0.output"]
bad = int((~(np.abs(y - ref) <= 1e-5 + 1e-5 * np.abs(ref))).sum())
print(f"dsv4 {dsv4.__version__} from {where}: {layer.layer_type}, max |ours - ref| = "
      f"{np.abs(y - ref).max():.3g}, {bad} out of tolerance")
sys.exit(1 if bad else 0)
