"""Interventions inside backward: each does exactly what it says."""

import numpy as np
import pytest

import rnncore
from rnncore.interventions import Interventions

T, B, I, H = 9, 3, 3, 4


def run(cell="lstm", lengths=None, dhx=True, **opts):
    m = rnncore.Recurrent(cell, I, H, num_layers=2, dtype="float64", seed=0,
                          impl="reference", **opts)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))
    dout = rng.standard_normal((T, B, H))
    out, state = m(x, lengths=lengths)
    dhx_ = None
    if dhx:
        dhx_ = tuple(rng.standard_normal(s.shape) for s in state) if isinstance(state, tuple) \
            else rng.standard_normal(state.shape)
    dx, dh0 = m.backward(dout, dhx_)
    return m, dx, dh0


def same(a, b):
    ga, gb = a[0].grads, b[0].grads
    return all(np.array_equal(ga[k], gb[k]) for k in ga) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("opts", [dict(h_detach=0.0), dict(gate_clip=1e300),
                                  dict(truncate=T), dict(truncate=T + 5), dict(grad_noise=0.0)])
def test_neutral_settings_are_bitwise_the_plain_backward(opts):
    plain = run()
    assert same(run(**opts), plain)
    lengths = [9, 5, 2]
    assert same(run(lengths=lengths, **opts), run(lengths=lengths))


def test_active_interventions_use_the_reference_driver():
    m = rnncore.LSTM(3, 4, gate_clip=0.5)
    assert m.impl_in_use == "reference" and m.interventions.active
    assert rnncore.LSTM(3, 4).interventions.active is False


def test_validation():
    with pytest.raises(ValueError, match="h_detach"):
        rnncore.GRU(3, 4, h_detach=0.5)
    with pytest.raises(ValueError, match="gate_clip"):
        rnncore.GRU(3, 4, gate_clip=1.0)
    with pytest.raises(ValueError):
        rnncore.LSTM(3, 4, h_detach=1.5)
    with pytest.raises(ValueError):
        rnncore.LSTM(3, 4, truncate=-1)
    rnncore.GRU(3, 4, truncate=3)  # truncation works with any cell


class Spy:
    """Wraps Interventions.after_step to see every step's ∂z after the intervention."""

    def __init__(self, monkeypatch):
        self.dz = []
        orig = Interventions.after_step

        def after(this, p, dstate, grads, dstate_prev, before, valid):
            orig(this, p, dstate, grads, dstate_prev, before, valid)
            self.dz.append(grads["dxg"].copy())

        monkeypatch.setattr(Interventions, "after_step", after)


def test_gate_clip_bounds_every_step(monkeypatch):
    spy = Spy(monkeypatch)
    plain = run()
    raw = max(np.abs(g).max() for g in (plain[0].grads["weight_hh_l0"],))
    assert raw > 0
    c = 0.05
    m, dx, _ = run(gate_clip=c)
    assert len(spy.dz) == 2 * T
    assert all(np.abs(dz).max() <= c for dz in spy.dz)
    assert any(np.isclose(np.abs(dz).max(), c) for dz in spy.dz)  # it did clip
    assert not same((m, dx), plain)


def test_gate_clip_changes_the_recurrent_gradient_consistently(monkeypatch):
    """The clipped ∂z_t is what reaches ∂x_t, ∂W_ih and, through W_hh, ∂h_{t−1}."""
    from rnncore.gradflow import GradFlowRecorder

    spy = Spy(monkeypatch)
    m = rnncore.LSTM(I, H, dtype="float64", seed=0, gate_clip=0.02)
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    m(x)
    rec = GradFlowRecorder(keep=True)
    dx = m.backward(dout, recorder=rec)[0]
    dz = np.stack(spy.dz[::-1])  # time order
    assert np.abs(dz).max() <= 0.02
    assert np.allclose(dx, dz @ m.params["weight_ih_l0"], rtol=1e-12, atol=1e-15)
    assert np.allclose(m.grads["weight_ih_l0"], np.einsum("tbg,tbi->gi", dz, x), rtol=1e-12)
    for t in range(1, T):
        dh_prev = rec.kept[(0, 0, t - 1)][0]
        assert np.allclose(dh_prev, dout[t - 1] + dz[t] @ m.params["weight_hh_l0"],
                           rtol=1e-12, atol=1e-15)


