"""One direction of one layer over time: the hoisted input GEMM, the time loop, BPTT.

Forward (T steps, any cell):

    X_g = X W_ihᵀ + b_ih                  one (T·B, I) × (I, G·H) GEMM for all steps
    for t in 0..T−1 (or T−1..0 reversed):  state_t, cache_t = cell.step(X_g[t], state_{t−1})
    out_t = h_t where step t is valid, else 0

Backward walks the same steps in the opposite order, carrying ∂L/∂state, then

    ∂X = ∂X_g W_ih,   ∂W_ih = Σ_t ∂X_g[t]ᵀ X[t],   ∂b_ih = Σ_t ∂X_g[t]

as one GEMM each, and lets the cell form ∂W_hh (and ∂W_hr) the same way.
"""

from typing import NamedTuple

from .backend import sum_outer, xp_of


class LayerCache(NamedTuple):
    x: object
    valid: object  # (T, B, 1) bool, or None for full-length batches
    reverse: bool
    steps: list  # per-time-step cell caches, indexed by t


def _time_order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def layer_forward(cell, p, x, state0, valid=None, reverse=False):
    """Run ``cell`` over x (T, B, I) from ``state0``; returns (out (T, B, H), state_T, cache)."""
    xp = xp_of(x)
    T, B, _ = x.shape
    xg = (x.reshape(T * B, -1) @ p["w_ih"].T).reshape(T, B, -1)
    if p.get("b_ih") is not None:
        xg += p["b_ih"]
    state = state0
    h0 = state0[0] if cell.has_cell_state else state0
    out = xp.empty((T, B, h0.shape[-1]), dtype=x.dtype)
    steps = [None] * T
    for t in _time_order(T, reverse):
        state, steps[t] = cell.step_forward(p, xg[t], state, None if valid is None else valid[t])
        out[t] = state[0] if cell.has_cell_state else state
    if valid is not None:
        out *= valid
    return out, state, LayerCache(x, valid, reverse, steps)


def layer_backward(cell, p, cache, dout, dstate, record=None):
    """BPTT through one layer direction.

    ``dout`` is ∂L/∂out (T, B, H); ``dstate`` is ∂L/∂state_T in the state's structure
    (arrays, never None). Returns (∂x, ∂state0, grads dict keyed w_ih, b_ih, w_hh, …).
    ``record``, when given, is called as record(t, dstate) after each step's gradient
    arrives (the gradient-flow instrumentation); it costs nothing when None.
    """
    x, valid, reverse, steps = cache
    T, B, _ = x.shape
    xp = xp_of(dout)
    if valid is not None:
        dout = dout * valid
    dxg = None
    saved = [None] * T
    for t in reversed(list(_time_order(T, reverse))):
        if cell.has_cell_state:
            dstate = (dstate[0] + dout[t], dstate[1])
        else:
            dstate = dstate + dout[t]
        if record is not None:
            record(t, dstate)
        dxg_t, dstate, saved[t] = cell.step_backward(
            p, dstate, steps[t], None if valid is None else valid[t]
        )
        if dxg is None:
            dxg = xp.empty((T,) + dxg_t.shape, dtype=dxg_t.dtype)
        dxg[t] = dxg_t
    grads = cell.recurrent_grads(p, steps, saved)
    grads["w_ih"] = sum_outer(dxg, x)
    grads["b_ih"] = dxg.sum(axis=(0, 1))
    dx = (dxg.reshape(T * B, -1) @ p["w_ih"]).reshape(T, B, -1)
    return dx, dstate, grads
