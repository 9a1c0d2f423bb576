"""``adding``: the adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

Input at step t is (v_t, m_t) with v_t ~ U(0, 1) and a marker m_t that is 1 at exactly two
steps, one drawn from the first half and one from the second half of the T steps. The
target is the sum of the two marked values, read from the top layer at t = T−1 through a
linear readout, with loss MSE. Always predicting the mean (1) scores Var(v_a + v_b) = 2/12
≈ 0.167: the plateau. Solving it needs the first marked value to survive ~T/2 steps of
BPTT. Claim: LSTM and GRU get well below the plateau, a tanh RNN stays on it. The LSTM
runs twice: PyTorch's initialisation, and with forget-gate bias +1 (``lstm_fb1``).
"""

from __future__ import annotations

import numpy as np

from ..modules import Recurrent
from .common import (
    Report,
    SequenceModel,
    fit,
    format_table,
    mean_sd,
    parallel_map,
    pyplot,
    save_figure,
    verdicts,
)
from .stats import welch

PLATEAU = 2.0 / 12.0


def adding_batch(rng, T, batch, dtype=np.float32):
    """(x (T, B, 2), y (B,)) of the adding problem."""
    x = np.zeros((T, batch, 2), dtype=dtype)
    x[:, :, 0] = rng.uniform(0, 1, (T, batch))
    first = rng.integers(0, T // 2, batch)
    second = rng.integers(T // 2, T, batch)
    cols = np.arange(batch)
    x[first, cols, 1] = 1
    x[second, cols, 1] = 1
    y = x[first, cols, 0] + x[second, cols, 0]
    return x, y.astype(dtype)


# the experiment's arms: label -> (registered cell, options)
CELLS = {"lstm": ("lstm", {}), "lstm_fb1": ("lstm", {"forget_bias": 1.0}), "gru": ("gru", {}),
         "rnn_tanh": ("rnn_tanh", {})}


def train_one(cell, T, hidden, steps, batch, lr, seed, eval_every):
    name, options = CELLS[cell]
    model = SequenceModel(Recurrent(name, 2, hidden, seed=seed, **options), 1, "last", seed)
    rng = np.random.default_rng(seed)
    test = adding_batch(np.random.default_rng(10_000 + seed), T, 500)

    def test_mse():
        pred = model.predict(test[0])
        return float(((pred - test[1]) ** 2).mean())

    hist = fit(model, lambda step: adding_batch(rng, T, batch), steps, lr, "adam", clip=1.0,
               evaluate_fn=test_mse, eval_every=eval_every)
    return hist


def run(quick=False, seeds=(0, 1, 2), out="experiments_out", executor=None) -> Report:
    T, hidden, steps, batch, lr = (20, 8, 30, 8, 1e-2) if quick else (100, 32, 2000, 32, 5e-3)
    eval_every = max(1, steps // 15)
    runs = parallel_map(train_one, [(cell, T, hidden, steps, batch, lr, seed, eval_every)
                                    for cell in CELLS for seed in seeds], executor)
    rows, curves, per_seed = [], {}, {}
    for i, cell in enumerate(CELLS):
        hists = runs[i * len(seeds):(i + 1) * len(seeds)]
        curves[cell] = [h.evals for h in hists]
        finals = per_seed[cell] = [h.evals[-1][1] for h in hists]
        below = sum(f < PLATEAU / 2 for f in finals)
        rows.append([cell, mean_sd(finals, "{:.4f}"), f"{min(finals):.4f}",
                     f"{below}/{len(seeds)}"])
    # At quick size (T=20, 8 units, 30 steps) every cell is still on the plateau (test MSE
    # 0.15–0.21 for all four arms, seeds 0–7, in no stable order): the claim (gated cells
    # get well below it, the tanh RNN does not) needs the full run, and is not checked.
    verdict = verdicts(
        "gated cells (LSTM, GRU) get well below the plateau, the tanh RNN does not", seeds,
        lambda: [welch(f"{cell} below the tanh RNN", cell, per_seed[cell], "rnn_tanh",
                       per_seed["rnn_tanh"]) for cell in CELLS if cell != "rnn_tanh"])
    table = format_table(["cell", "test MSE (mean ± sd)", "best seed",
                          "seeds < plateau/2"], rows)
    head = (f"T={T} hidden={hidden} steps={steps} batch={batch} Adam lr={lr} clip=1.0; "
            f"plateau (predict 1) = {PLATEAU:.4f}")
    return Report("adding", f"{head}\n{table}", [plot_curves(curves, out, T)], list(seeds),
                  rows,
                  verdicts=verdict)


def plot_curves(curves, out, T, title=None, name="adding.png"):
    """Test MSE against step, one line per seed, one colour per arm; saved as ``name``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (cell, runs) in enumerate(curves.items()):
        for j, evals in enumerate(runs):
            steps, mse = zip(*evals)
            ax.plot(steps, mse, color=f"C{i}", alpha=0.8, label=cell if j == 0 else None)
    ax.axhline(PLATEAU, color="k", ls=":", label="predict 1 (0.167)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("test MSE")
    ax.set_title(title or f"adding problem, T={T} (one line per seed)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, name)
