"""``dropout``: dropout between layers against overfitting (Zaremba, Sutskever & Vinyals 2014).

Zaremba et al. apply dropout only to the non-recurrent connections of a stacked LSTM (the
output of each layer on its way to the next, never h_{t−1} → h_t) and report that it
closes most of the train/validation gap of a large model. rnncore does exactly that:
``dropout=p`` multiplies every layer's output but the last by a mask of 1/(1−p) or 0;
``dropout_mode="standard"`` draws a fresh mask per time step, ``"variational"`` one mask
per sequence reused at every step (Gal & Ghahramani 2016).

Scaled down: a 2-layer LSTM char-LM, large for a small slice of the ``words`` corpus, so
that it overfits within the step budget; p ∈ {0, 0.3, 0.5} × {standard, variational}. We
report train and validation bpc, both measured in eval mode (no dropout), and the gap.
"""

from __future__ import annotations

import numpy as np

from .common import (
    LMData,
    Report,
    format_table,
    lm_bpc,
    mean_sd,
    new_lm,
    parallel_map,
    pyplot,
    save_figure,
    train_lm,
    verdicts,
)
from .stats import welch

SETTINGS = ((0.0, "standard"), (0.3, "standard"), (0.5, "standard"), (0.3, "variational"),
            (0.5, "variational"))


def one_run(data, p, mode, hidden, steps, lr, seed):
    """(train bpc, validation bpc), both in eval mode, for one seed."""
    model = new_lm(data, embed_size=hidden, hidden_size=hidden, num_layers=2, cell="lstm",
                   seed=seed, dropout=p, dropout_mode=mode)
    _, val = train_lm(data, model, steps, lr, "adam", clip=1.0, eval_windows=50)
    return lm_bpc(model, data.train, 50), val


def run(quick=False, seeds=(0, 1, 2), out="experiments_out", executor=None) -> Report:
    if quick:
        hidden, steps, batch, seq, chars, settings = 16, 6, 4, 16, 4_000, SETTINGS[:2]
    else:
        hidden, steps, batch, seq, chars, settings = 128, 800, 16, 50, 16_000, SETTINGS
    lr = 3e-3
    data = LMData.make(chars, batch, seq, val_fraction=0.25)
    runs = parallel_map(one_run, [(data, p, mode, hidden, steps, lr, seed)
                                  for p, mode in settings for seed in seeds], executor)
    rows, results, gaps = [], {}, {}
    for i, (p, mode) in enumerate(settings):
        train, val = zip(*runs[i * len(seeds):(i + 1) * len(seeds)])
        gap = np.subtract(val, train)
        label = "none" if p == 0 else f"{p:g} {mode}"
        gaps[label] = gap
        results[label] = (np.mean(train), np.mean(val), np.std(train), np.std(val))
        rows.append([label, mean_sd(train), mean_sd(val), mean_sd(gap)])
    # At quick size (16 units, 6 steps) no model has begun to overfit (train and validation
    # bpc both ≈ 4.4, the gap ±0.007 with either sign over seeds 0–7), so the claim
    # (dropout closes the gap) is not checked there.
    verdict = verdicts(
        "dropout between layers narrows the train/validation gap", seeds,
        lambda: [welch(f"dropout {label} narrows the gap", label, gap, "none", gaps["none"])
                 for label, gap in gaps.items() if label != "none"])
    table = format_table(["dropout", "train bpc", "val bpc", "gap (val − train)"], rows)
    n_train = data.train.windows * batch * seq
    head = (f"char-LM, 2-layer LSTM H=E={hidden}, 'words' slice: {n_train} train chars, "
            f"{data.val.windows * batch * seq} val chars; {steps} steps "
            f"(~{steps * batch * seq / n_train:.0f} epochs), batch {batch}×{seq}, Adam "
            f"lr={lr}, clip 1.0, float32; bpc in eval mode")
    return Report("dropout", f"{head}\n{table}", [_plot(results, data.floor_bpc, out)],
                  list(seeds), rows, verdicts=verdict)


def _plot(results, floor, out):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = list(results)
    x = np.arange(len(labels))
    tr = [results[k][0] for k in labels]
    va = [results[k][1] for k in labels]
    ax.bar(x - 0.2, tr, 0.4, yerr=[results[k][2] for k in labels], label="train", capsize=3)
    ax.bar(x + 0.2, va, 0.4, yerr=[results[k][3] for k in labels], label="validation",
           capsize=3)
    ax.axhline(floor, color="k", ls=":", label="entropy floor")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("bpc (eval mode)")
    ax.set_title("dropout between layers: train vs validation", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, "dropout.png")
