# Notebook 6 source: build with `python notebooks/build.py --execute 06`.

# %% [markdown]
# # 6. Training a character model
#
# Everything so far ran one forward and one backward pass. Training repeats that a few
# hundred times on real text and changes the weights a little each time. This notebook
# trains a character-level language model (predict the next character from the ones
# before it) with the training loop written out in the open: how the text is cut into
# streams and windows, truncated backpropagation through time, gradient clipping and
# the optimizer step. Then we sample from the model at different temperatures, and
# finally run the same loop through `python -m rnncore.train`, stop it, and resume it
# from its checkpoint.

# %%
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import nbhelpers
import numpy as np

from rnncore import corpora, optim
from rnncore.charlm import CharLM
from rnncore.evaluation import evaluate
from rnncore.experiments.clipping import one_run
from rnncore.experiments.common import LMData
from rnncore.sample import generate, load_model
from rnncore.textdata import Streams, Vocab, split_text
from rnncore.train import main as train_main

nbhelpers.setup()

# %% [markdown]
# ## Text, streams and windows
#
# The corpus is rnncore's generated `words`: sentences of made-up words drawn from a
# word-bigram grammar. Because the generator is known, so is the text's entropy rate,
# the **floor** in bits per character that no model can beat. A model that has learned
# nothing pays $\log_2 V$ bits per character for a vocabulary of $V$.

# %%
corpus = corpora.load_corpus("words")
vocab = Vocab.from_text(corpus.text)
print(f"{len(corpus.text):,} characters, vocabulary of {len(vocab.chars)}:",
      repr("".join(vocab.chars)))
print(f"uniform guess: {math.log2(len(vocab.chars)):.2f} bits/char; floor: {corpus.floor_bpc:.3f}")
print(corpus.text[:160])

# %% [markdown]
# For training, the text (minus a held-out tail for validation) is cut into $B$
# long contiguous **streams**, one per batch row, and each stream is read $T$
# characters at a time: **window** $w$ holds characters $wT \dots wT + T - 1$ of every
# stream as inputs, and the same shifted by one as targets. Consecutive windows
# continue each stream exactly where the previous one stopped:

# %%
B, T = 16, 32
train_ids, val_ids = split_text(vocab.encode(corpus.text), 0.1)
train, val = Streams(train_ids, B, T, "cpu"), Streams(val_ids, B, T, "cpu")
print(f"train: {train.windows} windows of {B} streams × {T} characters")


def decode(ids):
    return "".join(vocab.chars[i] for i in ids).replace("\n", "⏎")


for w in (0, 1):
    x, y = train.window(w)
    for b in (0, 1):
        print(f"window {w}, stream {b}: inputs {decode(x[:, b])!r}")
print(f"targets of window 1, stream 0: {decode(y[:, 0])!r} (inputs shifted by one)")

# %% [markdown]
# ## The loop, in the open
#
# The model is `rnncore.charlm.CharLM`: an embedding, a 2-layer LSTM of 64 units and a
# linear softmax head, with a hand-written backward pass like everything else here.
# The key idea is **truncated BPTT**: the LSTM state at the end of window $w$ is handed
# to window $w+1$ as its initial state, so the forward pass sees the whole stream; but
# backpropagation runs only through the current window's $T$ steps, because the
# backward pass is given only this window's cache. The state crosses the window edge,
# the gradient does not.

# %%
model = CharLM(len(vocab.chars), embed_size=32, hidden_size=64, num_layers=2, seed=0)
optimizer = optim.make_optimizer("adam", model.params)
steps, lr, clip = 400, 4e-3, 1.0
schedule = optim.Schedule("cosine", lr, warmup=20, total_steps=steps)
print(f"{model.num_parameters():,} parameters")

history = {"step": [], "bpc": [], "grad_norm": [], "val_step": [], "val_bpc": []}
state = None
for step in range(steps):
    w = step % train.windows
    if w == 0:
        state = None                                 # a new pass over the streams
    x, y = train.window(w)
    model.zero_grad()
    loss, state = model.loss(x, y, state)            # forward from the carried state
    model.backward()                                 # gradients of this window only
    grad_norm = optim.clip_grad_norm(model.grads, clip)
    optimizer.step(model.params, model.grads, schedule(step))
    history["step"].append(step + 1)
    history["bpc"].append(float(loss) / math.log(2))
    history["grad_norm"].append(float(grad_norm))
    if (step + 1) % 50 == 0:
        history["val_step"].append(step + 1)
        history["val_bpc"].append(evaluate(model, val, 40) / math.log(2))
