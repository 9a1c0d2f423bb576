"""Path attribution: the parts of each layer's input gradient sum to it exactly."""

import numpy as np
import pytest

import rnncore
from rnncore import attribution


@pytest.mark.parametrize("cell,bidirectional,residual", [
    ("lstm", True, "layers"), ("lstm", False, None), ("gru", True, "layers"),
    ("rnn_tanh", False, "layers")])
def test_parts_sum_to_total(cell, bidirectional, residual):
    H = 4
    D = 2 if bidirectional else 1
    m = rnncore.Recurrent(cell, H * D, H, num_layers=3, bidirectional=bidirectional,
                          residual=residual, dtype="float64", seed=0, init_state="normal")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 3, H * D))
    dout = rng.standard_normal((7, 3, H * D))
    lengths = None
    paths = attribution.attribute(m, x, dout)
    # the total is the module's own ∂x at layer 0
    m2 = rnncore.Recurrent(cell, H * D, H, num_layers=3, bidirectional=bidirectional,
                           residual=residual, dtype="float64", seed=0, init_state="normal",
                           impl="reference")
    m2(x, lengths=lengths)
    dx = m2.backward(dout)[0]
    assert np.array_equal(paths[0]["total"], dx)
    two = cell == "lstm"
    for k, parts in paths.items():
        names = set(parts) - {"total"}
        dirs = ("fwd", "rev")[:D]
        want = {f"{d}/{s}" for d in dirs for s in ("h", "c")} if two else set(dirs)
        if residual:
            want.add("skip")
        assert names == want
        total = sum(parts[n] for n in sorted(names))
        err = np.linalg.norm(total - parts["total"]) / np.linalg.norm(parts["total"])
        assert err < 1e-12, (k, err)
    if residual:  # the skip part is the gradient at the layer above's input
        assert np.array_equal(paths[0]["skip"], paths[1]["total"])
        assert np.array_equal(paths[2]["skip"], dout)


def test_unsplit_directions_match_split():
    m = rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=2)
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 8))
    whole = attribution.attribute(m, x, dout, split_states=False)
    split = attribution.attribute(m, x, dout)
    for k in whole:
        for d in ("fwd", "rev"):
            assert np.allclose(whole[k][d], split[k][d + "/h"] + split[k][d + "/c"],
                               rtol=1e-12, atol=1e-15)
    s = attribution.shares(split)
    assert set(s[0]) == {"fwd/h", "fwd/c", "rev/h", "rev/c"}


def test_one_direction_and_driver_restored():
    m = rnncore.LSTM(3, 4, dtype="float64", seed=0)
    before = m.driver
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    paths = attribution.attribute(m, x, dout)
    assert m.driver is before
    total = paths[0]["fwd/h"] + paths[0]["fwd/c"]
    assert np.allclose(total, paths[0]["total"], rtol=1e-12, atol=1e-15)
