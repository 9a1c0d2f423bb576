"""A user's own cell, in one file (example_cell_mgu.py, shown whole in the README), is
gradient-checked by the same machinery as the built-in cells, and runs everywhere a
registered cell runs."""

from pathlib import Path

import example_cell_mgu  # noqa: F401  registers "mgu"
import numpy as np
import pytest

import rnncore
from rnncore import gradcheck

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = Path(__file__).with_name("example_cell_mgu.py")


def test_the_readme_shows_the_whole_example_file():
    assert EXAMPLE.read_text().strip() in README.read_text()


@pytest.mark.parametrize("case", list(gradcheck.matrix_cases(quick=True, cells=("mgu",))),
                         ids=lambda c: c.label())
def test_example_cell_passes_the_gradient_check_matrix(case):
    report = gradcheck.run_case(case)
    assert {"input", "h0", "weight_hh_l0"} <= set(report.errors)
    assert report.max_error < 1e-6, report.table()


def test_example_cell_is_the_equations():
    """h_t from the module equals the MGU equations evaluated directly."""
    m = rnncore.Recurrent("mgu", 3, 4, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, h_n = m(x)
    W, U = m.params["weight_ih_l0"], m.params["weight_hh_l0"]
    b, c = m.params["bias_ih_l0"], m.params["bias_hh_l0"]
    h = np.zeros((2, 4))
    for t in range(5):
        xa, ha = x[t] @ W.T + b, h @ U.T + c
        f = 1 / (1 + np.exp(-(xa[:, :4] + ha[:, :4])))
        n = np.tanh(xa[:, 4:] + f * ha[:, 4:])
        h = (1 - f) * h + f * n
        np.testing.assert_allclose(out[t], h, rtol=1e-12, atol=1e-13)


def test_a_broken_backward_is_caught():
    """The check can fail: a sign error in the example's backward is found."""
    cell = rnncore.cells.get("mgu")
    original = cell.backward_step

    def broken(ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        original(ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev)
        grads["dxg"][:, 0] *= -1

    cell.backward_step = broken
    try:
        report = gradcheck.run_case(gradcheck.MatrixCase("mgu", 1, False, None))
    finally:
        del cell.backward_step
    assert report.max_error > 1e-3


def test_a_cell_without_kernels_refuses_fused_and_auto_uses_the_reference():
    with pytest.raises(ValueError, match="no fused kernels"):
        rnncore.Recurrent("mgu", 3, 4, impl="fused")
    assert rnncore.Recurrent("mgu", 3, 4).impl_in_use == "reference"
