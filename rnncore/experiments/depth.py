"""``depth``: plain vs residual stacked LSTMs on a char-LM, depths 1–8 (Wu et al. 2016).

GNMT reports that plain stacked LSTMs "work well up to 4 layers, barely with 6, very
poorly beyond 8", and that residual connections between layers fix it. Scaled down: a
char-LM (``rnncore.charlm.CharLM``) on the generated ``words`` corpus, LSTM width H with
embedding width H (so ``residual="layers"`` adds u_k to every layer's output, layer 1
included), Adam, clipping at 1, a fixed budget of steps; we report validation bits per
character for each depth, plain vs residual.

At initialisation we also measure, with the char-LM's own cross-entropy gradient and the
engine's instrumented backward, the gradient at each layer's states
G_k = (Σ_t ‖∂L/∂h_t^{(k)}‖²)^½ and report G_top / G_bottom, and split the gradient
reaching the bottom layer's input u_1 by path (``rnncore.attribution``): the share
‖part‖/‖∂L/∂u_1‖ that came through the residual skip, and through the LSTM's cell-state
path (the rest came through the hidden-state path; shares are norms, so they need not
sum to 1, while the parts themselves sum to ∂L/∂u_1 exactly).
"""

from __future__ import annotations

import numpy as np

from .common import (
    LMData,
    Report,
    format_table,
    lm_layer_gradients,
    mean_sd,
    new_lm,
    parallel_map,
    pyplot,
    save_figure,
    train_lm,
    verdicts,
)
from .stats import welch


def init_depth_ratio(data, depth, residual, hidden, seed):
    model = new_lm(data, embed_size=hidden, hidden_size=hidden, num_layers=depth, cell="lstm",
                   seed=seed, residual=residual)
    rec = lm_layer_gradients(model, *data.train.window(0))
    layers = rec.layer_norms()
    return layers[-1] / layers[0], layers


def init_paths(data, depth, residual, hidden, seed):
    """Path attribution (``rnncore.attribution``) of the bottom layer's input gradient at
    initialisation, with the char-LM's cross-entropy gradient: the share ‖part‖/‖total‖
    of the residual skip and of the LSTM's cell-state path (both directions' "/c" parts)."""
    from ..attribution import PathRecorder, paths_from
    from ..drivers import PythonLoop

    model = new_lm(data, embed_size=hidden, hidden_size=hidden, num_layers=depth, cell="lstm",
                   seed=seed, residual=residual)
    model.rnn.driver = PythonLoop("reference")  # the attribution re-runs reference steps
    model.loss(*data.train.window(0))
    rec = PathRecorder()
    model.backward(recorder=rec)
    parts = paths_from(model.rnn, rec)[0]
    total = np.linalg.norm(parts["total"])
    cell = sum(a for name, a in parts.items() if name.endswith("/c"))
    skip = np.linalg.norm(parts["skip"]) / total if "skip" in parts else 0.0
    return float(skip), float(np.linalg.norm(cell) / total)


def one_run(data, depth, residual, hidden, steps, lr, seed):
    """(G_top/G_bottom at initialisation, validation bpc after training, the bottom
    layer's skip and cell-path shares at initialisation) for one seed."""
    ratio, _ = init_depth_ratio(data, depth, residual, hidden, seed)
    skip, cell = init_paths(data, depth, residual, hidden, seed)
    model = new_lm(data, embed_size=hidden, hidden_size=hidden, num_layers=depth,
                   cell="lstm", seed=seed, residual=residual)
    return ratio, train_lm(data, model, steps, lr, "adam", clip=1.0)[1], skip, cell


def run(quick=False, seeds=(0, 1, 2), out="experiments_out", executor=None) -> Report:
    if quick:
        depths, hidden, steps, batch, seq, chars = (1, 2, 4), 16, 6, 8, 16, 20_000
    else:
        depths, hidden, steps, batch, seq, chars = (1, 2, 4, 8), 64, 300, 32, 50, 200_000
    lr = 3e-3
    data = LMData.make(chars, batch, seq)
    grid = [(residual, depth) for residual in (None, "layers") for depth in depths]
    runs = parallel_map(one_run, [(data, depth, residual, hidden, steps, lr, seed)
                                  for residual, depth in grid for seed in seeds], executor)
    rows, results, per_seed = [], {}, {}
    for i, (residual, depth) in enumerate(grid):
        ratios, vals, skips, cellp = zip(*runs[i * len(seeds):(i + 1) * len(seeds)])
        name = residual or "plain"
        per_seed[(name, depth)] = vals
        results[(name, depth)] = (np.mean(vals), np.std(vals), np.mean(ratios))
        rows.append([name, str(depth), mean_sd(vals), mean_sd(ratios, "{:.3g}"),
                     mean_sd(skips, "{:.2f}") if residual else "-", mean_sd(cellp, "{:.2f}")])
    table = format_table(["stack", "layers", "val bpc", "G_top/G_bottom at init",
                          "skip share of dL/du_1", "cell-path share"], rows)
    # At quick size (16 units, 6 steps) the bpc claim (deep plain stacks train worse) is
    # not stable over seeds, and is not checked; the gradient claim is: at 4 layers the
    # plain stack's G_top/G_bottom is 100–170 and the residual one's 0.93–1.0 (seeds 0–7).
    deepest = depths[-1]
    plain, residual = results[("plain", deepest)][2], results[("layers", deepest)][2]
    checks = [(f"at {deepest} layers the residual stack's G_top/G_bottom ({residual:.3g}) is "
               f"far below the plain stack's ({plain:.3g})", bool(residual < plain / 10))]
    deep = [d for d in depths if d >= 4]
    verdict = verdicts(
        "plain LSTM stacks get worse beyond a few layers; residual connections fix it",
        seeds, lambda: [welch(f"plain {d} layers worse than plain 1", "plain 1",
                              per_seed[("plain", 1)], f"plain {d}", per_seed[("plain", d)])
                        for d in deep] +
        [welch(f"residual beats plain at {d} layers", f"residual {d}",
               per_seed[("layers", d)], f"plain {d}", per_seed[("plain", d)]) for d in deep])
    head = (f"char-LM on 'words' ({chars} chars, floor {data.floor_bpc:.3f} bpc), LSTM "
            f"H=E={hidden}, {steps} steps, batch {batch}×{seq}, Adam lr={lr}, clip 1.0, float32")
    return Report("depth", f"{head}\n{table}", [_plot(results, depths, data.floor_bpc, out)],
                  list(seeds), rows, checks, verdict)


def _plot(results, depths, floor, out):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for i, name in enumerate(("plain", "layers")):
        label = "plain" if name == "plain" else "residual"
        mean = [results[(name, d)][0] for d in depths]
        sd = [results[(name, d)][1] for d in depths]
        a.errorbar(depths, mean, yerr=sd, marker="o", capsize=3, color=f"C{i}", label=label)
        b.semilogy(depths, [results[(name, d)][2] for d in depths], marker="o", color=f"C{i}",
                   label=label)
    a.axhline(floor, color="k", ls=":", label="entropy floor")
    a.set_xlabel("layers")
    a.set_ylabel("validation bpc (mean ± sd over seeds)")
    a.legend(fontsize=7)
    b.set_xlabel("layers")
    b.set_ylabel("G_top / G_bottom at init")
    b.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, "depth.png")
