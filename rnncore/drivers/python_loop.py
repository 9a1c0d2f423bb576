"""The reference driver: the time loop of one layer direction, written out in Python.

Forward (T steps, any cell; every per-step buffer allocated once, before the loop):

    X_g = X W_ihᵀ + b                     one (T·B, I) × (I, G·H) GEMM for all steps
                                          (b = the cell's ``input_bias``)
    for t in 0..T−1 (or T−1..0 reversed):  state_t = cell.forward_step(X_g[t], state_{t−1})
                                           (the cell issues its recurrent GEMM(s) and its
                                           pointwise call(s) into the step's buffers)
    out_t = h_t where step t is valid, else 0

Backward walks the same steps in the opposite order. ∂L/∂h_t accumulates in one
(T, B, H) buffer that starts as ∂L/∂out: each step adds its ∂h_{t−1} into the slot of the
step before it; the other state gradients (the LSTM's ∂c) alternate between two buffers.
After the loop

    ∂X = ∂X_g W_ih,   ∂W_ih = Σ_t ∂X_g[t]ᵀ X[t],   ∂b_ih = Σ_t ∂X_g[t]

are one GEMM each, and the cell forms ∂W_hh = Σ_t ∂h_g[t]ᵀ h_{t−1} the same way.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

from ..backend import filled, gemm, sum_outer, xp_of
from ..cells.base import Dims


class LayerCache(NamedTuple):
    """What a layer direction's backward needs; ``saved`` is public to the instruments."""

    x: object
    inputs: dict  # per-step inputs by name, (T, B, ·) arrays; "valid" may be None
    reverse: bool
    state0: tuple
    saved: dict  # the cell's per-step buffers by name, (T, B, width), in time order
    dims: Dims


def time_order(T, reverse):
    """The order in which the steps run: 0..T−1, or T−1..0 for the reverse direction."""
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


class StepOps(SimpleNamespace):
    """What a cell's step is handed: ``pw`` (pointwise functions), ``gemm``, ``scratch``."""

    def scratch(self, name, like):
        """A (B, ·) buffer reused by every step of this call (never saved across steps)."""
        buf = self.buffers.get(name)
        if buf is None or buf.shape != like.shape:
            buf = self.buffers[name] = xp_of(like).empty(like.shape, like.dtype)
        return buf