print(f"after {steps} steps: validation {history['val_bpc'][-1]:.3f} bits/char "
      f"(floor {corpus.floor_bpc:.3f})")
over = sum(g > clip for g in history["grad_norm"])
print(f"steps whose gradient norm exceeded the clip threshold {clip}: {over} of {steps} "
      f"(largest norm {max(history['grad_norm']):.2f})")

# %% [markdown]
# `clip_grad_norm` rescales all gradients together when their global norm exceeds
# `clip`. In this run it never acts: the count above is zero, and the right-hand panel
# below stays under the threshold. An LSTM at this size, trained with Adam, has no
# exploding steps here; clipping is insurance (the next section shows a run that needs
# it). `evaluate` runs the validation streams in inference mode with the state carried
# across windows, as in training. The curves:

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 2.8))
smooth = np.convolve(history["bpc"], np.ones(10) / 10, mode="valid")
a.plot(history["step"], history["bpc"], color="C0", alpha=0.3, lw=0.8)
a.plot(history["step"][9:], smooth, color="C0", label="train (10-step mean)")
a.plot(history["val_step"], history["val_bpc"], "o-", color="C1", label="validation")
a.axhline(corpus.floor_bpc, color="k", ls=":", label="entropy floor")
a.set_xlabel("step")
a.set_ylabel("bits per character")
a.set_ylim(0, 5)
a.set_title("loss, 2-layer LSTM char-LM")
a.legend(fontsize=8)
b.semilogy(history["step"], history["grad_norm"], lw=0.8)
b.axhline(clip, color="k", ls=":", label="clip threshold")
b.set_xlabel("step")
b.set_ylabel("global gradient norm (before clipping)")
b.set_ylim(top=3 * clip)  # room above the threshold for the legend
b.set_title("gradient norm: never clipped here")
b.legend(fontsize=8, loc="upper right")
plt.tight_layout()
plt.show()

# %% [markdown]
# Does carrying the state across windows matter? Evaluate the same model twice on the
# validation text: once carrying the state, once restarting every window from zeros.

# %%
carried = evaluate(model, val, 40) / math.log(2)
with model.inference():
    fresh = np.mean([float(model.loss(*val.window(w))[0]) for w in range(40)]) / math.log(2)
print(f"state carried across windows: {carried:.3f} bits/char")
print(f"state reset every window:     {fresh:.3f} bits/char")

# %% [markdown]
# Restarting costs bits: at the start of every window the model has to guess without
# context, which is what the carried state provides.
#
# ## When a gradient does explode
#
# Notebook 3 showed that a recurrent matrix with singular values above 1 can make the
# backward product grow. The clipping experiment (`python -m rnncore.experiments
# clipping`, results in `docs/experiments.md`) builds exactly that: a one-layer tanh RNN
# language model whose $W_{hh}$ is an orthogonal matrix times a **gain of 3**, trained
# with plain SGD (learning rate 1). Here is one of its runs, 300 steps, once without
# clipping and once clipped at 1, with the experiment's own function:

# %%
clip_data = LMData.make(200_000, 32, 50)
exploding = {}
for label, threshold in (("unclipped", None), ("clipped at 1", 1.0)):
    val_bpc, share_over, peak, diverged, losses = one_run(clip_data, 3.0, 1.0, threshold,
                                                          128, 300, 0)
    exploding[label] = losses
    print(f"{label:<13} validation {val_bpc:.2f} bits/char; gradient norm above 1 at "
          f"{share_over:.0%} of steps, largest {peak:,.0f}")
fig, ax = plt.subplots(figsize=(5.5, 2.6))
for label, losses in exploding.items():
    ax.plot(np.arange(1, len(losses) + 1), np.array(losses) / math.log(2), lw=0.8,
            label=label)
ax.axhline(clip_data.floor_bpc, color="k", ls=":", label="entropy floor")
ax.set_xlabel("step")
ax.set_ylabel("training bits / char")
ax.set_title("tanh RNN, W_hh gain 3, SGD lr 1")
nbhelpers.legend_beside(ax)
plt.show()

