"""The gradient-flow instrument: recorded gradients against independent finite differences,
zero cost when off, and the ``python -m rnncore.gradflow`` sweep."""

import numpy as np
import pytest

import rnncore
from rnncore import gradflow

T, B, I, H = 6, 2, 3, 3
CELLS = ("lstm", "gru", "rnn_tanh")


def _stack(cell, num_layers=2):
    return rnncore.Recurrent(cell, I, H, num_layers=num_layers, dtype="float64", seed=3)


def _single_layers(stack):
    """The stack's layers as separate one-layer modules with the same weights."""
    layers = []
    for k in range(stack.num_layers):
        m = rnncore.Recurrent(stack.mode, I if k == 0 else H, H, dtype="float64", seed=0)
        m.load_state_dict({name.replace(f"_l{k}", "_l0"): value
                           for name, value in stack.params.items() if name.endswith(f"_l{k}")})
        layers.append(m)
    return layers


def _perturbed_loss(layers, x, dout, k, t, dh, dc):
    """L = Σ⟨dout, y⟩ with δ added to layer k's state after step t: to h_t both where it is
    output and where it is carried (the value of h_t), and to the carried c_t (LSTM).

    Layer k runs in two calls, steps 0..t and t+1..T−1, carrying the state between them
    (stepping with carried state equals the whole-sequence call)."""
    u = x
    for j, m in enumerate(layers):
        if j != k:
            u = m(u)[0]
            continue
        lstm = m.mode == "lstm"
        head, state = m(u[: t + 1])
        head = head.copy()
        head[t] += dh
        if lstm:
            state = (state[0] + dh, state[1] + dc)
        else:
            state = state + dh
        tail = m(u[t + 1:], state)[0] if t + 1 < len(u) else head[:0]
        u = np.concatenate([head, tail])
    return float((dout * u).sum())


def _finite_difference(layers, x, dout, k, t, which, eps=1e-6):
    grad = np.zeros((B, H))
    zero = np.zeros((B, H))
    for idx in np.ndindex(B, H):
        delta = np.zeros((B, H))
        delta[idx] = eps
        args = (delta, zero) if which == "h" else (zero, delta)
        plus = _perturbed_loss(layers, x, dout, k, t, *args)
        args = (-delta, zero) if which == "h" else (zero, -delta)
        minus = _perturbed_loss(layers, x, dout, k, t, *args)
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("cell", CELLS)
def test_recorded_state_gradient_equals_finite_differences(cell):
    stack = _stack(cell)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    dout = rng.standard_normal((T, B, H))
    stack(x)
    rec = gradflow.GradFlowRecorder(keep=True)
    stack.backward(dout, recorder=rec)
    layers = _single_layers(stack)
    for k in range(2):
        for t in (0, 3, T - 1):
            kept = rec.kept[(k, 0, t)]
            dh = kept[0]
            fd = _finite_difference(layers, x, dout, k, t, "h")
            np.testing.assert_allclose(dh, fd, rtol=1e-6, atol=1e-9)
            assert rec.h[(k, 0, t)] == pytest.approx(np.linalg.norm(fd), rel=1e-6)
            if cell == "lstm":
                fd_c = _finite_difference(layers, x, dout, k, t, "c")
                np.testing.assert_allclose(kept[1], fd_c, rtol=1e-6, atol=1e-9)
                assert rec.c[(k, 0, t)] == pytest.approx(np.linalg.norm(fd_c), rel=1e-6)


def test_recorder_reports_every_layer_direction_and_step():
    m = rnncore.LSTM(I, H, 3, bidirectional=True, dtype="float64", seed=1)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    out = m(x)[0]
    rec = gradflow.GradFlowRecorder()
    dx = m.backward(np.ones_like(out), recorder=rec)[0]
    assert rec.h_norms().shape == (3, 2, T) and np.isfinite(rec.h_norms()).all()
    assert rec.c_norms().shape == (3, 2, T)
    assert rec.input_norms()[0] == pytest.approx(np.linalg.norm(dx), rel=1e-12)
    assert rec.layer_norms().shape == (3,)


