"""Interventions inside backward: deliberately *modified* gradients, not the gradient.

Each of these changes what BPTT computes, step by step, inside the reference driver's
backward loop (``rnncore.drivers.python_loop``). The result is no longer ∂L/∂θ; it is a
different vector field that some papers found trains better. Gradient checks do not
apply to a module with any of them on. All are off by default, and off means the plain
backward, bitwise (tested).

- ``gate_clip`` (c > 0; Graves 2013, "Generating sequences with RNNs", §4): at every
  step, every element of the gate pre-activation gradient ∂z_t (``grads["dxg"]``) is
  clipped to [−c, c] *before* it is sent back through W_hh, so the clipped value is what
  reaches h_{t−1}, ∂W_hh, ∂W_ih, the biases and ∂x_t. (Graves clips element-wise; the
  norm of every step's ∂z_t is therefore at most c·√(G·H) per example.)
- ``h_detach`` (p ∈ [0, 1]; Kanuparthi et al. 2019, "h-detach"): at every step, with
  probability p (one draw per step for the whole batch, from the module's generator),
  the gradient through h_{t−1} into the gates of step t is dropped: ∂h_{t−1} keeps only
  what reaches it from the loss at t−1 (and from later layers), while the cell path
  ∂c_{t−1} = ∂c_t ⊙ f_t + … is kept. Two-state (LSTM) cells only. ∂W_hh still uses
  the step's ∂z_t (the detached h_{t−1} is still the value the gates saw).
- ``truncate`` (k₂ ≥ 1; 0 = off): truncation inside the window. Counting back from the
  window's last step (in the direction's processing order), the state gradient is cut
  every k₂ steps, so no gradient travels more than k₂ steps back through the recurrence:
  each chunk of k₂ steps is backpropagated as if its initial state were a constant
  (the first chunk still passes its gradient to the initial state). k₂ ≥ T is the plain
  backward. Tested against running the chunks as separate forward/backward calls.
- ``grad_noise`` (σ ≥ 0): at every step, N(0, σ²) noise (the module's generator) is added
  to every element of ∂z_t before it is sent back, so it propagates to earlier steps.

``gate_clip`` and ``grad_noise`` correct ∂h_{t−1} by (∂z_t' − ∂z_t) W_hh after the cell's
step, so they need cells whose recurrent gradient is ∂z_t W_hh (LSTM, Elman RNN), as
does ``h_detach``'s bookkeeping; ``truncate`` works with any cell. When any is on the
module runs the reference driver (the compiled, graph and persistent drivers do not
implement them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import to_device, xp_of

RECURRENT_DXG = ("LSTM", "RNN")  # families whose step adds ∂z_t W_hh into ∂h_{t−1}


@dataclass
class Interventions:
    gate_clip: float = 0.0  # 0 (or inf): off
    h_detach: float = 0.0
    truncate: int = 0
    grad_noise: float = 0.0
    rng: object = None  # the module's rnncore.backend.Generator

    @property
    def active(self) -> bool:
        return bool((self.gate_clip and np.isfinite(self.gate_clip)) or self.h_detach
                    or self.truncate or self.grad_noise)

    @classmethod
    def from_options(cls, options, rng):
        return cls(options.gate_clip, options.h_detach, options.truncate, options.grad_noise,
                   rng)

    def check(self, cell):
        """Raise ValueError when an intervention does not apply to ``cell``."""
        if (self.gate_clip or self.grad_noise or self.h_detach) and \
                cell.family not in RECURRENT_DXG:
            raise ValueError(f"gate_clip, grad_noise and h_detach need an LSTM or Elman RNN "
                             f"cell; the {cell.name} cell's recurrent gradient is not "
                             "∂z W_hh")
        if self.h_detach and len(cell.state) < 2:
            raise ValueError("h_detach keeps the cell path: it needs a cell with a cell "
                             f"state (the LSTM), not {cell.name}")

    # ---------------------------------------------------------------- in the loop
    def before_step(self, k, T, dstate_prev):
        """Called before step k (processing index) of T; returns what ``after_step``
        needs: a copy of ∂h_{t−1} as it stands when the step will be detached or cut."""
        self._cut = bool(self.truncate) and k > 0 and (T - k) % self.truncate == 0
        self._detach = bool(self.h_detach) and self.rng.numpy.random() < self.h_detach
        if self._cut or self._detach:
            return dstate_prev[0].copy()
        return None

    def after_step(self, p, dstate, grads, dstate_prev, before, valid):
        """Modify the step's ∂z (``grads["dxg"]``) and the gradient it sent back."""
        dxg = grads["dxg"]
        xp = xp_of(dxg)
        if self.gate_clip or self.grad_noise:
            old = dxg.copy()
            if self.grad_noise:
                noise = self.rng.standard_normal(dxg.shape, batch_axis=0) * self.grad_noise
                dxg += to_device(noise.astype(dxg.dtype), _device_of(dxg))
            if self.gate_clip and np.isfinite(self.gate_clip):
                xp.clip(dxg, -self.gate_clip, self.gate_clip, out=dxg)
            delta = dxg - old
            if not self._detach and not self._cut and bool((delta != 0).any()):
                dstate_prev[0][...] += delta @ p["w_hh"]
        if self._cut:
            dstate_prev[0][...] = before
            for d in dstate_prev[1:]:
                d[...] = 0
        elif self._detach:
            # keep only what ∂h_{t−1} held before the step, and the ∂h carried past a
            # padded step (rows where the step did not run)
            carried = 0 if valid is None else dstate[0] * (1 - valid)
            dstate_prev[0][...] = before + carried


def _device_of(a):
    return "cpu" if isinstance(a, np.ndarray) else "cuda"
