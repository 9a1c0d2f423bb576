# Notebook 4 source: build with `python notebooks/build.py --execute 04`.

# %% [markdown]
# # 4. Regularising and initialising
#
# Two sets of choices that cost nothing at run time and decide much of what training
# does: **dropout** between the layers of a stack (where, and whether the mask changes
# from step to step), and how things **start**: the initial state $h_0, c_0$, the
# weight initialiser, and the LSTM's forget-gate bias.

# %%
import matplotlib.pyplot as plt
import nbhelpers
import numpy as np

import rnncore
from rnncore import gradflow
from rnncore.backend import Generator
from rnncore.experiments.common import LMData, lm_bpc, new_lm, train_lm
from rnncore.stack import stack_forward

nbhelpers.setup()

# %% [markdown]
# ## Dropout between layers
#
# Dropout multiplies activations by a random mask of zeros and $1/(1-p)$ during
# training, so that no unit can rely on any particular other. In an RNN *where* it is
# applied matters. Dropping the recurrent connection $h_{t-1} \to h_t$ with a fresh
# mask every step erases memory; Zaremba, Sutskever and Vinyals (2014) apply dropout
# only to the **non-recurrent** connections, each layer's output on its way to the
# next layer, and rnncore does exactly that (`dropout=p`, on every layer's output but
# the last, as in torch.nn):

# %%
nbhelpers.show_source(stack_forward, start="if masks[k] is not None", stop="layers.append")

# %% [markdown]
# Two kinds of mask. **Standard** draws a fresh mask at every time step. **Variational**
# draws one mask per sequence and reuses it at every step, so a dropped unit stays
# dropped for the whole sequence. Both act here only between layers, on each layer's
# output; the recurrent connection $h_{t-1} \to h_t$ is never masked. (The per-sequence
# mask is Gal and Ghahramani's (2016) idea, but their point is to apply it to the
# recurrent connections as well, which these masks do not.) The module draws them from
# its seeded generator, with the shapes below (time × units for one sequence):

# %%
rng = Generator(seed=0)
T, width, p = 30, 24, 0.5
standard = rng.keep_mask(p, (T, 1, width), np.float32)[:, 0]
variational = np.broadcast_to(rng.keep_mask(p, (1, 1, width), np.float32)[:, 0], (T, width))
fig, axes = plt.subplots(1, 2, figsize=(8, 2.2), sharey=True)
for ax, (name, mask) in zip(axes, (("standard", standard), ("variational", variational))):
    ax.imshow(mask.T, aspect="auto", cmap="gray_r", interpolation="nearest")
    ax.set_title(f"{name} (black = kept, ×{1 / (1 - p):g})")
    ax.set_xlabel("time step")
axes[0].set_ylabel("unit")
plt.tight_layout()
plt.show()

# %% [markdown]
# Dropout is a regulariser: it should matter when a model is large for its data and
# starts to memorise. We train a 2-layer LSTM language model of 96 units on a small
# slice of the `words` corpus (about nine thousand training characters), long enough
# to overfit, without dropout and with $p = 0.5$ of each kind. Both losses are measured
# in inference mode (no dropout), so they are comparable. (A scaled-down
# `python -m rnncore.experiments dropout`.)

# %%
small = LMData.make(12_000, 16, 40, val_fraction=0.25)
settings = (("none", 0.0, "standard"), ("0.5 standard", 0.5, "standard"),
            ("0.5 variational", 0.5, "variational"))
dropout_runs = {}
for label, rate, mode in settings:
    model = new_lm(small, embed_size=96, hidden_size=96, num_layers=2, cell="lstm", seed=0,
                   dropout=rate, dropout_mode=mode)
    history, val_bpc = train_lm(small, model, 360, 3e-3, "adam", clip=1.0, eval_every=40)
    dropout_runs[label] = (lm_bpc(model, small.train), val_bpc, history.evals)
