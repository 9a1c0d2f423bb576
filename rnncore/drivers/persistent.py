"""The persistent driver: one kernel launch runs a layer direction's T steps.

For a cell with a persistent kernel (the LSTM without projection, today) and a hidden size
whose slice of W_hh fits in the shared memory of resident blocks:

    forward:   X_g = X W_ihᵀ + b                        one GEMM (as the reference driver)
               persistent_lstm_forward                  one cooperative launch, T steps
               out = h ⊙ valid
    backward:  ∂h = ∂out ⊙ valid, ∂h[last] += ∂h_T      (as the reference driver)
               persistent_lstm_backward                 one cooperative launch, T steps
               ∂W_hh = Σ_t ∂z_tᵀ h_{t−1}, ∂W_ih = Σ_t ∂z_tᵀ x_t, ∂b = Σ_t ∂z_t, ∂X = ∂Z W_ih
                                                        one GEMM (or sum) each

``kernels/persistent_lstm.cu`` holds the schedule inside a launch. The saved buffers have
the reference driver's names and layouts (h, c, gates, tanh_c; no hg: the recurrent
product never leaves the kernel), so the instruments read them as they are.

Anything else — another cell, LSTMP, a hidden size too large, a backward asked to record
every step's state gradient (``record``, the gradient-flow instrument) — runs on the
``fallback`` driver, chosen by the same rule in forward and backward so that a cache is
always read by the driver kind that wrote it (a persistent forward's cache is also valid
input to the reference backward, which is what ``record`` uses).

Units per block: a block owns U consecutive hidden units and keeps their 4·U·H weights in
shared memory; the grid is ⌈H / U⌉ blocks, which a cooperative launch needs resident at
once. ``plan`` takes the smallest U whose grid fits the device's resident blocks and whose
slice fits its shared memory (smaller U: more blocks, less work per block per step).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend, persistent_kernels
from ..backend import filled, gemm, sum_outer, xp_of
from ..cells.base import Dims
from .python_loop import LayerCache, _states_before_each_step, time_order

# Cells with a persistent kernel: registry name -> kernel stem (forward and backward are
# "<stem>_forward" / "<stem>_backward"). The cell declarations are not touched; when cells
# declare their own persistent kernels this table moves into them.
PERSISTENT_CELLS = {"lstm": "persistent_lstm"}


class Plan(NamedTuple):
    """How one layer direction is launched."""

    units: int  # U: hidden units per block
    blocks: int  # ⌈H / U⌉
    threads: int  # threads per block
    shared_bytes: int  # 4·U·H values of the dtype


def plan(H, B, itemsize, limits, units=None):
    """The launch plan for hidden size H and batch B, or None when nothing fits.

    ``units`` forces U (tests use it to run several blocks at toy sizes).
    """
    if units is None:
        units = -(-H // limits.resident_blocks)
    units = max(1, min(int(units), H))
    blocks = -(-H // units)
    shared = 4 * units * H * itemsize
    if blocks > limits.resident_blocks or shared > limits.shared_bytes:
        return None
    threads = min(limits.threads, 32 * (-(-(B * units) // 32)))
    return Plan(units, blocks, threads, shared)


class Persistent:
    """Runs a layer direction's steps in one cooperative kernel launch where it can."""

    name = "persistent"

    def __init__(self, device, dtype, fallback, units=None):
        self.device = backend.parse_device(device)
        self.dtype = backend.resolve_dtype(dtype)
        self.fallback = fallback
        self.units = units  # None: chosen by ``plan``
        self._kernels = None

    @property
    def kernels(self):
        if self._kernels is None:
            self._kernels = persistent_kernels.kernels_for(self.device, self.dtype)
        return self._kernels

    def plan_for(self, cell, p, B):
        """The launch plan for this call, or None: the fallback runs it."""
        if cell.name not in PERSISTENT_CELLS or p.get("w_hr") is not None:
            return None
        H = p["w_hh"].shape[1]
        return plan(H, B, self.dtype.itemsize, persistent_kernels.limits(self.device),
                    self.units)

    def runs(self, cell, p, B) -> bool:
        """Whether a call with these parameters and batch runs persistent."""
        return self.plan_for(cell, p, B) is not None

    # ----------------------------------------------------------------- forward
    def forward(self, cell, p, x, state0, inputs, reverse=False):
        T, B, I = x.shape
        launch = self.plan_for(cell, p, B)
        masked = any(v is not None for k, v in inputs.items() if k != "valid")
        if launch is None or masked:  # the regularisers' masks: the per-step loop
            return self.fallback.forward(cell, p, x, state0, inputs, reverse)
        xp = xp_of(x)
        H = p["w_hh"].shape[1]
        dims = Dims(I, H, 0)
        xg = filled(xp, cell.input_bias(p), (T, B, 4 * H), x.dtype)
        gemm(x.reshape(T * B, -1), p["w_ih"], xg.reshape(T * B, -1), transpose_b=True, beta=1.0)
        saved = {"h": xp.empty((T, B, H), x.dtype), "c": xp.empty((T, B, H), x.dtype),
                 "gates": xp.empty((T, B, 4 * H), x.dtype),
                 "tanh_c": xp.empty((T, B, H), x.dtype)}
        h0, c0 = (xp.ascontiguousarray(s) for s in state0)
        valid = inputs.get("valid")
        self._launch("forward", cell, launch, T, B, H, reverse, xg,
                     xp.ascontiguousarray(p["w_hh"]), h0, c0, self._valid(valid, T, B),
                     saved["h"], saved["c"], saved["gates"], saved["tanh_c"])
        last = time_order(T, reverse)[-1]
        out = saved["h"] if valid is None else saved["h"] * valid
        return (out, (saved["h"][last], saved["c"][last]),
                LayerCache(x, inputs, reverse, state0, saved, dims))

    # ----------------------------------------------------------------- backward
    def backward(self, cell, p, cache, dout, dstate, record=None, need_dx=True,
                 interventions=None, dstates_all=None):
        x, inputs, reverse, state0, saved, dims = cache
        T, B, _ = x.shape
        launch = self.plan_for(cell, p, B)
        masked = any(v is not None for k, v in inputs.items() if k != "valid")
        if launch is None or masked or record is not None or interventions is not None \
                or dstates_all is not None:
            return self.fallback.backward(cell, p, cache, dout, dstate, record, need_dx,
                                          interventions, dstates_all)
        xp = xp_of(dout)
        H = dims.hidden
        valid = inputs.get("valid")
        dh = dout * valid if valid is not None else xp.array(dout, copy=True, order="C")
        dh = xp.ascontiguousarray(dh)
        dh[time_order(T, reverse)[-1]] += dstate[0]
        dc = xp.array(dstate[1], copy=True, order="C")
        dxg = xp.empty((T, B, 4 * H), dout.dtype)
        dh0 = xp.empty((B, H), dout.dtype)
        c0 = xp.ascontiguousarray(state0[1])
        self._launch("backward", cell, launch, T, B, H, reverse,
                     xp.ascontiguousarray(p["w_hh"]), saved["gates"], saved["c"],
                     saved["tanh_c"], c0, self._valid(valid, T, B), dh, dc, dxg, dh0)
        db = dxg.sum(axis=(0, 1))
        grads = cell.weight_grads(p, saved, {"dxg": dxg},
                                  _states_before_each_step(saved["h"], state0, reverse), db)
        grads["w_ih"] = sum_outer(dxg, x)
        grads["b_ih"] = db
        dx = (dxg.reshape(T * B, -1) @ p["w_ih"]).reshape(T, B, -1) if need_dx else None
        return dx, (dh0, dc), grads

    # ----------------------------------------------------------------- launches
    @staticmethod
    def _valid(valid, T, B):
        """The lengths mask as a (T, B) bool array, or a null pointer."""
        if valid is None:
            return None
        return xp_of(valid).ascontiguousarray(valid.reshape(T, B))

    def _launch(self, which, cell, launch, T, B, H, reverse, *arrays):
        kernel = self.kernels[f"{PERSISTENT_CELLS[cell.name]}_{which}"]
        null = np.uint64(0) if self.device.kind == "cuda" else None
        args = tuple(null if a is None else a for a in arrays)
        kernel((launch.blocks,), (launch.threads,),
               (np.int32(T), np.int32(B), np.int32(H), np.int32(launch.units),
                np.int32(bool(reverse))) + args, shared_mem=launch.shared_bytes)
