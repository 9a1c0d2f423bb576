"""Stepping one step at a time with carried state equals the whole-sequence call, and the
seed example's shapes."""

import numpy as np
import pytest

import rnncore


@pytest.mark.parametrize("make", [
    lambda: rnncore.LSTM(3, 5, num_layers=3, dtype="float64", seed=0),
    lambda: rnncore.LSTM(3, 5, num_layers=2, proj_size=2, dtype="float64", seed=0),
    lambda: rnncore.GRU(3, 5, num_layers=2, dtype="float64", seed=0, reset_after=False),
    lambda: rnncore.GRU(3, 5, num_layers=2, dtype="float64", seed=0, residual="layers"),
    lambda: rnncore.RNN(3, 5, num_layers=2, nonlinearity="relu", dtype="float64", seed=0),
], ids=["lstm", "lstmp", "gru-orig", "gru-res", "rnn-relu"])
def test_step_by_step_equals_whole_sequence(make):
    module = make()
    x = np.random.default_rng(0).standard_normal((7, 2, 3))
    whole, whole_state = module(x)
    state, outs = None, []
    for t in range(x.shape[0]):
        out_t, state = module(x[t : t + 1], state)
        outs.append(out_t)
    np.testing.assert_allclose(np.concatenate(outs), whole, rtol=0, atol=1e-14)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    whole_state if isinstance(whole_state, tuple) else (whole_state,)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_step_by_step_backward_equals_whole_sequence():
    """BPTT through carried states by hand equals the whole-sequence backward."""
    lstm = rnncore.LSTM(3, 4, num_layers=2, dtype="float64", seed=1)
    rng = np.random.default_rng(1)
    x, dout = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    lstm(x)
    dx_whole, _ = lstm.backward(dout)
    grads_whole = {k: v.copy() for k, v in lstm.grads.items()}

    lstm.zero_grad()
    states = [None]
    for t in range(5):
        states.append(lstm(x[t : t + 1], states[-1])[1])
    dstate, dxs = None, []
    for t in range(4, -1, -1):
        lstm(x[t : t + 1], states[t])  # re-run the step to refill the cache
        dx_t, dstate = lstm.backward(dout[t : t + 1], dstate)
        dxs.insert(0, dx_t)
    np.testing.assert_allclose(np.concatenate(dxs), dx_whole, atol=1e-13)
    for name in grads_whole:
        np.testing.assert_allclose(lstm.grads[name], grads_whole[name], atol=1e-13)


def test_seed_example_shapes():
    lstm = rnncore.LSTM(100, 128, num_layers=3, batch_first=True, seed=0)
    x = np.random.default_rng(0).standard_normal((32, 50, 100)).astype(np.float32)
    out, (h_n, c_n) = lstm(x)
    assert out.shape == (32, 50, 128) and out.dtype == np.float32
    assert h_n.shape == (3, 32, 128) and c_n.shape == (3, 32, 128)
    np.testing.assert_array_equal(out[:, -1], h_n[-1])
    dx, (dh0, dc0) = lstm.backward(np.ones_like(out))
    assert dx.shape == x.shape and dh0.shape == (3, 32, 128) and dx.dtype == np.float32

    bi = rnncore.LSTM(100, 128, num_layers=3, batch_first=True, bidirectional=True, seed=0)
    out, (h_n, _) = bi(x)
    assert out.shape == (32, 50, 256) and h_n.shape == (6, 32, 128)
    np.testing.assert_array_equal(out[:, -1, :128], h_n[-2])  # last layer, forward
    np.testing.assert_array_equal(out[:, 0, 128:], h_n[-1])  # last layer, reverse


def test_lengths_hold_state_and_zero_padding():
    gru = rnncore.GRU(2, 3, bidirectional=True, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 2))
    out, h_n = gru(x, lengths=[6, 3])
    short, h_short = gru(x[:3, 1:2])
    assert np.all(out[3:, 1] == 0)
    np.testing.assert_allclose(out[:3, 1], short[:, 0], atol=1e-14)
    np.testing.assert_allclose(h_n[:, 1], h_short[:, 0], atol=1e-14)
    x[3:, 1] = 1e3  # garbage in the padding changes nothing
    out2, h2 = gru(x, lengths=np.array([6, 3]))
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(h2, h_n)
