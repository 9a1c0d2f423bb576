"""Finite-difference gradient checks (float64, relative error < 1e-6) over the matrix:
cell × layers 1–3 × uni/bi × residual none/layers/stack, each with dropout on (masks
frozen), lengths given and learned initial states."""

import numpy as np
import pytest

import rnncore
from rnncore.gradcheck import check_module_gradients, matrix_cases, run_case

CASES = list(matrix_cases())


def test_matrix_covers_every_combination():
    combos = {(c.cell, c.num_layers, c.bidirectional, c.residual) for c in CASES}
    cells = set(rnncore.cells.names()) | {"lstm+proj"}
    assert {c.cell for c in CASES} == cells
    assert len(combos) == len(cells) * 3 * 2 * 3
    assert {c.dropout_mode for c in CASES} == {"standard", "variational"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label())
def test_gradients_match_finite_differences(case):
    report = run_case(case)
    assert {"input", "h0"} <= set(report.errors)
    assert report.max_error < 1e-6, report.table()


@pytest.mark.parametrize("init_state", ["zeros", "normal"])
def test_given_initial_states_and_random_directions(init_state):
    """Explicit (h0, c0) gradients; large tensors take the random-direction path."""
    lstm = rnncore.LSTM(6, 9, num_layers=2, bidirectional=True, dropout=0.5, residual="stack",
                        init_state=init_state, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 6))
    hx = (rng.standard_normal((4, 2, 9)), rng.standard_normal((4, 2, 9)))
    report = check_module_gradients(lstm, x, hx, lengths=[5, 3], max_elements=40)
    assert "3 dirs" in report.methods.values() and "elementwise" in report.methods.values()
    assert {"h0 (given)", "c0 (given)"} <= set(report.errors)
    assert report.max_error < 1e-6, report.table()


def test_check_detects_a_wrong_gradient():
    """The check can fail: corrupt one gradient and it must notice."""
    gru = rnncore.GRU(3, 4, dtype="float64", seed=0)
    original = gru.backward

    def broken_backward(dout, dhx=None, recorder=None):
        result = original(dout, dhx, recorder)
        gru.grads["weight_hh_l0"][0, 0] += 1e-3
        return result

    gru.backward = broken_backward
    report = check_module_gradients(gru, np.random.default_rng(0).standard_normal((4, 2, 3)))
    assert report.worst() == "weight_hh_l0" and report.max_error > 1e-4


def test_gradcheck_refuses_float32():
    with pytest.raises(ValueError, match="float64"):
        check_module_gradients(rnncore.RNN(2, 2), np.zeros((2, 1, 2), np.float32))


def test_command_line_table(capsys):
    """``python -m rnncore.gradcheck`` prints the matrix as a table and passes."""
    from rnncore import gradcheck

    assert gradcheck.main(["--quick", "--cells", "gru_reset_before"]) == 0
    out = capsys.readouterr().out
    assert out.count("gru_reset_before L") == 12 and "PASS at 1e-6" in out
    with pytest.raises(SystemExit):
        gradcheck.main(["--cells", "lstm,transformer"])