class PythonLoop:
    """Runs the steps from Python: one cell step call per time step."""

    def __init__(self, pointwise="reference", launcher=None):
        self.name = pointwise  # "reference" or "fused": the pointwise implementation
        self.launcher = launcher

    def ops(self, cell):
        pw = cell.reference if self.launcher is None else cell.fused_pointwise(self.launcher)
        return StepOps(pw=pw, gemm=gemm, buffers={})

    def forward(self, cell, p, x, state0, inputs, reverse=False):
        """Run ``cell`` over x (T, B, I) from ``state0``; returns (out, state_T, cache)."""
        xp = xp_of(x)
        T, B, I = x.shape
        dims = Dims(I, p["w_hh"].shape[0] // cell.num_gates, _proj(p))
        xg = filled(xp, cell.input_bias(p), (T, B, p["w_ih"].shape[0]), x.dtype)
        gemm(x.reshape(T * B, -1), p["w_ih"], xg.reshape(T * B, -1), transpose_b=True, beta=1.0)
        prefill = cell.prefill(p)
        saved = {name: filled(xp, prefill[name], (T, B, width), x.dtype)
                 if name in prefill else xp.empty((T, B, width), x.dtype)
                 for name, width in cell.saved_widths(dims, p).items()}
        ops = self.ops(cell)
        state = state0
        for t in time_order(T, reverse):
            state = cell.forward_step(ops, p, xg[t], state, _at(inputs, t), _at(saved, t))
        valid = inputs.get("valid")
        out = saved["h"] if valid is None else saved["h"] * valid
        return out, state, LayerCache(x, inputs, reverse, state0, saved, dims)

    def backward(self, cell, p, cache, dout, dstate, record=None, need_dx=True,
                 interventions=None, dstates_all=None):
        """BPTT through one layer direction (∂x is None when not ``need_dx``).

        ``dout`` is ∂L/∂out (T, B, H); ``dstate`` is ∂L/∂state_T, a tuple of arrays;
        ``dstates_all`` (optional), a tuple like it of (T, B, ·) arrays, the gradient
        reaching the state after every step (``return_states="all"``).
        Returns (∂x, ∂state_0, grads keyed w_ih, b_ih, w_hh, …). ``record``, when given,
        is called as record(t, dstate_t) with the whole gradient reaching step t's state
        (the gradient-flow instrumentation); free when None. ``interventions``, when
        given (``rnncore.interventions``), modifies each step's gradients: a modified
        gradient, not the gradient.
        """
        x, inputs, reverse, state0, saved, dims = cache
        T, B, _ = x.shape
        xp = xp_of(dout)
        valid = inputs.get("valid")
        dh = dout * valid if valid is not None else xp.array(dout, copy=True, order="C")
        order = time_order(T, reverse)
        dh[order[-1]] += dstate[0]
        if dstates_all is not None:
            dh += dstates_all[0]
        dh0 = xp.zeros(state0[0].shape, dout.dtype)
        # the other state gradients: the current one and the one the step writes
        rest = [[d.copy(), xp.empty_like(d)] for d in dstate[1:]]
        grads = {name: xp.empty((T, B, width), dout.dtype)
                 for name, width in cell.grad_widths(dims, p).items()}
        ops = self.ops(cell)
        for k in range(T - 1, -1, -1):
            t = order[k]
            state_prev = state0 if k == 0 else cell.state_at(saved, order[k - 1])
            if dstates_all is not None:
                for pair, d_all in zip(rest, dstates_all[1:]):
                    pair[0] += d_all[t]
            dstate_t = (dh[t],) + tuple(pair[0] for pair in rest)
            if record is not None:
                record(t, dstate_t)
            dstate_prev = (dh0 if k == 0 else dh[order[k - 1]],) + tuple(pair[1] for pair in rest)
            if interventions is None:
                cell.backward_step(ops, p, dstate_t, state_prev, _at(inputs, t),
                                   _at(saved, t), _at(grads, t), dstate_prev)
            else:
                before = interventions.before_step(k, T, dstate_prev)
                step_inputs, step_grads = _at(inputs, t), _at(grads, t)
                cell.backward_step(ops, p, dstate_t, state_prev, step_inputs, _at(saved, t),
                                   step_grads, dstate_prev)
                interventions.after_step(p, dstate_t, step_grads, dstate_prev, before,
                                         step_inputs.get("valid"))
            for pair in rest:
                pair.reverse()
        dxg = grads["dxg"]
        db = dxg.sum(axis=(0, 1))
        h_before = _states_before_each_step(saved["h"], state0, reverse)
        if inputs.get("recurrent_dropout") is not None:  # the GEMM's operand was m ⊙ h_{t−1}
            h_before = h_before * inputs["recurrent_dropout"]
        out = cell.weight_grads(p, saved, grads, h_before, db)
        out["w_ih"] = sum_outer(dxg, x)
        out["b_ih"] = db
        dx = (dxg.reshape(T * B, -1) @ p["w_ih"]).reshape(T, B, -1) if need_dx else None
        return dx, (dh0,) + tuple(pair[0] for pair in rest), out


def _proj(p):
    w_hr = p.get("w_hr")
    return 0 if w_hr is None else w_hr.shape[0]


def _at(arrays, t):
    """The step-t slices of a dict of (T, …) arrays (None entries stay None)."""
    return {name: None if a is None else a[t] for name, a in arrays.items()}


def _states_before_each_step(h, state0, reverse):
    """(T, B, H) stack of h_{t−1}: the state each step started from, in time order."""
    xp = xp_of(h)
    h0 = state0[0][None]
    return xp.concatenate([h[1:], h0] if reverse else [h0, h[:-1]])
