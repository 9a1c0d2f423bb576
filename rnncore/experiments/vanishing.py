"""``vanishing``: how ‖∂L/∂h_{T−1−k}‖ / ‖∂L/∂h_{T−1}‖ decays with k (Pascanu et al. 2013).

With a loss at the last step only, BPTT gives ∂L/∂h_{t−1} = (∂h_t/∂h_{t−1})ᵀ ∂L/∂h_t with

    linear RNN  h_t = W h_{t−1} + U x_t:       ∂h_t/∂h_{t−1} = W
    tanh RNN    h_t = tanh(W h_{t−1} + U x_t): ∂h_t/∂h_{t−1} = diag(1 − h_t²) W

so for W = c·Q with Q orthogonal the linear ratio is exactly c^k (Qᵀ keeps norms), and for
a tanh RNN with largest singular value s the ratio is at most s^k (‖diag(1 − h²)‖ ≤ 1).

The ratios come from the engine's own backward pass (``GradFlowRecorder``). The linear RNN
is the engine's Elman cell and layer/stack machinery run with an identity pointwise
function in place of tanh (``LINEAR`` below), through the functional core
(``rnncore.stack.stack_forward`` / ``stack_backward``); the tanh RNN is the same path
with the reference pointwise. The sweep then compares RNN, LSTM and GRU stacks at their
default (PyTorch) initialisation, as layer × time heatmaps.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from ..cells.masking import carry, split_grad, store
from ..cells.rnn import RNN
from ..drivers import PythonLoop
from ..gradflow import Config, GradFlowRecorder, plot_heatmaps, run_config
from ..init import orthogonal
from ..stack import StackSpec, stack_backward, stack_forward
from .common import Report, format_table, pyplot, save_figure


def _linear_forward(xg, hg, h_prev, valid, nonlinearity, out=None):
    h, h_new = out or (None, None)
    h_new = store(h_new, xg + hg)
    h = h_new.copy() if h is None else store(h, h_new)
    return carry(valid, h, h_prev), h_new


def _linear_backward(dh, h_new, valid, nonlinearity, out=None):
    da_out, carried_out = out or (None, None)
    da, carried = split_grad(valid, dh)
    return store(da_out, da), None if carried is None else store(carried_out, carried)


# The Elman cell's pointwise interface with φ(a) = a: a linear RNN on the engine's path.
LINEAR = SimpleNamespace(name="linear", rnn_forward=_linear_forward,
                         rnn_backward=_linear_backward)
LINEAR_CELL = RNN("linear", reference=LINEAR)  # not registered: this experiment's own


def recurrence_ratios(w_hh, nonlinearity="linear", T=60, batch=4, input_scale=1.0, seed=0,
                      dtype=np.float64):
    """r_k = ‖∂L/∂h_{T−1−k}‖ / ‖∂L/∂h_{T−1}‖, k = 0..T−1, for a one-layer Elman RNN with
    recurrent matrix ``w_hh`` and a random linear loss at the last step, measured by the
    engine's backward pass."""
    H = w_hh.shape[0]
    rng = np.random.default_rng(seed)
    cell = LINEAR_CELL if nonlinearity == "linear" else RNN(nonlinearity)
    spec = StackSpec(cell, H, H, 1, 1)
    params = {"weight_ih_l0": (input_scale / np.sqrt(H)) * rng.standard_normal((H, H)),
              "weight_hh_l0": w_hh, "bias_ih_l0": np.zeros(H), "bias_hh_l0": np.zeros(H)}
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = rng.standard_normal((T, batch, H)).astype(dtype)
    h0 = np.zeros((1, batch, H), dtype=dtype)
    driver = PythonLoop()
    out, _, cache = stack_forward(spec, driver, params, x, (h0,))
    dout = np.zeros_like(out)
    dout[-1] = rng.standard_normal((batch, H))
    rec = GradFlowRecorder()
    stack_backward(spec, driver, params, cache, dout, (np.zeros_like(h0),), recorder=rec)
    norms = rec.h_norms()[0, 0]
    return norms[::-1] / norms[-1]


def scaled_orthogonal(H, scale, seed):
    return scale * orthogonal(np.random.default_rng(seed), (H, H))


