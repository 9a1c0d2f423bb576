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


class CheckpointCache(NamedTuple):
    """A layer direction's cache under ``checkpoint_every``: the states at the start of
    every segment, the full h (the output), and what each segment's recompute needs."""

    x: object
    inputs: dict
    reverse: bool
    state0: tuple
    saved: dict  # only the buffers kept for all T: "h" and what ``weight_grads`` reads
    dims: Dims
    every: int
    checkpoints: list  # [segment] the state tuple that segment starts from


class PythonLoop:
    """Runs the steps from Python: one cell step call per time step.

    ``checkpoint_every`` = k > 0 keeps the state only every k steps (and h, the output):
    the backward recomputes each segment's forward, with the same arithmetic, before
    stepping back through it (``rnncore.Options.checkpoint_every``).
    """

    checkpoint_every = 0

    def __init__(self, pointwise="reference", launcher=None):
        self.name = pointwise  # "reference" or "fused": the pointwise implementation
        self.launcher = launcher

    def _in_place(self, cell, dims, ops):
        """The cell's in-place saved bindings, used only with the cell's own NumPy/CuPy
        pointwise functions (the fused ones, and the CUDA-graph driver's step sequence
        that mirrors this loop's on the GPU, keep h_g)."""
        if ops.pw is not cell.reference or not hasattr(cell, "in_place_for"):
            return {}
        return cell.in_place_for(dims)

    def _saved(self, cell, p, dims, xg, n, B, dtype, ops, keep=None):
        """The saved buffers of n steps; ``keep`` {name: array} used as given."""
        xp = xp_of(xg)
        prefill = cell.prefill(p)
        in_place = self._in_place(cell, dims, ops)
        saved = {}
        for name, width in cell.saved_widths(dims, p).items():
            if keep and name in keep:
                saved[name] = keep[name]
            elif name in in_place:
                saved[name] = xg if in_place[name] == "xg" else None
            elif name in prefill:
                saved[name] = filled(xp, prefill[name], (n, B, width), dtype)
            else:
                saved[name] = xp.empty((n, B, width), dtype)
        return saved

    def _hoisted(self, cell, p, x):
        xp = xp_of(x)
        T, B, _ = x.shape
        xg = filled(xp, cell.input_bias(p), (T, B, p["w_ih"].shape[0]), x.dtype)
        gemm(x.reshape(T * B, -1), p["w_ih"], xg.reshape(T * B, -1), transpose_b=True, beta=1.0)
        return xg

    def ops(self, cell):
        pw = cell.reference if self.launcher is None else cell.fused_pointwise(self.launcher)
        return StepOps(pw=pw, gemm=gemm, buffers={})

    def forward(self, cell, p, x, state0, inputs, reverse=False):
        """Run ``cell`` over x (T, B, I) from ``state0``; returns (out, state_T, cache)."""
        T, B, I = x.shape
        dims = Dims(I, p["w_hh"].shape[0] // cell.num_gates, _proj(p))
        if 0 < self.checkpoint_every < T:
            return self._forward_checkpointed(cell, p, x, state0, inputs, reverse, dims)
        xp = xp_of(x)
        xg = filled(xp, cell.input_bias(p), (T, B, p["w_ih"].shape[0]), x.dtype)
        gemm(x.reshape(T * B, -1), p["w_ih"], xg.reshape(T * B, -1), transpose_b=True, beta=1.0)
        ops = self.ops(cell)
        # the cell's per-step buffers (T, B, width); the LSTM's gates overwrite xg in place
        saved = self._saved(cell, p, dims, xg, T, B, x.dtype, ops)
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
        if isinstance(cache, CheckpointCache):
            return self._backward_checkpointed(cell, p, cache, dout, dstate, record, need_dx)
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


    # ------------------------------------------------------------------ recompute
    def _segments(self, T, reverse, every):
        """[(first loop position, time range lo, hi)] of each segment, in loop order."""
        order = time_order(T, reverse)
        out = []
        for k0 in range(0, T, every):
            times = order[k0 : k0 + every]
            out.append((k0, min(times), max(times) + 1))
        return out

    def _run_segment(self, cell, p, x, inputs, reverse, dims, state, lo, hi, kept, ops):
        """The forward of steps lo..hi−1 from ``state``: (its saved buffers, indexed from
        lo, and the state it ends in). Same arithmetic as the plain forward's steps."""
        n, B = hi - lo, x.shape[1]
        xg = self._hoisted(cell, p, x[lo:hi])
        keep = {name: a[lo:hi] for name, a in kept.items()}
        for name, value in cell.prefill(p).items():  # a recompute starts them afresh
            if name in keep:
                keep[name][...] = 0 if value is None else value
        saved = self._saved(cell, p, dims, xg, n, B, x.dtype, ops, keep)
        seg_inputs = {name: None if a is None else a[lo:hi] for name, a in inputs.items()}
        for t in time_order(n, reverse):
            state = cell.forward_step(ops, p, xg[t], state, _at(seg_inputs, t), _at(saved, t))
        return saved, seg_inputs, state

    def _kept_full(self, cell, p, dims, T, B, dtype, xp):
        """The buffers kept for all T under recompute: h and what weight_grads reads
        (every saved buffer for a cell that does not declare ``weight_grad_reads``)."""
        widths = cell.saved_widths(dims, p)
        names = getattr(cell, "weight_grad_reads", None)
        names = set(widths) if names is None else {"h"} | set(names)
        prefill = cell.prefill(p)
        return {name: filled(xp, prefill[name], (T, B, w), dtype) if name in prefill
                else xp.empty((T, B, w), dtype)
                for name, w in widths.items() if name in names}

    def _forward_checkpointed(self, cell, p, x, state0, inputs, reverse, dims):
        xp = xp_of(x)
        T, B, _ = x.shape
        every = self.checkpoint_every
        kept = self._kept_full(cell, p, dims, T, B, x.dtype, xp)
        ops = self.ops(cell)
        state, checkpoints = state0, []
        for _, lo, hi in self._segments(T, reverse, every):
            checkpoints.append(tuple(s.copy() for s in state))
            _, _, state = self._run_segment(cell, p, x, inputs, reverse, dims, state, lo, hi,
                                            kept, ops)
        state = tuple(s.copy() for s in state)  # may be views of a segment's buffers
        valid = inputs.get("valid")
        out = kept["h"] if valid is None else kept["h"] * valid
        return out, state, CheckpointCache(x, inputs, reverse, state0, kept, dims, every,
                                           checkpoints)

    def _backward_checkpointed(self, cell, p, cache, dout, dstate, record, need_dx):
        """The plain backward's steps, in its order, over one recomputed segment at a
        time; the per-step gradients, the weight gradients and ∂x as in the plain one."""
        x, inputs, reverse, state0, kept, dims, every, checkpoints = cache
        T, B, _ = x.shape
        xp = xp_of(dout)
        valid = inputs.get("valid")
        dh = dout * valid if valid is not None else xp.array(dout, copy=True, order="C")
        order = time_order(T, reverse)
        dh[order[-1]] += dstate[0]
        dh0 = xp.zeros(state0[0].shape, dout.dtype)
        rest = [[d.copy(), xp.empty_like(d)] for d in dstate[1:]]
        grads = {name: xp.empty((T, B, width), dout.dtype)
                 for name, width in cell.grad_widths(dims, p).items()}
        ops = self.ops(cell)
        segments = self._segments(T, reverse, every)
        for s in range(len(segments) - 1, -1, -1):
            k0, lo, hi = segments[s]
            saved, seg_inputs, _ = self._run_segment(cell, p, x, inputs, reverse, dims,
                                                     checkpoints[s], lo, hi, kept, ops)
            n = hi - lo
            for k in range(k0 + n - 1, k0 - 1, -1):
                t = order[k]
                state_prev = checkpoints[s] if k == k0 else \
                    cell.state_at(saved, order[k - 1] - lo)
                dstate_t = (dh[t],) + tuple(pair[0] for pair in rest)
                if record is not None:
                    record(t, dstate_t)
                dstate_prev = (dh0 if k == 0 else dh[order[k - 1]],) + \
                    tuple(pair[1] for pair in rest)
                cell.backward_step(ops, p, dstate_t, state_prev, _at(seg_inputs, t - lo),
                                   _at(saved, t - lo), _at(grads, t), dstate_prev)
                for pair in rest:
                    pair.reverse()
            del saved
        dxg = grads["dxg"]
        db = dxg.sum(axis=(0, 1))
        out = cell.weight_grads(p, kept, grads, _states_before_each_step(kept["h"], state0,
                                                                         reverse), db)
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
