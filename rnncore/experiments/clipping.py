"""``clipping``: gradient-norm clipping against exploding gradients (Pascanu et al. 2013).

Pascanu, Mikolov & Bengio train tanh RNNs with SGD and rescale the gradient whenever its
norm exceeds a threshold, g ← g · clip / ‖g‖ (here ``rnncore.optim.clip_grad_norm``), and
report better char-level results on Penn Treebank (1.50 → 1.42 bpc). Scaled down: a
char-LM with a one-layer tanh RNN whose recurrent matrix is an orthogonal matrix times a
gain > 1, so that ∂h_t/∂h_{t−1} = diag(1 − h_t²) W can amplify gradients; plain SGD at a
learning rate (three rates), with and without clipping at 1.0. We report validation bpc, how often
the raw gradient norm exceeded the threshold, its largest value, and divergences (a
non-finite loss stops a run; its bpc is then NaN).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .common import (
    LMData,
    Report,
    format_table,
    mean_sd,
    new_lm,
    parallel_map,
    pyplot,
    save_figure,
    train_lm,
    verdicts,
)
from .stats import welch

THRESHOLD = 1.0  # the clipping threshold


def one_run(data, gain, lr, clip, hidden, steps, seed):
    """(val bpc, fraction of steps with ‖g‖ > 1, max ‖g‖, diverged?, training losses)."""
    model = new_lm(data, embed_size=hidden, hidden_size=hidden, num_layers=1, cell="rnn_tanh",
                   init="orthogonal", seed=seed)
    model.rnn.params["weight_hh_l0"] *= gain
    hist, val = train_lm(data, model, steps, lr, "sgd", clip=clip)
    norms = np.asarray(hist.grad_norms)
    return (val, float((norms > THRESHOLD).mean()), float(norms.max()),
            hist.diverged_at is not None, hist.losses)


def run(quick=False, seeds=(0, 1, 2), out="experiments_out", executor=None) -> Report:
    if quick:
        hidden, steps, batch, seq, chars, gains, lrs = 16, 8, 8, 16, 20_000, (3.0,), (1.0,)
    else:
        hidden, steps, batch, seq, chars = 128, 500, 32, 50, 200_000
        gains, lrs = (1.0, 3.0), (0.5, 1.0, 2.0)
    data = LMData.make(chars, batch, seq)
    grid = list(itertools.product(gains, lrs, (None, THRESHOLD)))
    runs = parallel_map(one_run, [(data, gain, lr, clip, hidden, steps, seed)
                                  for gain, lr, clip in grid for seed in seeds], executor)
    rows, curves, peaks, per_seed = [], {}, [], {}
    for i, (gain, lr, clip) in enumerate(grid):
        vals, over, peak, diverged, losses = zip(*runs[i * len(seeds):(i + 1) * len(seeds)])
        # a diverged run (NaN) counts as the worst bpc any run reached, not as missing
        per_seed[(gain, lr, clip)] = vals
        for seed, curve in zip(seeds, losses):
            curves[(gain, lr, clip, seed)] = curve
        if gain > 1:
            peaks += peak
        finite = [v for v in vals if math.isfinite(v)]
        rows.append([f"{gain:g}", f"{lr:g}", "none" if clip is None else f"{clip:g}",
                     mean_sd(finite) if finite else "—", f"{sum(diverged)}/{len(seeds)}",
                     f"{np.mean(over):.2f}", f"{np.max(peak):.3g}"])
    # The claim (clipping gives better bpc and no divergence) is not stable at quick size:
    # in 8 steps nothing diverges and the clipped runs, taking shorter steps, end higher
    # (seeds 0–7). Its premise is: a recurrent gain > 1 drives the raw gradient norm above
    # the threshold (peaks 2.3–20 at quick size, seeds 0–7).
    checks = [(f"with W_hh gain > 1 the raw gradient norm exceeds the threshold {THRESHOLD:g} "
               f"in every run (smallest peak {min(peaks):.3g})" if peaks else
               "no run with W_hh gain > 1", bool(peaks) and min(peaks) > THRESHOLD)]
    def comparisons():
        worst = max(v for vals in per_seed.values() for v in vals if math.isfinite(v))
        clean = {k: [v if math.isfinite(v) else worst for v in vals]
                 for k, vals in per_seed.items()}
        return [welch(f"clipping helps at gain {g:g}, lr {lr:g}", "clipped",
                      clean[(g, lr, THRESHOLD)], "unclipped", clean[(g, lr, None)])
                for g in gains if g > 1 for lr in lrs]

    verdict = verdicts("clipping gives a better model when gradients explode (gain > 1)",
                       seeds, comparisons)
    table = format_table(["W_hh gain", "SGD lr", "clip", "val bpc", "diverged",
                          "steps ‖g‖>1", "max ‖g‖"], rows)
    head = (f"char-LM on 'words' ({chars} chars, floor {data.floor_bpc:.3f} bpc), tanh RNN "
            f"H={hidden}, W_hh = gain·orthogonal, plain SGD, {steps} steps, "
            f"batch {batch}×{seq}, float32")
    return Report("clipping", f"{head}\n{table}", [_plot(curves, lrs, out)], list(seeds), rows,
                  checks, verdict)


def _plot(curves, lrs, out):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(lrs), figsize=(4 * len(lrs), 3.4), sharey=True,
                             squeeze=False)
    colors = {}
    for (gain, lr, clip, seed), losses in curves.items():
        ax = axes[0, lrs.index(lr)]
        color = colors.setdefault((gain, clip), f"C{len(colors)}")
        first = seed == min(s for g, r, c, s in curves if (g, r, c) == (gain, lr, clip))
        label = f"gain {gain:g}, clip {clip if clip else 'none'}" if first else None
        smooth = np.convolve(np.asarray(losses) / math.log(2), np.ones(10) / 10, mode="valid")
        ax.plot(smooth, color=color, alpha=0.7, lw=1, label=label)
        ax.set_title(f"SGD lr {lr:g}", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("training step")
        ax.set_ylim(0, 8)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("training bpc (10-step mean)")
    fig.suptitle("tanh RNN char-LM, with and without clipping (one line per seed)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, "clipping.png")