# %% [markdown]
# The raw gradient norm passes ten thousand in both runs (the clipped run's
# norm is measured before clipping). Unclipped, each such step throws the weights far
# away and SGD never recovers; clipped, the same steps are cut to length 1 and the model
# trains normally. Clipping does not stop gradients from exploding; it stops an
# exploded gradient from wrecking the weights.
#
# ## Sampling, and temperature
#
# To generate, feed a character, read the softmax distribution over the next one, draw
# from it, feed the draw back in. **Temperature** $\tau$ divides the logits before the
# softmax, $p_i \propto e^{z_i / \tau}$: $\tau < 1$ sharpens the distribution towards
# the likeliest character, $\tau > 1$ flattens it, and $\tau \to 0$ always picks the
# maximum (greedy decoding). Here is the distribution after the prime `ka` at
# three temperatures:

# %%
prime = "ka"
with model.inference():
    logits, _ = model.forward(np.array([[vocab.index[c]] for c in prime]))
z = logits[-1, 0].astype(np.float64)
order = np.argsort(-z)[:8]
fig, ax = plt.subplots(figsize=(5.5, 2.6))
for k, tau in enumerate((0.5, 1.0, 2.0)):
    p = np.exp((z - z.max()) / tau)
    p /= p.sum()
    ax.bar(np.arange(8) + (k - 1) * 0.27, p[order], width=0.27, label=f"τ = {tau}")
ax.set_xticks(range(8), [repr(vocab.chars[i])[1:-1].replace("\\n", "⏎") for i in order])
ax.set_ylabel("probability")
ax.set_title(f"next character after {prime!r}")
ax.legend(fontsize=8)
plt.show()

# %%
for tau in (0.0, 0.5, 1.0, 1.5):
    text = generate(model, vocab.chars, prime="", length=120, temperature=tau, seed=1)
    print(f"τ = {tau}: {text!r}\n")

# %% [markdown]
# Greedy decoding ($\tau = 0$) tends to fall into a loop of the likeliest words; high
# temperatures produce more varied text and more misspelt words; the model's own
# distribution is $\tau = 1$.
#
# ## The same loop as a command, with checkpoints
#
# `python -m rnncore.train` runs exactly this loop (see its docstring) and adds what a
# long run needs: logging, periodic evaluation and samples, and checkpoints
# (`last.npz`, `best.npz`) written atomically. A checkpoint holds the parameters, the
# optimizer's moment estimates, the random generator, the carried LSTM state and the
# step, so a resumed run continues *exactly* where it stopped. We check that: train 300
# steps in one go; then train 150 steps, stop, and resume to 300.

# %%
workdir = Path(tempfile.mkdtemp(prefix="rnncore-nb6-"))
common = ["--corpus", "words", "--embed", "32", "--hidden", "64", "--layers", "2",
          "--batch-size", "16", "--seq-len", "32", "--schedule", "constant", "--lr", "4e-3",
          "--eval-every", "150", "--log-every", "25", "--no-plot", "--quiet"]
train_main(common + ["--steps", "300", "--out", str(workdir / "straight")])
train_main(common + ["--steps", "150", "--out", str(workdir / "stopped")])
train_main(["--resume", str(workdir / "stopped"), "--steps", "300", "--quiet", "--no-plot"])
print(sorted(p.name for p in (workdir / "stopped").iterdir()))


def train_losses(run_dir):
    lines = (json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines())
    return {m["step"]: m["loss"] for m in lines if m["kind"] == "train"}


straight, resumed = train_losses(workdir / "straight"), train_losses(workdir / "stopped")
print(f"training loss (nats) at step:\n{'step':>5} {'uninterrupted':>14} "
      f"{'stopped at 150, resumed':>24}")
for step in (25, 150, 175, 250, 300):
    print(f"{step:>5} {straight[step]:>14.6f} {resumed[step]:>24.6f}")
print("identical from the resume on:", all(straight[s] == resumed[s] for s in straight if s > 150))

# %% [markdown]
# Finally, `rnncore.sample.load_model` rebuilds a model from a checkpoint (the
# configuration and the vocabulary are stored in it), which is what the command
# `python -m rnncore.sample runs/.../best.npz` does (the checkpoint is its one positional
# argument; we run that command too, below):

# %%
loaded, chars, _, meta = load_model(workdir / "stopped" / "best.npz")
print(f"checkpoint from step {meta['step']}, "
      f"best validation {meta['best_val'] / math.log(2):.3f} bits/char")
print(repr(generate(loaded, chars, prime="", length=150, temperature=0.8, seed=2)))
command = [sys.executable, "-m", "rnncore.sample", str(workdir / "stopped" / "best.npz"),
           "--length", "80", "--temperature", "0.8", "--seed", "2"]
print("$ python -m rnncore.sample …/best.npz --length 80 --temperature 0.8 --seed 2")
print(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
shutil.rmtree(workdir)