print(f"{'dropout':<16}{'train bpc':>10}{'val bpc':>9}{'gap':>7}")
for label, (train_bpc, val_bpc, _) in dropout_runs.items():
    print(f"{label:<16}{train_bpc:>10.3f}{val_bpc:>9.3f}{val_bpc - train_bpc:>7.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 2.8))
for label, (_, _, evals) in dropout_runs.items():
    ax.plot(*zip(*evals), marker=".", label=label)
ax.axhline(small.floor_bpc, color="k", ls=":", label="entropy floor")
ax.set_xlabel("training step")
ax.set_ylabel("validation bits / char")
ax.set_ylim(small.floor_bpc - 0.05, 1.2)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Without dropout the validation loss stops improving and turns upwards towards the
# end, while the training loss keeps falling: the model has begun to memorise.
# Dropout trains more slowly at first (half the units are missing at every step), but
# it narrows the train/validation gap.
# Compare the two kinds of mask in the table; with one seed and a small budget,
# differences between them of a few hundredths of a bit are within the noise of a
# single run (the full experiment averages three seeds).
#
# ## Initial states
#
# Every sequence starts from some $h_0, c_0$. rnncore offers `init_state="zeros"` (the
# usual choice), `"normal"` (small random noise, drawn per batch) and `"learned"` (a
# parameter per layer, broadcast over the batch and trained like any weight; its
# gradient is $\sum_b \partial L / \partial h_0^{(b)}$, which `backward` returns
# anyway). The initial state matters only where sequences actually start from it, so
# here every training window of 32 characters starts from $h_0$ (no state carried
# between windows), and so does validation.

# %%
data = LMData.make(60_000, 16, 32)
state_runs = {}
for init_state in ("zeros", "normal", "learned"):
    model = new_lm(data, embed_size=32, hidden_size=64, num_layers=2, cell="lstm", seed=0,
                   init_state=init_state)
    history, val_bpc = train_lm(data, model, 200, 3e-3, "adam", clip=1.0, eval_every=40,
                                carry=False)
    state_runs[init_state] = (val_bpc, history.evals)
    print(f"{init_state:<8} validation {val_bpc:.3f} bits/char")
learned = model.rnn.params["h0"]
print("learned h0:", learned.shape, "(layers, 1, hidden);",
      f"mean |h0| = {np.abs(learned).mean():.3f}")

# %% [markdown]
# The learned initial state is the model's own choice of "what to believe before the
# first character": here, what usually comes at an arbitrary cut in the middle of the
# text. Whether it helps depends on how much of the loss sits in the first few steps
# of each window; compare the three numbers above. With the state carried across
# windows (as in notebook 6) the initial state is used once per pass over the data and
# the choice hardly matters.
#
# ## Weight initialisers and the forget-gate bias
#
# rnncore's `init=` options: `"pytorch"` draws every weight from $U(-1/\sqrt H,
# 1/\sqrt H)$; `"xavier"` scales each gate block by its fan-in and fan-out (Glorot and
# Bengio 2010) with zero biases; `"orthogonal"` makes each recurrent gate block an
# orthogonal matrix (Saxe et al. 2014), which preserves the norm of whatever it
# multiplies. `forget_bias=b` adds $b$ to the forget gate's bias, so that $f = \sigma(b
# + \dots)$ starts near 1 and the cell state, and its gradient, persist (Gers et al.
# 2000; Jozefowicz et al. 2015).
#
# At initialisation we measure, for a 2-layer LSTM of 64 units over 60 steps: the mean
# forget gate value, the fraction of sigmoid gates that are saturated (below 0.05 or
# above 0.95, where $\sigma' < 0.05$ passes little gradient), and how much of a
# last-step loss's gradient reaches $h_0$ in the top layer.

# %%
x = np.random.default_rng(1).standard_normal((60, 16, 64))
print(f"{'init':<11}{'forget bias':>12}{'mean f':>8}{'saturated':>10}"
      f"{'‖∂L/∂h_0‖/‖∂L/∂h_T−1‖':>24}")
for init in ("pytorch", "xavier", "orthogonal"):
    for fb in (0.0, 1.0):
        lstm = rnncore.LSTM(64, 64, num_layers=2, init=init, forget_bias=fb, dtype="float64",
                            seed=0)
        probe = gradflow.probe(lstm, x, loss="last")
        gates = gradflow.sigmoid_gates(lstm, 1, 0)      # top layer: [i, f, o] blocks
        f_mean = float(gates[..., 64:128].mean())
        print(f"{init:<11}{fb:>12g}{f_mean:>8.2f}{np.nanmean(probe.saturation):>10.3f}"
              f"{probe.time_ratio:>24.1e}")

# %% [markdown]
# The forget-gate bias moves the mean forget gate from about one half to
# $\sigma(1) \approx 0.73$, and the gradient reaching the start of the sequence grows
# by orders of magnitude (notebook 3 showed why: the memory path multiplies by $f$ at
# every step). The initialiser matters too: compare the last column between PyTorch's
# uniform default and the Glorot-scaled or orthogonal weights. Saturated gates are rare
# at initialisation with any of them.
#
# Does the head start survive training? The same language model as above (state
# reset every window), PyTorch initialisation with forget bias 0 and 1:

# %%
bias_runs = {}
for fb in (0.0, 1.0):
    model = new_lm(data, embed_size=32, hidden_size=64, num_layers=2, cell="lstm", seed=0,
                   forget_bias=fb)
    history, val_bpc = train_lm(data, model, 200, 3e-3, "adam", clip=1.0, eval_every=40,
                                carry=False)
    bias_runs[fb] = history.evals
    print(f"forget bias +{fb:g}: validation {val_bpc:.3f} bits/char")

fig, ax = plt.subplots(figsize=(5.5, 2.8))
for init_state, (_, evals) in state_runs.items():
    ax.plot(*zip(*evals), marker=".", label=f"h0 {init_state}, forget bias +0")
ax.plot(*zip(*bias_runs[1.0]), marker="o", color="k", label="h0 zeros, forget bias +1")
ax.axhline(data.floor_bpc, color="k", ls=":", label="entropy floor")
ax.set_xlabel("training step")
ax.set_ylabel("validation bits / char")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# A larger gradient at the start of the sequence is not the same as a better model.
# On windows of 32 characters of a text whose structure is short-range, long memory is
# not what limits this model, and the forget bias need not help (compare the two
# numbers printed above, from one seed). Its effect shows on tasks whose answer depends
# on inputs far in the past, such as the adding problem (`python -m
# rnncore.experiments adding`). The general lesson of this notebook: measure the quantity the
# choice is meant to change (the train/validation gap for dropout, the gradient
# reaching early steps for the forget bias) as well as the final loss.

# %% [markdown]
# ## Recurrent regularisers
#
# Dropout between layers leaves the recurrence $h_{t-1} \to h_t$ alone. Three
# regularisers act *inside* it, each a module option (and a `rnncore.train` flag):
#
# - **zoneout** (Krueger et al. 2016), `zoneout_h` and `zoneout_c`: each unit keeps its
#   previous value with probability $p$, $s_t = d_t \odot s_{t-1} + (1 - d_t) \odot
#   \tilde s_t$ with a fresh $d_t$ every step; at evaluation $d_t = p$, the expected value.
#   Where a unit zones out, the gradient flows straight to $s_{t-1}$ as through an identity.
# - **recurrent dropout** (Gal and Ghahramani 2016), `recurrent_dropout`: one inverted
#   mask per sequence on $h_{t-1}$ where it enters $h_{t-1} W_{hh}^\top$.
# - **weight-drop** (Merity et al. 2017, AWD-LSTM), `weight_drop`: DropConnect on
#   $W_{hh}$, one mask for the whole forward pass.
#
# The masks come from the module's seeded generator and reach the cell as per-step
# inputs, beside the lengths mask. Here are one sequence's masks for unit 0–23:

# %%
lstm = rnncore.LSTM(4, 24, seed=0, zoneout_c=0.5, zoneout_h=0.05, recurrent_dropout=0.25,
                    weight_drop=0.3)
lstm(np.zeros((30, 2, 4), np.float32))
masks = lstm.last_cache.step_masks[0]
fig, axes = plt.subplots(1, 3, figsize=(10, 2.2), sharey=True)
shown = (("zoneout on c (1 = keep c_{t-1})", masks["zoneout_c"][:, 0]),
         ("recurrent dropout (one per sequence)", masks["recurrent_dropout"][:, 0]),
         ("weight-drop on W_hh (rows 0-23)", lstm.last_cache.weight_masks[0]["w_hh"][:24]))
for ax, (name, mask) in zip(axes, shown):
    ax.imshow(mask.T, aspect="auto", cmap="gray_r", interpolation="nearest")
    ax.set_title(name, fontsize=8)
axes[0].set_ylabel("unit")
plt.tight_layout()
plt.show()

# %% [markdown]
# Which regulariser a cell can take is part of its declaration: a GRU has no $c$ to
# zone out, and asking for it is an error, not a silent no-op.

# %%
for cell in rnncore.cells.cells():
    print(f"{cell.name:18} {', '.join(cell.regularisers())}")
try:
    rnncore.GRU(4, 8, zoneout_c=0.3)
except TypeError as err:
    print("\nGRU(zoneout_c=0.3):", err)

# %% [markdown]
# Their backward passes are hand-written like the rest, so they are checked the same way:
# with the masks frozen, every gradient against central finite differences.

# %%
from rnncore.gradcheck import check_module_gradients  # noqa: E402

module = rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=0,
                      zoneout_h=0.1, zoneout_c=0.3, recurrent_dropout=0.2, weight_drop=0.3)
report = check_module_gradients(module, np.random.default_rng(0).standard_normal((5, 2, 3)),
                                lengths=[5, 3])
print(f"largest relative error over {len(report.errors)} tensors: {report.max_error:.1e}")

# %% [markdown]
# On the small `words` text above, one seed each (`python -m rnncore.experiments
# regularise` compares them over seeds on Tiny Shakespeare, see `docs/experiments.md`):

# %%
for name, options in (("none", {}), ("zoneout c 0.5, h 0.05", dict(zoneout_c=0.5, zoneout_h=0.05)),
                      ("recurrent dropout 0.25", dict(recurrent_dropout=0.25)),
                      ("weight-drop 0.3", dict(weight_drop=0.3))):
    model = new_lm(small, embed_size=32, hidden_size=96, num_layers=2, cell="lstm", seed=0,
                   **options)
    _, val_bpc = train_lm(small, model, 150, 3e-3, "adam", clip=1.0)
    print(f"{name:24} validation {val_bpc:.3f} bits/char")

# %% [markdown]
# One seed on a toy text is not evidence either way; the point here is the mechanics.
# Each regulariser slows the fit of the training text a little, and pays off only where
# the model would otherwise memorise it.
