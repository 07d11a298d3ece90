"""Context parallelism on MPI (docs/distributed.md): one sequence's prefill through one layer, its
tokens spread over the ranks of an mpi4py communicator. A thin layer over the C++
context_parallel_forward; mpi4py is imported on first use only.
"""
import numpy as np

from . import _core
from ._arrays import as_f32, like
from ._core import Error

_NO_MPI = ("dsv4 was built without MPI, so context parallelism is unavailable: install Open MPI "
           "(apt-get install libopenmpi-dev openmpi-bin) and rebuild dsv4 (CMake finds it: DSV4_MPI)")


def _need_mpi():
    if not _core.build_info()["mpi"]:
        raise ImportError(_NO_MPI)


def _comm_address(comm):
    """The address of the MPI_Comm inside an mpi4py communicator (mpi4py's MPI._addressof)."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("dsv4.context_parallel_forward takes an mpi4py communicator: "
                          "apt-get install python3-mpi4py (or pip install mpi4py)") from e
    if not isinstance(comm, MPI.Comm):
        raise Error(f"comm: expected an mpi4py.MPI.Comm (e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    return MPI._addressof(comm)


def rank_blocks(seq, ranks, rank, layout="zigzag"):
    """The token blocks [(begin, end), ...] that rank `rank` of `ranks` holds of a `seq`-token sequence,
    in position order. layout "zigzag" (blocks rank and 2*ranks-1-rank of 2*ranks: balanced work) or
    "contiguous" (block rank of ranks). Its x for context_parallel_forward is
    np.concatenate([x_full[b:e] for b, e in rank_blocks(...)])."""
    _need_mpi()
    return _core.rank_blocks(int(seq), int(ranks), int(rank), str(layout))


def context_parallel_forward(layer, x, seq, comm, layout="zigzag", gather_state=False, root=0, state=None,
                             stats=False):
    """This rank's outputs of one `seq`-token sequence's prefill through `layer`, spread over the ranks of
    the mpi4py communicator `comm`. Collective: every rank calls it with the same layer (weights and
    options), seq, layout, gather_state and root.

    x: this rank's tokens [n, d] (NumPy or torch): its rank_blocks(seq, comm.size, comm.rank, layout)
       concatenated in position order. Returns their outputs [n, d], float32, in x's kind: bit for bit
       those of one process feeding the blocks in position order through a state (within 1e-5 of the
       one-shot layer(x_full)).
    gather_state: `state` (a dsv4.State of this layer, on rank `root`) becomes the state after all seq
       tokens, the bytes one process's would hold: decoding continues there with layer(x, state=state).
    stats: also return a dict of this rank's prepare_s, exchange_s, forward_s (seconds) and
       bytes_sent, bytes_received: (y, stats).
    A rank whose input is refused (shape, non-finite values) makes every rank raise dsv4.Error before
    any data moves; that rank's message names the problem. The GIL is released while computing."""
    _need_mpi()
    address = _comm_address(comm)
    call = (int(seq), address, str(layout), bool(gather_state), int(root))
    try:
        a, torch_in = as_f32(x, "input hidden_states")
        core_state = None if state is None else layer._state(state)
    except Exception:
        # Refused here, before the collective: enter it with an input the core refuses,
        # so that the other ranks raise too instead of waiting.
        try:
            _core.context_parallel_forward(layer._core, np.empty((0, 0), np.float32), *call, None)
        except Error:
            pass
        raise
    y, st = _core.context_parallel_forward(layer._core, a, *call, core_state)
    y = like(y, torch_in)
    return (y, st) if stats else y
