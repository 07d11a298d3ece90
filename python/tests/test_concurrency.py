"""Concurrent callers from Python threads (the GIL is released while computing): one
layer used by several threads at once gives, bit for bit, what serial calls give;
states move between threads. The C++ side runs under ThreadSanitizer in CI."""
import threading

import numpy as np
import pytest

import dsv4
from conftest import random_weights


def work(layer, x):
    """Everything one caller does with the layer, in a fixed order."""
    out = [layer(x)]
    y, dbg = layer(x, return_intermediates=True)
    out += [y] + [dbg[k] for k in sorted(dbg)]
    s, t = layer.new_state(), layer.new_state()
    out.append(layer(x[:20], state=s))
    out += [layer(x[p:p + 1], state=s) for p in range(20, 26)]
    out += layer.forward_batch([x[:9], x[26:37]], [s, t])
    out += list(layer.attention_map(x).values())
    if layer.numerics == "reference":
        dx, dw = layer.backward(x, np.ones_like(x))
        out += [dx, dw["q_b_proj.weight"]]
    return out


@pytest.mark.parametrize("numerics", ["reference", "deployment"])
def test_one_layer_from_many_threads_equals_serial(layer_type, numerics):
    _, sd, cfg = random_weights(layer_type, seed=5)
    layer = dsv4.Layer(cfg, layer_type, sd, numerics=numerics)
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((37, cfg.hidden_size)).astype(np.float32) for _ in range(4)]
    serial = [work(layer, x) for x in xs]
    results, errors = [None] * 4, []

    def run(i):
        try:
            results[i] = work(layer, xs[i])
        except Exception as e:  # reported below: an exception in a thread would not fail the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        assert len(results[i]) == len(serial[i])
        for k, (a, b) in enumerate(zip(results[i], serial[i])):
            assert np.array_equal(a, b), f"thread {i}, result {k}"


def test_states_move_between_threads():
    _, sd, cfg = random_weights("csa", seed=7)
    layer = dsv4.Layer(cfg, "csa", sd)
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((12, cfg.hidden_size)).astype(np.float32) for _ in range(3)]
    serial = []
    for x in xs:
        s = layer.new_state()
        serial.append([layer(x[p:p + 1], state=s) for p in range(12)])
    states, moved = [layer.new_state() for _ in xs], [[] for _ in xs]
    for p in range(12):  # each token of each sequence on a new thread
        threads = [threading.Thread(target=lambda i=i: moved[i].append(layer(xs[i][p:p + 1], state=states[i])))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(moved[i], serial[i])), f"sequence {i}"
