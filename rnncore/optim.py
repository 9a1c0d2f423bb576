"""Optimizers, gradient clipping and learning-rate schedules for dicts of arrays.

Parameters and gradients are dicts ``name -> array`` (NumPy or CuPy); updates happen in
place, so a module that owns the arrays sees them change. With gradient g, parameter p,
step t (counted from 1) and learning rate η:

    SGD       v ← μ v + g;   p ← p − η (g + μ v)  [Nesterov]   or   p ← p − η v
    Adam      m ← β₁ m + (1−β₁) g;  v ← β₂ v + (1−β₂) g²
              p ← p − η m̂ / (√v̂ + ε),  m̂ = m / (1−β₁ᵗ),  v̂ = v / (1−β₂ᵗ)
    AdamW     Adam, with the decay applied to p directly: p ← p − η λ p   (decoupled)
    RMSprop   v ← α v + (1−α) g²;  p ← p − η g / (√v + ε)
    Adagrad   s ← s + g²;  p ← p − η g / (√s + ε)

Weight decay λ is L2 (g ← g + λ p) for every optimizer but AdamW.

An optimizer's state (the slot arrays m, v, … and the step count) round-trips through
``state_dict`` / ``load_state_dict`` as host arrays plus JSON-able scalars, so it can
live in a checkpoint and move between devices.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from . import backend

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "cosine")


class Optimizer(abc.ABC):
    """Base class: per-parameter slot arrays, a step counter, and in-place updates."""

    slots: tuple = ()

    def __init__(self, params: dict, weight_decay=0.0):
        self.weight_decay = float(weight_decay)
        self.t = 0
        self.state = {name: {slot: backend.xp_of(p).zeros_like(p) for slot in self.slots}
                      for name, p in params.items()}

    def step(self, params: dict, grads: dict, lr: float):
        """One update of every parameter from its gradient, in place."""
        self.t += 1
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay and not self.decoupled:
                g = g + self.weight_decay * p
            self.update(p, g, self.state[name], lr)

    decoupled = False

    @abc.abstractmethod
    def update(self, p, g, slots, lr):
        """Update parameter ``p`` in place from its gradient ``g`` and its slot arrays."""

    def hyperparameters(self) -> dict:
        return {"weight_decay": self.weight_decay}

    # ------------------------------------------------------------------ serialization
    def state_dict(self):
        """(host copies of the slots keyed "<param>/<slot>", JSON-able scalars)."""
        arrays = {f"{name}/{slot}": np.array(backend.to_numpy(value))
                  for name, slots in self.state.items() for slot, value in slots.items()}
        return arrays, {"kind": self.kind, "t": self.t, **self.hyperparameters()}

    def load_state_dict(self, arrays: dict, scalars: dict, device):
        """Restore slots (moved to ``device``) and the step count; checks names and shapes."""
        if scalars.get("kind") != self.kind:
            raise ValueError(f"optimizer state is for {scalars.get('kind')!r}, "
                             f"not {self.kind!r}")
        for name, slots in self.state.items():
            for slot, current in slots.items():
                key = f"{name}/{slot}"
                if key not in arrays:
                    raise ValueError(f"optimizer state lacks {key}")
                if tuple(arrays[key].shape) != tuple(current.shape):
                    raise ValueError(f"optimizer state {key} has shape "
                                     f"{tuple(arrays[key].shape)}, expected "
                                     f"{tuple(current.shape)}")
                slots[slot] = backend.to_device(arrays[key], device, current.dtype)
        self.t = int(scalars["t"])


class SGD(Optimizer):
    kind = "sgd"
    slots = ("velocity",)

    def __init__(self, params, momentum=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(params, weight_decay)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def update(self, p, g, slots, lr):
        if self.momentum == 0.0:
            p -= lr * g
            return
        v = slots["velocity"]
        v *= self.momentum
        v += g
        p -= lr * (g + self.momentum * v) if self.nesterov else lr * v

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum,
                "nesterov": self.nesterov}


class Adam(Optimizer):
    kind = "adam"
    slots = ("m", "v")

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, weight_decay)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)

    def update(self, p, g, slots, lr):
        xp = backend.xp_of(p)
        if self.decoupled and self.weight_decay:
            p -= (lr * self.weight_decay) * p
        m, v = slots["m"], slots["v"]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * (g * g)
        bias1 = 1 - self.beta1 ** self.t
        bias2 = 1 - self.beta2 ** self.t
        p -= (lr / bias1) * m / (xp.sqrt(v / bias2) + self.eps)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": [self.beta1, self.beta2],
                "eps": self.eps}


class AdamW(Adam):
    kind = "adamw"
    decoupled = True


class RMSprop(Optimizer):
    kind = "rmsprop"
    slots = ("square_avg",)

    def __init__(self, params, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(params, weight_decay)
        self.alpha, self.eps = float(alpha), float(eps)

    def update(self, p, g, slots, lr):
        xp = backend.xp_of(p)
        v = slots["square_avg"]
        v *= self.alpha
        v += (1 - self.alpha) * (g * g)
        p -= lr * g / (xp.sqrt(v) + self.eps)

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha": self.alpha, "eps": self.eps}


class Adagrad(Optimizer):
    kind = "adagrad"
    slots = ("sum_sq",)

    def __init__(self, params, eps=1e-10, weight_decay=0.0):
        super().__init__(params, weight_decay)
        self.eps = float(eps)

    def update(self, p, g, slots, lr):
        xp = backend.xp_of(p)
        s = slots["sum_sq"]
        s += g * g
        p -= lr * g / (xp.sqrt(s) + self.eps)

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps}


def make_optimizer(kind, params, *, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
                   eps=1e-8, alpha=0.99, weight_decay=0.0) -> Optimizer:
    """Build an optimizer by name (one of ``OPTIMIZERS``)."""
    if kind == "sgd":
        return SGD(params, momentum, nesterov, weight_decay)
    if kind in ("adam", "adamw"):
        cls = Adam if kind == "adam" else AdamW
        return cls(params, betas, eps, weight_decay)
    if kind == "rmsprop":
        return RMSprop(params, alpha, eps, weight_decay)
    if kind == "adagrad":
        return Adagrad(params, eps, weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")


def clip_grad_norm(grads: dict, max_norm: float | None):
    """Global-norm clipping: g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)) over all gradients.

    Returns ‖g‖₂ before clipping as a 0-d device array (no host synchronisation: the
    scale is computed and applied on the device). ``max_norm`` None or ≤ 0: no clipping.
    """
    values = list(grads.values())
    xp = backend.xp_of(values[0])
    norm = xp.sqrt(sum((g * g).sum() for g in values))
    if max_norm and max_norm > 0:
        scale = xp.minimum(1.0, max_norm / (norm + 1e-6)).astype(values[0].dtype)
        for g in values:
            g *= scale
    return norm


class Schedule:
    """Learning rate as a pure function of the step (so checkpoints need no state).

        warm-up (step < W):  η · (step + 1) / W
        constant:            η
        step:                η · γ^⌊(step − W) / S⌋
        cosine:              η_min + (η − η_min) · ½ (1 + cos(π · min(1, (step − W)/(N − W))))
    """

    def __init__(self, kind="constant", lr=1e-3, *, warmup=0, total_steps=1, step_size=1000,
                 gamma=0.5, min_lr=0.0):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        self.kind, self.lr, self.warmup = kind, float(lr), int(warmup)
        self.total_steps, self.step_size = max(1, int(total_steps)), max(1, int(step_size))
        self.gamma, self.min_lr = float(gamma), float(min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        after = step - self.warmup
        if self.kind == "step":
            return self.lr * self.gamma ** (after // self.step_size)
        if self.kind == "cosine":
            progress = min(1.0, after / max(1, self.total_steps - self.warmup))
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr
