#!/usr/bin/env python3
"""Per-call cost of the Python package: a decode step (one token through a state) of the
small conformance CSA layer through dsv4.Layer (NumPy and torch in), and through the bare
extension call. Small dims make the compute tiny, so these times are mostly the per-call
overhead (conversion, checks, GIL release, the output array, OpenMP wake-up).

    PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py [--calls 20000]
"""
import argparse
import os
import time

import numpy as np

import dsv4

CASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "conformance",
                    "small_csa_stateless_s37.safetensors")


def per_call_us(f, calls):
    for _ in range(100):
        f()
    best = float("inf")
    for _ in range(5):  # best of 5 runs: the machine is shared
        t = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    dsv4.set_num_threads(a.threads)
    tensors = dsv4.load_safetensors(CASE)
    cfg = dsv4.Config.from_json(dsv4.safetensors_metadata(CASE)["config"])
    sd = {k: v for k, v in tensors.items() if not k.startswith(("chunk", "rope."))}
    layer = dsv4.Layer(cfg, "csa", sd)
    x = tensors["chunk0.hidden_states"][0, :1].copy()  # one token [1, d]
    state = layer.new_state()

    def step():
        layer(x, state=state)
        if state.position >= 64:
            state.reset()

    core, cstate = layer._core, layer.new_state()._core

    def bare():
        core.forward_state(x, cstate)
        if cstate.position >= 64:
            cstate.reset()

    rows = [("dsv4.Layer decode step, NumPy in", per_call_us(step, a.calls)),
            ("bare core call (binding only)", per_call_us(bare, a.calls))]
    try:
        import torch
        xt = torch.from_numpy(x)

        def step_t():
            layer(xt, state=state)
            if state.position >= 64:
                state.reset()
        rows.append(("dsv4.Layer decode step, torch in", per_call_us(step_t, a.calls)))
    except ImportError:
        pass
    print(f"small CSA layer (d={cfg.hidden_size}, H={cfg.num_attention_heads}), {a.threads} thread(s), "
          f"best of 5 x {a.calls} calls")
    for name, us in rows:
        print(f"  {name:36s} {us:8.1f} us/call")


if __name__ == "__main__":
    main()