def run(quick=False, seeds=(0,), out="experiments_out", executor=None) -> Report:
    """``executor`` is accepted for a uniform interface; this experiment takes seconds."""
    T, H = (20, 8) if quick else (60, 64)
    seed = seeds[0]
    k = np.arange(T)
    rows, curves, checks = [], {"linear": [], "tanh": []}, []
    for c in (0.8, 0.9, 1.0, 1.1):
        r = recurrence_ratios(scaled_orthogonal(H, c, seed), "linear", T, seed=seed)
        err = float(np.max(np.abs(r / c ** k - 1)))
        curves["linear"].append((c, r))
        checks.append((f"linear RNN, c={c}: ratio = c^k (max error {err:.1e})", err < 1e-10))
        rows.append(["linear", f"c={c}", f"{r[-1]:.3e}", f"{c ** (T - 1):.3e}",
                     f"{err:.1e}", "ratio = c^k" + (" ✓" if err < 1e-10 else " ✗")])
    for s in (0.5, 0.9, 1.0, 1.5, 3.0):
        r = recurrence_ratios(scaled_orthogonal(H, s, seed), "tanh", T, seed=seed)
        worst = float(np.max(r[1:] / s ** k[1:]))
        curves["tanh"].append((s, r))
        if s < 1:
            checks.append((f"tanh RNN, s={s}: ratio <= s^k (max r/s^k {worst:.2e})",
                           worst <= 1 + 1e-12))
        verdict = ("ratio ≤ s^k" + (" ✓" if worst <= 1 + 1e-12 else " ✗")) if s < 1 \
            else f"(s ≥ 1: none) per-step {r[-1] ** (1 / (T - 1)):.3f}"
        rows.append(["tanh", f"s={s}", f"{r[-1]:.3e}", f"{s ** (T - 1):.3e}",
                     f"max r/s^k={worst:.2e}", verdict])
    # gated cells vs the Elman RNN at the default initialisation, 3-layer stacks. At quick
    # size (T=20, H=8, 2 layers) which cell keeps more gradient k steps back is not stable
    # over seeds (the tanh RNN beats both gated cells for seed 1, the LSTM for 4 and 5), so
    # only the two laws above are checked.
    depth = 2 if quick else 3
    cell_results = [(Config(cell, depth, "none", "pytorch", "zeros"),
                     run_config(Config(cell, depth, "none", "pytorch", "zeros"), T, 8, H, seed))
                    for cell in ("rnn_tanh", "lstm", "gru")]
    for c, p in cell_results:
        r = p.h[-1, 0, ::-1] / p.h[-1, 0, -1]
        curves.setdefault("cells", []).append((c.cell, r))
        rows.append([c.cell, f"L={depth} pytorch", f"{r[-1]:.3e}", "",
                     f"per-step {r[-1] ** (1 / (T - 1)):.3f}", "top layer"])
    table = format_table(["cell", "setting", f"ratio k={T - 1}", "c^k or s^k", "check",
                          "claim"], rows)
    pngs = [_plot(curves, T, H, out), save_figure_heatmaps(cell_results, out, T)]
    return Report("vanishing", f"T={T} H={H} float64\n{table}", pngs, [seed], rows, checks)


def save_figure_heatmaps(results, out, T):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "vanishing_heatmaps.png")
    plot_heatmaps(results, path, f"log10 |dL/dh_t|, loss at t={T - 1}")
    return path


def _plot(curves, T, H, out):
    plt = pyplot()
    k = np.arange(T)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for i, (c, r) in enumerate(curves["linear"]):
        axes[0].semilogy(k, r, "o", ms=2.5, color=f"C{i}", label=f"c={c}")
        axes[0].semilogy(k, c ** k, "-", lw=0.8, color=f"C{i}")
    axes[0].set_title("linear RNN, W = cQ: measured (dots), c^k (lines)", fontsize=9)
    for i, (s, r) in enumerate(curves["tanh"]):
        axes[1].semilogy(k, r, "-", color=f"C{i}", label=f"s={s}")
        if s < 1:
            axes[1].semilogy(k, s ** k, ":", color=f"C{i}")
    axes[1].set_title("tanh RNN, W = sQ: measured, s^k bound (dotted)", fontsize=9)
    for name, r in curves["cells"]:
        axes[2].semilogy(k, r, label=name)
    axes[2].set_title("top layer of 3-layer stacks, PyTorch init", fontsize=9)
    for ax in axes:
        ax.set_xlabel("k (steps back from the loss)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("|dL/dh_{T-1-k}| / |dL/dh_{T-1}|")
    axes[0].set_ylim(1e-30, 1e8)
    fig.suptitle(f"H={H}, T={T}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, "vanishing.png")