def chunked(k2, cell="lstm"):
    """The manual computation: run the window as separate chunks of k2 steps counted back
    from the end, each from the (constant) state the full forward reached."""
    m = rnncore.Recurrent(cell, I, H, num_layers=1, dtype="float64", seed=0,
                          impl="reference")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))
    dout = rng.standard_normal((T, B, H))
    _, final = m(x)
    dhx = tuple(rng.standard_normal(s.shape) for s in final) if isinstance(final, tuple) \
        else rng.standard_normal(final.shape)
    outs = m.last_cache.layers[0][0].saved
    bounds = sorted({max(0, T - j * k2) for j in range(T // k2 + 2)})
    dx = np.zeros_like(x)
    dh0 = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == 0:
            hx = None
        else:
            hx = tuple(outs[s][lo - 1][None] for s in m.cell.state)
            hx = hx if len(hx) > 1 else hx[0]
        m(x[lo:hi], hx)
        if hi == T:
            d = dhx
        else:
            d = tuple(np.zeros_like(s) for s in final) if isinstance(final, tuple) \
                else np.zeros_like(final)
        dx[lo:hi], dh = m.backward(dout[lo:hi], d)
        if lo == 0:
            dh0 = dh
    # the truncated module on the whole window
    t = rnncore.Recurrent(cell, I, H, num_layers=1, dtype="float64", seed=0, truncate=k2)
    t(x)
    dx_t, dh0_t = t.backward(dout, dhx)
    return m, dx, dh0, t, dx_t, dh0_t


@pytest.mark.parametrize("cell,k2", [("lstm", 3), ("lstm", 4), ("lstm", 1), ("gru", 2),
                                     ("rnn_tanh", 5)])
def test_truncation_matches_separate_chunks(cell, k2):
    m, dx, dh0, t, dx_t, dh0_t = chunked(k2, cell)
    assert np.allclose(dx_t, dx, rtol=1e-12, atol=1e-14)
    for a, b in zip(np.atleast_1d(dh0_t) if not isinstance(dh0_t, tuple) else dh0_t,
                    np.atleast_1d(dh0) if not isinstance(dh0, tuple) else dh0):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-14)
    for k in m.grads:
        assert np.allclose(t.grads[k], m.grads[k], rtol=1e-11, atol=1e-13), k


def test_truncation_zeroes_gradient_beyond_k2():
    """A loss at the last step only: the input gradient is zero more than k2 steps back."""
    m = rnncore.LSTM(I, H, dtype="float64", seed=0, truncate=3)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    m(x)
    dout = np.zeros((T, B, H))
    dout[-1] = 1.0
    dx, (dh0, dc0) = m.backward(dout)
    assert np.all(dx[:T - 3] == 0) and np.all(np.abs(dx[T - 3:]).sum(axis=(1, 2)) > 0)
    assert np.all(dh0 == 0) and np.all(dc0 == 0)


def test_h_detach_one_keeps_only_the_cell_path():
    """p = 1: ∂h_{t−1} gets nothing from step t; ∂c still flows. Equal to a manual
    backward that zeroes the recurrent ∂h each step."""
    m = rnncore.LSTM(I, H, dtype="float64", seed=0, h_detach=1.0)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    m(x)
    dout = np.zeros((T, B, H))
    dout[-1] = 1.0
    dx, (dh0, dc0) = m.backward(dout)
    assert np.all(dh0 == 0)  # no ∂h path back to h_0
    assert np.abs(dc0).sum() > 0  # the cell path reaches c_0
    assert np.abs(dx[0]).sum() > 0  # and through it, x_0
    # manual: the reference loop with the recurrent GEMM into ∂h removed
    from rnncore.cells import lstm as L

    cell = m.cell
    orig = cell.backward_step

    def no_h(ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        keep = dstate_prev[0].copy()
        orig(ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev)
        dstate_prev[0][...] = keep

    ref = rnncore.LSTM(I, H, dtype="float64", seed=0, impl="reference")
    ref(x)
    try:
        L.LSTM.backward_step = lambda self, *a: no_h(*a)
        dx_ref, _ = ref.backward(dout)
    finally:
        L.LSTM.backward_step = orig.__func__
    assert np.allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)


def test_h_detach_is_seeded_and_stochastic():
    a, b = run(h_detach=0.5), run(h_detach=0.5)
    assert same(a, b)  # the module's seeded generator
    assert not same(a, run())


def test_grad_noise_changes_and_is_seeded():
    a, b = run(grad_noise=0.1), run(grad_noise=0.1)
    assert same(a, b)
    plain = run()
    assert not same(a, plain)
    small = run(grad_noise=1e-12)
    assert np.allclose(small[1], plain[1], atol=1e-9)
