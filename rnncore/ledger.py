"""A gradient-flow ledger during training (``python -m rnncore.train --gradflow-every N``).

Every N training steps the step's own backward runs with a ``GradFlowRecorder``
(``rnncore.gradflow``): nothing is recomputed, and recording does not change the
arithmetic (the training losses are bitwise those of a run without it; tested). The
ledger keeps, per recorded step,

- ``h``: ‖∂L/∂h_t‖ per layer and time step (forward direction), (layers, T);
- ``saturation``: the fraction of saturated sigmoid gates per layer (LSTM i, f, o; GRU
  r, z; NaN for the Elman RNN), from that step's forward pass;

and writes ``gradflow.npz`` (arrays ``steps`` (n,), ``h`` (n, L, T), ``saturation``
(n, L)) and ``gradflow.png`` (per layer, recorded step × time image of log₁₀‖∂L/∂h_t‖,
and the saturation against step) into the run directory at every evaluation. Off (N = 0),
no recorder is made. A resumed run starts a new ledger.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .gradflow import GradFlowRecorder, gate_saturation


class Ledger:
    def __init__(self, every: int):
        self.every = every
        self.steps, self.h, self.saturation = [], [], []

    def recorder(self, step):
        """A recorder for the backward of training step ``step`` (0-based), or None."""
        return GradFlowRecorder() if self.every and step % self.every == 0 else None

    def add(self, step, rec, module):
        self.steps.append(step)
        self.h.append(rec.h_norms()[:, 0, :])
        self.saturation.append(gate_saturation(module).mean(axis=1))

    def arrays(self):
        T = max((h.shape[1] for h in self.h), default=0)
        h = np.full((len(self.h), len(self.h[0]) if self.h else 0, T), np.nan)
        for i, a in enumerate(self.h):
            h[i, :, :a.shape[1]] = a
        return {"steps": np.array(self.steps), "h": h,
                "saturation": np.array(self.saturation)}

    def save(self, out):
        if not self.steps or out is None:
            return
        arrays = self.arrays()
        np.savez(os.path.join(out, "gradflow.npz"), **arrays)
        plot(arrays, os.path.join(out, "gradflow.png"))


def plot(arrays, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, h, sat = arrays["steps"], arrays["h"], arrays["saturation"]
    L = h.shape[1]
    fig, axes = plt.subplots(1, L + 1, figsize=(2.8 * (L + 1), 3), squeeze=False)
    logs = np.log10(np.maximum(h, 1e-300))
    finite = logs[np.isfinite(logs)]
    vmax = finite.max() if finite.size else 0.0
    vmin = max(finite.min(), vmax - 12) if finite.size else -1.0
    for k in range(L):
        ax = axes[0, k]
        im = ax.imshow(logs[:, k, :], aspect="auto", origin="lower", cmap="viridis",
                       vmin=vmin, vmax=vmax, interpolation="nearest",
                       extent=(-0.5, h.shape[2] - 0.5, steps[0] - 0.5,
                               steps[-1] + 0.5 if len(steps) > 1 else steps[0] + 0.5))
        ax.set_title(f"layer {k + 1}: log10 |dL/dh_t|", fontsize=8)
        ax.set_xlabel("t in window", fontsize=7)
        ax.set_ylabel("training step", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes[0, L - 1], shrink=0.8)
    ax = axes[0, L]
    for k in range(L):
        if np.isfinite(sat[:, k]).any():
            ax.plot(steps, sat[:, k], marker=".", label=f"layer {k + 1}")
    ax.set_xlabel("training step", fontsize=7)
    ax.set_ylabel("saturated gates", fontsize=7)
    ax.set_title("gate saturation", fontsize=8)
    ax.tick_params(labelsize=6)
    if L and not math.isnan(np.nanmax(sat) if np.isfinite(sat).any() else math.nan):
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
