"""impl="wavefront" (rnncore/drivers/wavefront_graph.py) with the CPU stand-in for its
streams: the captured-waves driver gives the step program's layer-by-layer bits, agrees with
the reference module, replays with new inputs and in-place parameter updates, and hands
what it does not run to the per-layer driver."""

import numpy as np
import pytest

import rnncore
from rnncore import stack
from rnncore.drivers import PythonLoop, wavefront_graph
from rnncore.wavefront import StackRun, layer_by_layer

CLASSES = {"lstm": rnncore.LSTM, "gru": rnncore.GRU, "rnn": rnncore.RNN}


def _pair(kind, **kw):
    kw = dict(dtype="float64", seed=3, **kw)
    return (CLASSES[kind](4, 6, impl="reference", **kw),
            CLASSES[kind](4, 6, impl="wavefront", **kw))


def _pass(m, x, lengths, **backward):
    m.zero_grad()
    out, state = m(x, lengths=lengths)
    dx, dstate = m.backward(np.sin(out), **backward)
    state = state if isinstance(state, tuple) else (state,)
    dstate = dstate if isinstance(dstate, tuple) else (dstate,)
    return [out, *state, dx, *dstate] + [m.grads[k] for k in sorted(m.grads)]


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("options", [dict(num_layers=3),
                                     dict(num_layers=2, dropout=0.3, residual="layers")],
                         ids=str)
def test_wavefront_module_equals_the_reference(kind, options):
    ref, wf = _pair(kind, **options)
    rng = np.random.default_rng(0)
    for _ in range(3):  # the first call captures, the others replay on new data and masks
        x = rng.standard_normal((5, 3, 4))
        for a, b in zip(_pass(wf, x, [5, 3, 1]), _pass(ref, x, [5, 3, 1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert isinstance(wf._last[0], wavefront_graph.WavefrontCache)
    assert wf.driver.cache.captures == 2 and len(wf.driver.cache) == 1


def test_replays_give_the_layer_by_layer_bits():
    """The driver's waves against the same step program run one item at a time, layer
    after layer (rnncore/wavefront.py), on the second call: bit for bit."""
    m = rnncore.LSTM(4, 6, num_layers=3, dtype="float64", impl="wavefront", seed=5)
    rng = np.random.default_rng(1)
    T, B = 6, 2
    state0 = tuple(rng.standard_normal((3, B, 6)) for _ in range(2))
    valid = (np.arange(T)[:, None] < np.array([6, 4])[None, :])[..., None]
    for _ in range(2):
        x, dout = rng.standard_normal((T, B, 4)), rng.standard_normal((T, B, 6))
        dstate = tuple(rng.standard_normal((3, B, 6)) for _ in range(2))
        out, state_n, cache = stack.stack_forward(m.spec, m.driver, m.params, x, state0, valid)
        dx, dstate0, grads = stack.stack_backward(m.spec, m.driver, m.params, cache, dout,
                                                  dstate)
    run = StackRun(m.spec, m.params, x, state0, valid)
    waves = layer_by_layer(3, T)
    want_out, want_state = run.forward(waves)
    run.start_backward(dout, dstate)
    want_dx, want_dstate0, want_grads = run.backward(waves)
    assert np.array_equal(out, want_out) and np.array_equal(dx, want_dx)
    for a, b in zip(state_n + dstate0, want_state + want_dstate0, strict=True):
        assert np.array_equal(a, b)
    assert sorted(grads) == sorted(want_grads)
    for name in grads:
        assert np.array_equal(grads[name], want_grads[name]), name


def test_in_place_parameter_updates_are_seen():
    ref, wf = _pair("gru", num_layers=2)
    x = np.random.default_rng(2).standard_normal((4, 2, 4))
    _pass(wf, x, None)  # captured
    for m in (ref, wf):
        for name, p in m.params.items():
            p += 0.1 * (1 + len(name) % 5)  # what an optimizer step does: in place
    for a, b in zip(_pass(wf, x, None), _pass(ref, x, None), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert wf.driver.cache.captures == 2


def test_what_the_wavefront_does_not_run_goes_layer_by_layer():
    ref, wf = _pair("lstm", num_layers=2, bidirectional=True)
    x = np.random.default_rng(3).standard_normal((4, 2, 4))
    for a, b in zip(_pass(wf, x, [4, 2]), _pass(ref, x, [4, 2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert len(wf.driver.cache) == 0
    spec = wf.spec
    assert not wf.driver.runs_stack(spec)
    assert not wf.driver.runs_stack(rnncore.LSTM(4, 6, num_layers=2, proj_size=3).spec)
    assert not wf.driver.runs_stack(rnncore.LSTM(4, 6, residual="stack").spec)
    uni = rnncore.LSTM(4, 6, num_layers=2).spec
    assert wf.driver.runs_stack(uni) and not wf.driver.runs_stack(uni, [{"m": 1}], None)


class Recorder:
    def __init__(self):
        self.seen = []

    def on_state_grad(self, k, d, t, dstate):
        self.seen.append((k, d, t, [np.array(s) for s in dstate]))

    def on_input_grad(self, k, du):
        self.seen.append((k, "input", np.array(du)))


def test_a_recorded_backward_reads_the_wavefront_forward():
    """The gradient-flow recorder needs every step: the per-layer backward runs, on the
    caches that point at the wavefront entry's buffers, and records what the reference does."""
    ref, wf = _pair("lstm", num_layers=2)
    x = np.random.default_rng(4).standard_normal((5, 2, 4))
    recorders = Recorder(), Recorder()
    got = _pass(wf, x, [5, 3], recorder=recorders[0])
    want = _pass(ref, x, [5, 3], recorder=recorders[1])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert len(recorders[0].seen) == len(recorders[1].seen) > 0


def test_load_state_dict_empties_the_cache():
    _, wf = _pair("rnn", num_layers=2)
    x = np.random.default_rng(5).standard_normal((3, 2, 4))
    _pass(wf, x, None)
    assert len(wf.driver.cache) == 1
    wf.load_state_dict(wf.state_dict())
    assert len(wf.driver.cache) == 0


def test_the_stand_in_runs_waves_in_order():
    seen = []
    replay = wavefront_graph.SerialWaves().capture([[(0, 0)], [(0, 1), (1, 0)]],
                                                   lambda l, t: seen.append((l, t)))
    assert seen == []  # nothing runs at capture
    replay()
    assert seen == [(0, 0), (0, 1), (1, 0)]
    assert isinstance(rnncore.LSTM(2, 3, impl="wavefront").driver.layer.fallback, PythonLoop)


def test_without_input_grad_the_first_layers_dx_is_left_out_and_nothing_else_changes():
    x = np.random.default_rng(6).standard_normal((5, 2, 4))
    results = []
    for input_grad in (True, False):
        m = rnncore.LSTM(4, 6, num_layers=2, dtype="float64", seed=2, impl="wavefront",
                         input_grad=input_grad)
        out, _ = m(x)
        dx, dstate = m.backward(np.cos(out))
        results.append((dx, dstate, m.grads, m.driver.cache))
    (dx, dstate, grads, _), (no_dx, dstate_, grads_, cache) = results
    assert dx is not None and no_dx is None and cache.captures == 2
    assert all(np.array_equal(a, b) for a, b in zip(dstate, dstate_, strict=True))
    assert all(np.array_equal(grads[k], grads_[k]) for k in grads)
