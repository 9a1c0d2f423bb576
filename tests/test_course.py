"""The exercises of notebook 8 in both directions.

The reference solutions pass every check; a stub fails it; and each check names the
right gate, step or layer when one is deliberately broken (a flipped sign, an index off
by one, a missing residual path, ...). The notebook itself runs here twice: in student
mode (its stubs: every check reports "not yet") and with the solutions swapped in
(``RNNCORE_COURSE_SOLUTIONS=1``: every check passes, or the notebook raises).
"""

import sys
from pathlib import Path

# ipykernel and nbclient run notebook 8 below; the test extra installs them, so missing
# they fail these tests rather than skip them
import ipykernel  # noqa: F401
import nbclient  # noqa: F401
import numpy as np
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))

from course import grading, solutions  # noqa: E402

CHECKS = {
    "lstm_step_backward": grading.check_lstm_step_backward,
    "gru_step_backward": grading.check_gru_step_backward,
    "lstm_layer_backward": grading.check_lstm_layer_backward,
    "stack_backward": grading.check_stack_backward,
}


@pytest.fixture(autouse=True)
def student_mode(monkeypatch):
    monkeypatch.delenv(grading.SOLUTIONS_ENV, raising=False)


@pytest.mark.parametrize("name", CHECKS)
def test_the_solution_passes(name):
    verdict = CHECKS[name](getattr(solutions, name), show=False)
    assert verdict.passed, str(verdict)
    assert verdict.report.max_error < grading.TOLERANCE


@pytest.mark.parametrize("name", CHECKS)
def test_a_stub_fails_and_says_so(name):
    def stub(*args):
        raise NotImplementedError

    verdict = CHECKS[name](stub, show=False)
    assert not verdict.passed and verdict.first_wrong == "not written"
    assert "Not written yet" in str(verdict)


@pytest.mark.parametrize("name", CHECKS)
def test_an_error_in_the_learners_code_is_reported_not_raised(name):
    def crashes(*args):
        return np.zeros(2) @ np.zeros(3)

    verdict = CHECKS[name](crashes, show=False)
    assert not verdict.passed and "ValueError" in verdict.message


def test_a_failing_check_raises_in_solutions_mode(monkeypatch):
    monkeypatch.setenv(grading.SOLUTIONS_ENV, "1")

    def stub(*args):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="reference solution failed"):
        grading.check_lstm_step_backward(stub, show=False)


def test_exercise_swaps_in_the_solution_only_in_solutions_mode(monkeypatch):
    def lstm_step_backward(dh, dc, cache):
        raise NotImplementedError

    assert grading.exercise(lstm_step_backward) is lstm_step_backward
    monkeypatch.setenv(grading.SOLUTIONS_ENV, "1")
    assert grading.exercise(lstm_step_backward) is solutions.lstm_step_backward


# --------------------------------------------------------- exercise 1: which gate is wrong
def _lstm_with(gate_factor=None, skip_h_path=False, dc_prev_wrong=False):
    def step(dh, dc, cache):
        gates, c_prev, tanh_c = cache
        H = tanh_c.shape[-1]
        if not skip_h_path:
            dz, dc_prev = solutions.lstm_step_backward(dh, dc, cache)
        else:
            i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
            dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                 dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=1)
            dc_prev = dc * f
        if gate_factor:
            k, factor = gate_factor
            dz = dz.copy()
            dz[:, k * H:(k + 1) * H] *= factor
        return dz, (dc_prev + 1.0 if dc_prev_wrong else dc_prev)
    return step


@pytest.mark.parametrize("k, gate", list(enumerate("ifgo")))
def test_lstm_check_names_the_gate_whose_sign_is_flipped(k, gate):
    verdict = grading.check_lstm_step_backward(_lstm_with((k, -1.0)), show=False)
    assert not verdict.passed and verdict.first_wrong == gate
    assert grading.LSTM_GATE_NAMES[gate] in verdict.message
    wrong = [part for part, err, _ in verdict.rows if err >= grading.TOLERANCE]
    assert wrong == [f"∂z_{gate} ({grading.LSTM_GATE_NAMES[gate]})"]


def test_lstm_check_spots_the_missing_path_through_h():
    verdict = grading.check_lstm_step_backward(_lstm_with(skip_h_path=True), show=False)
    assert not verdict.passed and verdict.first_wrong == "i"
    assert "path through h_t" in verdict.message


def test_lstm_check_spots_a_wrong_dc_prev():
    verdict = grading.check_lstm_step_backward(_lstm_with(dc_prev_wrong=True), show=False)
    assert not verdict.passed and verdict.first_wrong == "c_prev"


# ---------------------------------------------------------- exercise 2: which block is wrong
@pytest.mark.parametrize("k, gate", list(enumerate("run")))
def test_gru_check_names_the_gate_whose_sign_is_flipped(k, gate):
    def step(dh, h_prev, cache, W_hh):
        da_x, da_h, dh_prev = solutions.gru_step_backward(dh, h_prev, cache, W_hh)
        H = dh.shape[-1]
        da_x = da_x.copy()
        da_x[:, k * H:(k + 1) * H] *= -1
        return da_x, da_h, dh_prev

    verdict = grading.check_gru_step_backward(step, show=False)
    assert not verdict.passed and verdict.first_wrong == gate
    assert grading.GRU_GATE_NAMES[gate] in verdict.message


