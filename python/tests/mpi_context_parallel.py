"""dsv4.context_parallel_forward on an mpi4py communicator (docs/distributed.md). Run on every rank:
    mpirun -np N python3 -m pytest python/tests/mpi_context_parallel.py
(ctest: python_context_parallel_np2/np3). Not collected by the plain pytest run (the name does not
start with test_). Every test makes all its collective calls before asserting, so that the ranks
stay in step when one of them fails."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

import dsv4
from conftest import assert_close, random_weights

COMM = MPI.COMM_WORLD
RANK, RANKS = COMM.rank, COMM.size
W = 16  # small_config's sliding window; CSA rate 4, HCA rate 32


@pytest.fixture(scope="module", params=["swa", "csa", "hca"])
def built(request):
    _, sd, cfg = random_weights(request.param, seed=11)
    x = np.random.default_rng(12).standard_normal((110, cfg.hidden_size)).astype(np.float32)
    return dsv4.Layer(cfg, request.param, sd), x


def mine(x, seq, layout):
    return np.concatenate([x[b:e] for b, e in dsv4.rank_blocks(seq, RANKS, RANK, layout)])


def chunked(layer, x, seq, layout, extra=0):
    """One process feeding every rank's blocks in position order through a state (what the ranks
    reproduce bit for bit), then `extra` decode steps: (outputs [seq + extra, d] by position, state)."""
    blocks = sorted(b for r in range(RANKS) for b in dsv4.rank_blocks(seq, RANKS, r, layout))
    state = layer.new_state()
    ys = [layer(x[b:e], state=state) for b, e in blocks if e > b]
    ys += [layer(x[p:p + 1], state=state) for p in range(seq, seq + extra)]
    return np.concatenate(ys), state


def test_rank_blocks_partition_the_sequence():
    for layout, per_rank in (("zigzag", 2), ("contiguous", 1)):
        for seq in (0, 5, 97):
            got = [dsv4.rank_blocks(seq, RANKS, r, layout) for r in range(RANKS)]
            assert all(len(g) == per_rank for g in got)
            blocks = sorted(b for g in got for b in g)
            assert blocks[0][0] == 0 and blocks[-1][1] == seq
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    with pytest.raises(dsv4.Error, match="rank 3 of 3 ranks"):
        dsv4.rank_blocks(10, 3, 3, "zigzag")
    with pytest.raises(dsv4.Error, match="expected contiguous or zigzag"):
        dsv4.rank_blocks(10, 3, 0, "ring")


# 110 tokens: blocks longer than the window on 2 and 3 ranks; 20: blocks of 3-10 tokens, shorter than
# the window (the halo comes from several ranks), CSA windows cut by most boundaries, HCA's never complete.
@pytest.mark.parametrize("seq", [110, 20])
@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_outputs_equal_the_single_process(built, layout, seq):
    layer, x = built
    xm = mine(x, seq, layout)
    y = dsv4.context_parallel_forward(layer, xm, seq, COMM, layout=layout)
    yt = dsv4.context_parallel_forward(layer, torch.from_numpy(xm), seq, COMM, layout=layout)
    want = mine(chunked(layer, x, seq, layout)[0], seq, layout)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == xm.shape
    assert np.array_equal(y, want), "not bit for bit the chunked single process"
    assert isinstance(yt, torch.Tensor) and torch.equal(yt, torch.from_numpy(y))
    assert_close(y, mine(layer(x[:seq]), seq, layout), "vs one-shot layer(x)")


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_gathered_state_decodes_as_the_single_process(built, layout, tmp_path):
    """The state gathered on root (the last rank here) has the single process's bytes, and decoding
    continues there with the same outputs."""
    layer, x = built
    seq, root, steps = 90, RANKS - 1, 4
    state = layer.new_state() if RANK == root else None
    dsv4.context_parallel_forward(layer, mine(x, seq, layout), seq, COMM, layout=layout, gather_state=True,
                                  root=root, state=state)
    if RANK != root:
        return
    want, _ = chunked(layer, x, seq, layout, extra=steps)
    assert state.position == seq
    state.save(tmp_path / "ours.state")
    chunked(layer, x, seq, layout)[1].save(tmp_path / "single.state")
    assert (tmp_path / "ours.state").read_bytes() == (tmp_path / "single.state").read_bytes()
    got = np.concatenate([layer(x[p:p + 1], state=state) for p in range(seq, seq + steps)])
    assert np.array_equal(got, want[seq:])
    assert_close(got, layer(x[:seq + steps])[seq:], "decode vs one-shot")


def test_deployment_numerics_csa():
    _, sd, cfg = random_weights("csa", seed=13)
    layer = dsv4.Layer(cfg, "csa", sd, numerics="deployment")
    x = np.random.default_rng(14).standard_normal((75, cfg.hidden_size)).astype(np.float32)
    y = dsv4.context_parallel_forward(layer, mine(x, 75, "zigzag"), 75, COMM)
    assert np.array_equal(y, mine(chunked(layer, x, 75, "zigzag")[0], 75, "zigzag"))


def test_stats_add_up(built):
    layer, x = built
    _, st = dsv4.context_parallel_forward(layer, mine(x, 100, "zigzag"), 100, COMM, stats=True)
    sent, received = COMM.allreduce(st["bytes_sent"]), COMM.allreduce(st["bytes_received"])
    assert set(st) == {"prepare_s", "exchange_s", "forward_s", "bytes_sent", "bytes_received"}
    assert all(st[k] >= 0 for k in ("prepare_s", "exchange_s", "forward_s")) and st["forward_s"] > 0
    assert sent == received and (sent > 0) == (RANKS > 1)


def every_rank_raises(call, culprit_says, culprit=RANKS - 1):
    """call() raises dsv4.Error on every rank: the culprit naming the problem, the others saying
    another rank refused. The communicator stays usable."""
    with pytest.raises(dsv4.Error) as e:
        call()
    assert (culprit_says if RANK == culprit else "another rank refused its input") in str(e.value)
    assert COMM.allreduce(1) == RANKS


@pytest.fixture(scope="module")
def csa():
    _, sd, cfg = random_weights("csa", seed=15)
    x = np.random.default_rng(16).standard_normal((40, cfg.hidden_size)).astype(np.float32)
    return dsv4.Layer(cfg, "csa", sd), x


def test_wrong_shape_on_one_rank(csa):
    layer, x = csa
    xm = mine(x, 40, "zigzag")
    bad = xm[:-1] if RANK == RANKS - 1 else xm
    every_rank_raises(lambda: dsv4.context_parallel_forward(layer, bad, 40, COMM), "x must be [")


def test_non_finite_on_one_rank(csa):
    layer, x = csa
    xm = mine(x, 40, "zigzag").copy()
    if RANK == RANKS - 1:
        xm[1, 2] = np.nan
    every_rank_raises(lambda: dsv4.context_parallel_forward(layer, xm, 40, COMM), "non-finite")


def test_refused_in_python_on_one_rank(csa):
    """An input the Python layer refuses (an integer array; another layer's state) still makes every
    rank raise instead of leaving the others in the collective."""
    layer, x = csa
    xm = mine(x, 40, "zigzag")
    bad = xm.astype(np.int32) if RANK == RANKS - 1 else xm
    every_rank_raises(lambda: dsv4.context_parallel_forward(layer, bad, 40, COMM), "not a floating-point dtype")
    other = dsv4.Layer(layer.config, "csa", random_weights("csa", seed=15)[1]).new_state()
    state = other if RANK == RANKS - 1 else None
    every_rank_raises(lambda: dsv4.context_parallel_forward(layer, xm, 40, COMM, state=state), "another dsv4.Layer")


def test_refused_on_every_rank(csa):
    layer, x = csa
    xm = mine(x, 40, "zigzag")
    every_rank_raises(lambda: dsv4.context_parallel_forward(layer, xm, 40, COMM, gather_state=True),
                      "needs a state on root", culprit=0)
    seq = 41 if RANK == RANKS - 1 else 40  # each rank's x is right for its own seq
    xs = mine(np.concatenate([x, x[:1]]), seq, "zigzag")
    cases = [
        (lambda: dsv4.context_parallel_forward(layer, xs, seq, COMM), "the ranks disagree on seq"),
        (lambda: dsv4.context_parallel_forward(layer, xm, 40, COMM, gather_state=True, root=RANKS,
                                               state=layer.new_state()), "is not a rank of"),
        (lambda: dsv4.context_parallel_forward(layer, xm, 40, "world"), "expected an mpi4py.MPI.Comm"),
        (lambda: dsv4.context_parallel_forward(layer, xm, 40, COMM, layout="ring"), "expected contiguous or zigzag"),
    ]
    for call, says in cases:
        with pytest.raises(dsv4.Error, match=says):
            call()
    assert COMM.allreduce(1) == RANKS
