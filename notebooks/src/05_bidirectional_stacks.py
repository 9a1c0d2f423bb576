# Notebook 5 source: build with `python notebooks/build.py --execute 05`.

# %% [markdown]
# # 5. Bidirectional stacks
#
# A unidirectional RNN's output at step $t$ is a function of $x_0, \dots, x_t$ only.
# That is exactly right for generating text one character at a time (the future does
# not exist yet) and exactly wrong for labelling a sequence that is already complete:
# the tag of a word often depends on the words after it. A bidirectional layer runs a
# second RNN from the end to the start and concatenates both outputs at every step
# (notebook 2 followed the shapes). Here we set up a task where the future is all that
# matters and watch the two kinds of model learn it.

# %%
import matplotlib.pyplot as plt
import nbhelpers
import numpy as np

import rnncore
from rnncore.experiments.bidirectional import SHIFT, accuracy, tagging_batch
from rnncore.experiments.common import SequenceModel, fit

nbhelpers.setup()

# %% [markdown]
# ## The tagging task
#
# Each input is a sequence of random symbols from an alphabet of $K$, one-hot encoded.
# The tag at step $t$ is the symbol that arrives three steps **later**, $s_{t+3}$ (the
# last three steps get an extra "end" tag, number $K$). Nothing about the past helps.

# %%
T, K = 20, 8
x, tags = tagging_batch(np.random.default_rng(0), T, 1, K)
print("symbols:", x[:, 0].argmax(-1))
print("tags:   ", tags[:, 0], f"  (tag {K} = end)")

# %% [markdown]
# ## Three models
#
# Each model is an rnncore LSTM with a linear softmax readout at every step
# (`SequenceModel` from `rnncore.experiments.common`), trained with Adam on fresh random
# batches, and scored on a fixed test batch of 500 sequences over the steps $t < T-3$:
#
# * **unidirectional**, 32 units;
# * **unidirectional, wide**, 64 units and two layers: more capacity, to show that the
#   limit is not size;
# * **bidirectional**, 32 units per direction.

# %%
configs = {
    "unidirectional": dict(hidden_size=32),
    "unidirectional, 2×64": dict(hidden_size=64, num_layers=2),
    "bidirectional": dict(hidden_size=32, bidirectional=True),
}
test = tagging_batch(np.random.default_rng(10_000), T, 500, K)
steps, batch = 400, 32
models, curves = {}, {}
for name, options in configs.items():
    model = SequenceModel(rnncore.LSTM(K, seed=0, **options), K + 1, "all", seed=0)
    rng = np.random.default_rng(1)
    history = fit(model, lambda step, rng=rng: tagging_batch(rng, T, batch, K), steps, 1e-2,
                  "adam", clip=1.0, evaluate_fn=lambda model=model: accuracy(model, *test),
                  eval_every=15)
    models[name], curves[name] = model, history.evals
    last_step, last_accuracy = history.evals[-1]
    print(f"{name:<22} test accuracy at step {last_step} (the last evaluation): "
          f"{last_accuracy:.3f}")
print(f"{'chance':<22} {1 / K:.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 2.8))
for name, evals in curves.items():
    ax.plot(*zip(*evals), marker=".", label=name)
ax.axhline(1 / K, color="k", ls=":", label="chance")
ax.set_xlabel("training step")
ax.set_ylabel("test accuracy (t < T−3)")
ax.set_ylim(0, 1.02)
ax.set_title("tagging with the input 3 steps ahead")
nbhelpers.legend_beside(ax)
plt.show()

# %% [markdown]
# The unidirectional models stay at chance however large they are: at step $t$ the
# symbol $s_{t+3}$ has not been read yet, so no amount of capacity can predict it. The
# bidirectional model's reverse direction reaches step $t$ *after* it has read
# $s_{t+3}$, and only has to remember it for three steps.
#
# ## Which half does the work?
#
# The readout sees the concatenation [forward | reverse] at each step. Silence one half
# at test time (set it to zero before the readout) and see what is left:

# %%
bi = models["bidirectional"]
H = 32
x_test, tags_test = test
out = bi.rnn(x_test)[0]
for label, keep in (("both halves", slice(None)), ("forward half only", slice(0, H)),
                    ("reverse half only", slice(H, 2 * H))):
    masked = np.zeros_like(out)
    masked[..., keep] = out[..., keep]
    logits = bi.head.forward(masked.reshape(T * 500, -1)).reshape(T, 500, -1)
    guess = logits.argmax(-1)[:-SHIFT]
    acc = float((guess == tags_test[:-SHIFT]).mean())
    print(f"{label:<20} accuracy {acc:.3f}, distinct tags predicted: {len(np.unique(guess))}")
    if label == "forward half only":
        forward_guess = guess

values, counts = np.unique(forward_guess, return_counts=True)
print("its most frequent predictions:", {int(v): f"{c / forward_guess.size:.0%}"
                                         for v, c in sorted(zip(values, counts),
                                                            key=lambda vc: -vc[1])[:3]})
reverse_size = np.abs(out[..., H:]).mean(axis=(1, 2))
print(f"mean |reverse half|: {reverse_size[:-SHIFT].mean():.2f} at t < T−3, "
      f"{reverse_size[-SHIFT:].mean():.2f} at the last three steps, "
      f"{reverse_size[-1]:.2f} at t = T−1")

# %% [markdown]
# The reverse half alone carries the model's accuracy: it alone has seen the answer.
# The forward half alone does far *worse* than chance (1/8): the readout answers "end"
# (tag 8) almost everywhere, a tag that never occurs at the steps scored. The reverse
# direction starts from a zero state at $t = T-1$ and is smallest over the last three
# steps, exactly where the tag is "end"; so the readout has learned that a small reverse
# half means "end", and a reverse half set to zero is the extreme case. (The forward half
# was never useful for this task, and the readout learned to lean on the other one.)
#
# ## Accuracy step by step
#
# Per position $t$, the bidirectional model's accuracy:

# %%
pred = bi.predict(x_test).argmax(-1)
per_step = (pred == tags_test).mean(axis=1)
fig, ax = plt.subplots(figsize=(5.5, 2.4))
ax.bar(np.arange(T), per_step)
ax.axvline(T - SHIFT - 0.5, color="k", ls=":")
ax.set_xlabel("time step t")
nbhelpers.integer_ticks(ax)
ax.set_ylabel("accuracy")
ax.set_title("bidirectional LSTM, per step (right of the line: the 'end' tag)")
plt.show()

# %% [markdown]
# ## When to use which
#
# * **Labelling a complete sequence** (tagging words, classifying a whole sequence,
#   the encoder of a translation model): bidirectional layers let every position use
#   its whole context, at twice the parameters and twice the work per layer.
# * **Generating** (a language model, notebook 6) or any online use where outputs are
#   needed before the input has ended: only unidirectional layers are possible.
#
# In a deep bidirectional stack every layer above the first reads both directions of
# the layer below, so information from both ends mixes at every level; `h_n` holds
# both directions' final states, each at its own end of the sequence (notebook 2).