def test_gru_check_spots_a_missing_reset_factor_in_the_recurrent_n_block():
    def step(dh, h_prev, cache, W_hh):
        da_x, da_h, _ = solutions.gru_step_backward(dh, h_prev, cache, W_hh)
        da_h = np.concatenate([da_h[:, :-dh.shape[-1]], da_x[:, -dh.shape[-1]:]], axis=1)
        return da_x, da_h, dh * cache[1] + da_h @ W_hh

    verdict = grading.check_gru_step_backward(step, show=False)
    assert not verdict.passed and verdict.first_wrong == "n"
    assert "block of ∂a^h" in verdict.message


def test_gru_check_spots_a_missing_direct_path():
    def step(dh, h_prev, cache, W_hh):
        da_x, da_h, _ = solutions.gru_step_backward(dh, h_prev, cache, W_hh)
        return da_x, da_h, da_h @ W_hh

    verdict = grading.check_gru_step_backward(step, show=False)
    assert not verdict.passed and verdict.first_wrong == "h_prev"
    assert "direct path" in verdict.message


# ------------------------------------------------------------ exercise 3: which step is wrong
def test_bptt_check_names_the_step_after_an_off_by_one():
    """dout[t − 1] added at step t instead of dout[t]: the last step is already wrong."""
    def layer(dout, dstate_n, W_hh, caches, step_backward):
        shifted = np.concatenate([np.zeros_like(dout[:1]), dout[:-1]])
        return solutions.lstm_layer_backward(shifted, dstate_n, W_hh, caches, step_backward)

    verdict = grading.check_lstm_layer_backward(layer, show=False)
    assert not verdict.passed and verdict.first_wrong == "t=4"
    assert "step t=4 is the first wrong one" in verdict.message


@pytest.mark.parametrize("bad", [3, 1])
def test_bptt_check_names_the_first_wrong_step_walking_back(bad):
    """The gradient sent from step bad + 1 back to step bad is dropped."""
    def layer(dout, dstate_n, W_hh, caches, step_backward):
        dh, dc = dstate_n
        dW = np.zeros_like(W_hh)
        dz_all = np.empty(dout.shape[:2] + (W_hh.shape[0],))
        for t in reversed(range(len(dout))):
            step_cache, h_prev = caches[t]
            if t == bad:
                dh = np.zeros_like(dh)
            dh = dh + dout[t]
            dz, dc = step_backward(dh, dc, step_cache)
            dW += dz.T @ h_prev
            dh = dz @ W_hh
            dz_all[t] = dz
        return dz_all, dW, (dh, dc)

    verdict = grading.check_lstm_layer_backward(layer, show=False)
    assert not verdict.passed and verdict.first_wrong == f"t={bad}"
    assert f"steps 4..{bad + 1} are right" in verdict.message


def test_bptt_check_spots_a_wrong_weight_gradient():
    def layer(dout, dstate_n, W_hh, caches, step_backward):
        dz, dW, state = solutions.lstm_layer_backward(dout, dstate_n, W_hh, caches,
                                                      step_backward)
        return dz, dz[0].T @ caches[0][1] * len(dz), state

    verdict = grading.check_lstm_layer_backward(layer, show=False)
    assert not verdict.passed and verdict.first_wrong == "∂W_hh"


# ----------------------------------------------------------- exercise 4: which layer is wrong
def test_depth_check_names_the_layer_when_the_residual_path_is_missing():
    def stack(dout, dstates_n, layers, residual):
        return solutions.stack_backward(dout, dstates_n, layers, False)

    verdict = grading.check_stack_backward(stack, show=False)
    assert not verdict.passed and verdict.first_wrong == "layer 1"
    assert "identity path" in verdict.message and "(residual stack)" in verdict.message


def test_depth_check_catches_a_residual_added_to_a_plain_stack():
    def stack(dout, dstates_n, layers, residual):
        return solutions.stack_backward(dout, dstates_n, layers, True)

    verdict = grading.check_stack_backward(stack, show=False)
    assert not verdict.passed and verdict.first_wrong == "layer 1"
    assert "(plain stack)" in verdict.message


def test_depth_check_catches_a_layer_run_twice():
    def stack(dout, dstates_n, layers, residual):
        layers[-1].backward(dout, dstates_n[-1])
        return solutions.stack_backward(dout, dstates_n, layers, residual)

    verdict = grading.check_stack_backward(stack, show=False)
    assert not verdict.passed and verdict.first_wrong == "layer 2"
    assert "called 2 times" in verdict.message


def test_depth_check_catches_final_states_given_to_the_wrong_layers():
    def stack(dout, dstates_n, layers, residual):
        return solutions.stack_backward(dout, dstates_n[::-1], layers, residual)

    verdict = grading.check_stack_backward(stack, show=False)
    assert not verdict.passed and verdict.first_wrong == "layer 1"


# ------------------------------------------------------------- the notebook, both directions
def _run_exercises(monkeypatch, solutions_on):
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    (source,) = build.sources(["08_"])
    if solutions_on:
        monkeypatch.setenv(grading.SOLUTIONS_ENV, "1")
    nb = build.execute(build.build(source), timeout=300)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")


@pytest.mark.slow
def test_the_exercise_notebook_passes_with_the_solutions(monkeypatch):
    text = _run_exercises(monkeypatch, True)
    for k in range(1, 5):
        assert f"Exercise {k} · " in text
    assert text.count("✓ passed") == 4 and "✗ not yet" not in text


@pytest.mark.slow
def test_the_exercise_notebook_stubs_fail_their_checks(monkeypatch):
    text = _run_exercises(monkeypatch, False)
    assert text.count("✗ not yet") == 4 and "✓ passed" not in text
    assert text.count("Not written yet") == 4
