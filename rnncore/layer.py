"""One direction of one layer over time: the hoisted input GEMM, the time loop, BPTT.

Forward (T steps, any cell; every per-step buffer allocated once, before the loop):

    X_g = X W_ihᵀ + b                     one (T·B, I) × (I, G·H) GEMM for all steps
                                          (b = b_ih + b_hh where the cell allows it)
    for t in 0..T−1 (or T−1..0 reversed):  h_g[t] = h_{t−1} W_hhᵀ (+ b_hh)  (one GEMM)
                                           state_t = pointwise(X_g[t], h_g[t], state_{t−1})
    out_t = h_t where step t is valid, else 0

Backward walks the same steps in the opposite order. ∂L/∂h_t accumulates in one
(T, B, H) buffer that starts as ∂L/∂out: each step adds its ∂h_{t−1} into the slot of the
step before it (one pointwise call, one GEMM). After the loop

    ∂X = ∂X_g W_ih,   ∂W_ih = Σ_t ∂X_g[t]ᵀ X[t],   ∂b_ih = Σ_t ∂X_g[t]

are one GEMM each, and the cell forms ∂W_hh = Σ_t ∂h_g[t]ᵀ h_{t−1} the same way.
"""

from typing import NamedTuple

from .backend import filled, gemm, sum_outer, xp_of


class LayerCache(NamedTuple):
    x: object
    valid: object  # (T, B, 1) bool, or None for full-length batches
    reverse: bool
    state0: object
    ws: object  # the cell's per-step buffers (rnncore.cells.*.workspace)


def time_order(T, reverse):
    """The order in which the steps run: 0..T−1, or T−1..0 for the reverse direction."""
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


def layer_forward(cell, p, x, state0, valid=None, reverse=False):
    """Run ``cell`` over x (T, B, I) from ``state0``; returns (out (T, B, H), state_T, cache)."""
    xp = xp_of(x)
    T, B, _ = x.shape
    xg = filled(xp, cell.input_bias(p), (T, B, p["w_ih"].shape[0]), x.dtype)
    gemm(x.reshape(T * B, -1), p["w_ih"], xg.reshape(T * B, -1), transpose_b=True, beta=1.0)
    ws = cell.workspace(xp, p, T, B, x.dtype)
    state, order = state0, time_order(T, reverse)
    for t in order:
        cell.step_forward(p, ws, t, xg[t], state, None if valid is None else valid[t])
        state = cell.state_at(ws, t)
    out = ws.h if valid is None else ws.h * valid
    return out, state, LayerCache(x, valid, reverse, state0, ws)


def layer_backward(cell, p, cache, dout, dstate, record=None):
    """BPTT through one layer direction.

    ``dout`` is ∂L/∂out (T, B, H); ``dstate`` is ∂L/∂state_T in the state's structure
    (arrays, never None). Returns (∂x, ∂state0, grads dict keyed w_ih, b_ih, w_hh, …).
    ``record``, when given, is called as record(t, dstate) with the whole gradient
    reaching step t's state (the gradient-flow instrumentation); free when None.
    """
    x, valid, reverse, state0, ws = cache
    T, B, _ = x.shape
    xp = xp_of(dout)
    has_c = cell.has_cell_state
    dh = dout * valid if valid is not None else xp.array(dout, copy=True, order="C")
    order = time_order(T, reverse)
    dh[order[-1]] += dstate[0] if has_c else dstate
    dh0 = xp.zeros_like(state0[0] if has_c else state0)
    cell.backward_workspace(xp, ws, dstate)
    for k in range(T - 1, -1, -1):
        t = order[k]
        state_prev = state0 if k == 0 else cell.state_at(ws, order[k - 1])
        if record is not None:
            record(t, (dh[t], cell.cell_grad(ws)) if has_c else dh[t])
        dh_prev = dh0 if k == 0 else dh[order[k - 1]]
        cell.step_backward(p, ws, t, dh[t], state_prev, None if valid is None else valid[t],
                           dh_prev)
    dxg = ws.dxg
    db = dxg.sum(axis=(0, 1))
    grads = cell.recurrent_grads(p, ws, _states_before_each_step(ws.h, state0, has_c, reverse),
                                 db)
    grads["w_ih"] = sum_outer(dxg, x)
    grads["b_ih"] = db
    dx = (dxg.reshape(T * B, -1) @ p["w_ih"]).reshape(T, B, -1)
    return dx, ((dh0, cell.cell_grad(ws)) if has_c else dh0), grads


def _states_before_each_step(h, state0, has_c, reverse):
    """(T, B, H) stack of h_{t−1}: the state each step started from, in time order."""
    xp = xp_of(h)
    h0 = (state0[0] if has_c else state0)[None]
    return xp.concatenate([h[1:], h0] if reverse else [h0, h[:-1]])
