#!/usr/bin/env python3
"""Context parallelism from Python (docs/distributed.md): one sequence's prefill through a CSA layer,
its tokens spread over the MPI ranks, the state gathered on rank 0, decoding continuing there.

Run from the repository root after ./scripts/build.sh (dsv4 built with MPI; python3-mpi4py):
    mpirun -np 2 python3 examples/context_parallel.py      # as root: add --allow-run-as-root
"""
import numpy as np
from mpi4py import MPI

import dsv4

FILE = "tests/data/conformance/medium_csa_stateless_s100.safetensors"

comm = MPI.COMM_WORLD
tensors = dsv4.load_safetensors(FILE)
config = dsv4.Config.from_json(dsv4.safetensors_metadata(FILE)["config"])
layer = dsv4.Layer(config, "csa", {k: v for k, v in tensors.items() if not k.startswith(("chunk", "rope."))})
x = tensors["chunk0.hidden_states"][0]                  # [S, d]: every rank reads it here; a real
S = x.shape[0] - 4                                      # program loads only its own blocks

blocks = dsv4.rank_blocks(S, comm.size, comm.rank, "zigzag")        # [(begin, end), ...] of this rank
x_mine = np.concatenate([x[b:e] for b, e in blocks])
state = layer.new_state() if comm.rank == 0 else None
y_mine, stats = dsv4.context_parallel_forward(layer, x_mine, S, comm, gather_state=True, root=0, state=state,
                                              stats=True)
print(f"rank {comm.rank}: tokens {blocks}, forward {stats['forward_s']:.3f} s, "
      f"sent {stats['bytes_sent']} B, received {stats['bytes_received']} B", flush=True)

y = comm.gather(y_mine, root=0)                         # the outputs of every rank, to check here
if comm.rank == 0:
    order = [b for r in range(comm.size) for b in dsv4.rank_blocks(S, comm.size, r, "zigzag")]
    y_all = np.empty((S, config.hidden_size), np.float32)
    y_all[np.concatenate([np.arange(b, e) for b, e in order])] = np.concatenate(y)
    steps = [layer(x[p:p + 1], state=state) for p in range(S, x.shape[0])]   # decode on root
    err = np.abs(np.concatenate([y_all, *steps]) - tensors["chunk0.output"][0]).max()
    print(f"{comm.size} ranks: {S} tokens, then decoded to position {state.position}; "
          f"max |dsv4 - reference| = {err:.2e}")
    assert err <= 1e-5