@pytest.mark.parametrize("cell", CELLS)
def test_instrumentation_off_and_on_leave_results_bitwise_unchanged(cell):
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    results = []
    for recorder in (None, gradflow.GradFlowRecorder(keep=True)):
        m = rnncore.Recurrent(cell, I, H, num_layers=2, seed=5, dropout=0.3)
        out = m(x)[0]
        dout = np.random.default_rng(3).standard_normal(out.shape).astype(np.float32)
        dx = m.backward(dout, recorder=recorder)[0]
        results.append((out, dx, m.grads))
    (out0, dx0, g0), (out1, dx1, g1) = results
    assert np.array_equal(out0, out1) and np.array_equal(dx0, dx1)
    assert g0.keys() == g1.keys()
    assert all(np.array_equal(g0[name], g1[name]) for name in g0)


def test_weight_norms_and_gate_saturation():
    m = rnncore.LSTM(I, H, 2, dtype="float64", seed=0, forget_bias=30.0)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    p = gradflow.probe(m, x)
    for name, g in m.grads.items():
        assert p.weights[name] == pytest.approx(np.linalg.norm(g), rel=1e-12)
    # a forget bias of 30 saturates f (one of the three sigmoid gates i, f, o) everywhere;
    # the fractions equal those of gates recomputed here from torch.nn's LSTM equations
    assert (p.saturation >= 1 / 3).all()
    np.testing.assert_array_equal(p.saturation[:, 0], _lstm_saturation(m, x))
    gates = gradflow.sigmoid_gates(m, 0, 0)
    assert gates.shape == (T, B, 3 * H)
    assert np.isnan(gradflow.gate_saturation(_rnn_after_forward())).all()


def _lstm_saturation(m, x):
    """Per layer, the fraction of i, f, o outside [0.05, 0.95], from a plain NumPy LSTM."""
    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    fractions, u = [], x
    for k in range(m.num_layers):
        W, U = m.params[f"weight_ih_l{k}"], m.params[f"weight_hh_l{k}"]
        b = m.params[f"bias_ih_l{k}"] + m.params[f"bias_hh_l{k}"]
        h, c, outs, gates = np.zeros((B, H)), np.zeros((B, H)), [], []
        for t in range(u.shape[0]):
            a = u[t] @ W.T + h @ U.T + b
            i, f, g, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), \
                sigmoid(a[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
            outs.append(h)
            gates.append(np.concatenate([i, f, o], axis=1))
        gates = np.stack(gates)
        fractions.append(float(((gates < 0.05) | (gates > 0.95)).mean()))
        u = np.stack(outs)
    return np.array(fractions)


def _rnn_after_forward():
    m = rnncore.RNN(I, H, dtype="float64", seed=0)
    m(np.zeros((T, B, I)))
    return m


def test_gradflow_quick_is_deterministic_and_writes_pngs(tmp_path, capsys):
    args = ["--quick", "--cells", "lstm,rnn_relu", "--init-state", "zeros,normal",
            "--out", str(tmp_path)]
    first = gradflow.main(args)
    table = capsys.readouterr().out
    second = gradflow.main(args)
    assert capsys.readouterr().out == table
    assert len(first) == 2 * 3 * 2 * 2
    for (c1, p1), (c2, p2) in zip(first, second):
        assert c1 == c2 and np.array_equal(p1.h, p2.h)
    for name in ("gradflow_heatmaps.png", "gradflow_depth.png"):
        assert (tmp_path / name).stat().st_size > 1000
    # residual paths keep the gradient reaching layer 1 near the top layer's
    for c, p in first:
        if c.residual == "layers" and c.depth == 4:
            assert 0.3 < p.depth_ratio < 3


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        gradflow.main(["--cells", "transformer", "--quick"])
    with pytest.raises(ValueError, match="loss"):
        gradflow.loss_direction((2, 2, 2), "middle", np.random.default_rng(0), np.float64)
