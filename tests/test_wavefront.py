"""The layer wavefront (rnncore/wavefront.py) run by the NumPy reference: the wavefront
order gives the layer-by-layer order's bits, forward and backward, whatever the order
inside a wave, and equals stack_forward / stack_backward to rounding."""

import numpy as np
import pytest

from rnncore import cells
from rnncore.drivers import PythonLoop
from rnncore.stack import StackSpec, parameter_shapes, stack_backward, stack_forward
from rnncore.wavefront import StackRun, check_forward_schedule, layer_by_layer, wavefront


def test_the_waves_are_anti_diagonals():
    assert wavefront(3, 4) == [[(0, 0)], [(0, 1), (1, 0)], [(0, 2), (1, 1), (2, 0)],
                               [(0, 3), (1, 2), (2, 1)], [(1, 3), (2, 2)], [(2, 3)]]
    for L, T in [(1, 5), (3, 4), (4, 2), (5, 1)]:
        check_forward_schedule(wavefront(L, T), L, T)
        check_forward_schedule(layer_by_layer(L, T), L, T)
        assert len(wavefront(L, T)) == L + T - 1


@pytest.mark.parametrize("waves,match", [
    ([[(0, 0), (1, 0)], [(0, 1)], [(1, 1)]], "runs before"),  # (1,0) beside its input
    ([[(0, 0)], [(0, 1), (1, 0)], [(1, 1)], [(1, 1)]], "twice"),
    ([[(0, 0)], [(0, 1)]], "never run"),
])
def test_bad_schedules_are_refused(waves, match):
    with pytest.raises(ValueError, match=match):
        check_forward_schedule(waves, 2, 2)


def _setup(cell_name, L, residual, masked, dropout, seed, T=5, B=3, I=4, H=4):
    rng = np.random.default_rng(seed)
    cell = cells.get(cell_name)
    spec = StackSpec(cell, I, H, L, 1, residual=residual)
    params = {name: rng.standard_normal(shape) * 0.5
              for name, (shape, _) in parameter_shapes(spec).items()}
    x = rng.standard_normal((T, B, I))
    state0 = tuple(rng.standard_normal((L, B, w)) for w in spec.state_widths())
    valid = (np.arange(T)[:, None] < np.array([T, 2, 4])[None, :])[..., None] if masked \
        else None
    masks = [(rng.random((1 if dropout == "variational" else T, B, H)) > 0.3) * (1 / 0.7)
             for _ in range(L - 1)] + [None] if dropout else None
    dout = rng.standard_normal((T, B, H))
    dstate = tuple(rng.standard_normal(s.shape) for s in state0)
    return spec, params, x, state0, valid, masks, dout, dstate


def _run(setup, waves):
    spec, params, x, state0, valid, masks, dout, dstate = setup
    run = StackRun(spec, params, x, state0, valid, masks)
    out, state_n = run.forward(waves)
    run.start_backward(dout, dstate)
    dx, dstate0, grads = run.backward(waves)
    return [out, *state_n, dx, *dstate0] + [grads[k] for k in sorted(grads)]


def _shuffled(waves, seed):
    rng = np.random.default_rng(seed)
    return [[wave[i] for i in rng.permutation(len(wave))] for wave in waves]


CASES = [("lstm", 3, None, True, None), ("gru", 3, "layers", True, "standard"),
         ("lstm", 2, "layers", False, "variational"), ("rnn_tanh", 4, None, True, "standard"),
         ("lnlstm", 2, None, True, None)]


@pytest.mark.parametrize("cell_name,L,residual,masked,dropout", CASES)
def test_wavefront_equals_layer_by_layer_bit_for_bit(cell_name, L, residual, masked, dropout):
    setup = _setup(cell_name, L, residual, masked, dropout, seed=L)
    T = setup[2].shape[0]
    sequential = _run(setup, layer_by_layer(L, T))
    assert all(np.isfinite(a).all() for a in sequential)  # nothing read before written
    for waves in (wavefront(L, T), _shuffled(wavefront(L, T), 0), _shuffled(wavefront(L, T), 1)):
        for a, b in zip(_run(setup, waves), sequential, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell_name,L,residual,masked,dropout", CASES)
def test_wavefront_equals_the_stack(cell_name, L, residual, masked, dropout):
    setup = _setup(cell_name, L, residual, masked, dropout, seed=L + 10)
    spec, params, x, state0, valid, masks, dout, dstate = setup
    driver = PythonLoop("reference")
    out, state_n, cache = stack_forward(spec, driver, params, x, state0, valid, masks)
    dx, dstate0, grads = stack_backward(spec, driver, params, cache, dout, dstate)
    want = [out, *state_n, dx, *dstate0] + [grads[k] for k in sorted(grads)]
    got = _run(setup, wavefront(L, x.shape[0]))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bidirectional_is_refused():
    spec = StackSpec(cells.get("lstm"), 2, 2, 2, 2)
    with pytest.raises(ValueError, match="bidirectional"):
        StackRun(spec, {}, np.zeros((2, 1, 2)), ())
