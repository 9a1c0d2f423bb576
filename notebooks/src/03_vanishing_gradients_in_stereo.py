# Notebook 3 source: build with `python notebooks/build.py --execute 03`.

# %% [markdown]
# # 3. Vanishing gradients, now in stereo
#
# Notebook 1 showed a gradient shrinking as it travels back in time through one layer.
# A deep RNN has a second direction to travel: down through the layers. The gradient
# that reaches layer $k$ at step $t$ has crossed $T - t$ steps *and* $L - k$ layers, and
# it can fade along either axis. This notebook measures both at once, as layer × time
# heatmaps, for the plain RNN, the LSTM and the GRU; shows why plain stacks stop
# helping after three or four layers; and what residual connections change, in the
# heatmap and in training.

# %%
import matplotlib.pyplot as plt
import nbhelpers
import numpy as np

import rnncore
from rnncore import gradflow
from rnncore.drivers import PythonLoop
from rnncore.experiments.common import LMData, lm_layer_gradients, new_lm, train_lm

nbhelpers.setup()

# %% [markdown]
# ## The instrument
#
# The engine's backward pass takes an optional `recorder`. The stack passes it down to
# the time loop of every layer $k$ and direction $d$ (the driver's `backward`, notebook
# 1) as a callback `record`, and inside the BPTT loop, each time the total gradient
# arriving at a state $s_t$ is known (from the output at $t$ and from step $t+1$), the
# loop hands it over. `dstate_t` is a tuple in the cell's state order: $(\partial h_t,
# \partial c_t)$ for the LSTM, $(\partial h_t,)$ for the RNN and the GRU.

# %%
nbhelpers.show_source(PythonLoop.backward, start="for k in range(T - 1", stop="dstate_prev =")

# %% [markdown]
# `rnncore.gradflow.GradFlowRecorder` keeps the norms $\lVert \partial L / \partial
# h_t^{(k)} \rVert$ (and $\lVert \partial L / \partial c_t^{(k)} \rVert$ for the LSTM)
# for every layer $k$ and step $t$. So what we plot is the gradient the engine really
# computes, not a second implementation. `gradflow.probe` runs one forward and one
# instrumented backward with a fixed random loss on the **last** step's output only, so
# every step's gradient has come from the end of the sequence.
#
# ## RNN, LSTM and GRU at initialisation
#
# Four layers of 32 units, 60 steps, a batch of 16, PyTorch's default initialisation,
# float64 (the smallest norms are far below float32's range).

# %%
T, B, H = 60, 16, 32
cells = ("rnn_tanh", "lstm", "gru")
probes = {cell: gradflow.run_config(gradflow.Config(cell, 4, "none", "pytorch", "zeros"),
                                    T, B, H, seed=0) for cell in cells}


def plot_heatmaps(named_grids, title):
    """One layer × time image of log10 ‖∂L/∂h_t‖ per entry, on a shared colour scale."""
    logs = {name: np.log10(grid) for name, grid in named_grids.items()}
    top = max(g.max() for g in logs.values())
    low = max(min(g.min() for g in logs.values()), top - 16)
    fig, axes = plt.subplots(1, len(logs), figsize=(3.2 * len(logs) + 0.8, 2.4),
                             layout="constrained")
    for ax, (name, g) in zip(np.atleast_1d(axes), logs.items()):
        image = ax.imshow(g, aspect="auto", origin="lower", vmin=low, vmax=top,
                          interpolation="nearest", extent=(-0.5, g.shape[1] - 0.5, 0.5,
                                                           g.shape[0] + 0.5))
        ax.set_title(name)
        ax.set_xlabel("time step t")
        ax.set_yticks(range(1, g.shape[0] + 1) if g.shape[0] <= 8 else [1, g.shape[0]])
    np.atleast_1d(axes)[0].set_ylabel("layer (1 = bottom)")
    fig.colorbar(image, ax=axes, label=r"$\log_{10}\|\partial L/\partial h_t\|$", shrink=0.9)
    fig.suptitle(title)
    plt.show()


plot_heatmaps({cell: p.h[:, 0, :] for cell, p in probes.items()},
              "gradient of a loss on the last step, 4 layers")
for cell, p in probes.items():
    print(f"{cell:<9} top layer ‖∂L/∂h_0‖/‖∂L/∂h_T−1‖ = {p.time_ratio:.1e}   "
          f"gradient at top layer / bottom layer = {p.depth_ratio:.1e}")

# %% [markdown]
# Read the pictures from the top right corner, where the loss enters. Going **left**
# (back in time) every cell loses many orders of magnitude over 60 steps. Going **down**
# (through depth) they lose much less, but they lose something at every layer, and the
# LSTM loses the most: about a factor of five per layer here.
#
# Why does the LSTM, famous for carrying gradients far back in time, fade as fast as
# the plain RNN at initialisation? Along its memory path
# $\partial L/\partial c_{t-1} = \partial L/\partial c_t \odot f$, so the gradient is
# multiplied by the forget gate at every step (plus what reaches $c$ through $h$).
# With PyTorch's initialisation the forget gate's pre-activation is near zero, so
# $f \approx \sigma(0) = 0.5$, and the memory's gradient shrinks by a constant factor
# per step. An LSTM carries gradients far only once it has *learned* to keep $f$ near 1,
# or is initialised that way: adding to the forget gate's bias (notebook 4) raises
# $f$, and the factor per step with it.

# %%
def memory_decay(forget_bias):
    """‖∂L/∂c_t‖ for t = 0..T−2 in one LSTM layer (at T−1 the loss has not reached c yet)."""
    lstm = rnncore.LSTM(H, H, num_layers=1, dtype="float64", seed=0, forget_bias=forget_bias)
    x = np.random.default_rng(1).standard_normal((T, B, H))
    return gradflow.probe(lstm, x, loss="last").c[0, 0, :-1]


fig, ax = plt.subplots(figsize=(5.5, 2.6))
for fb in (0.0, 1.0, 3.0):
    c = memory_decay(fb)
    ax.semilogy(c / c[-1], label=f"forget bias +{fb:g}")
    per_step = (c[0] / c[-1]) ** (1 / (len(c) - 1))
    print(f"forget bias +{fb:g}: ‖∂L/∂c_0‖/‖∂L/∂c_T−2‖ = {c[0] / c[-1]:.1e}, "
          f"a factor {per_step:.2f} per step (σ(bias) = {1 / (1 + np.exp(-fb)):.2f})")
ax.set_xlabel("time step t")
ax.set_ylabel(r"$\|\partial L/\partial c_t\|$ (relative)")
ax.set_title("one LSTM layer: the memory path at initialisation")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Why people stop at three or four layers
#
# Now the depth axis alone. For LSTM stacks of 1 to 12 layers we compare the gradient
# at the top layer's states with the gradient at the bottom layer's, $G_\text{top} /
# G_\text{bottom}$ with $G_k = (\sum_t \lVert \partial L/\partial h_t^{(k)}
# \rVert^2)^{1/2}$ (T = 30 here). Then the same stacks with **residual connections**:
# `residual="layers"` adds each layer's input to its output, $u_{k+1} =
# \text{LSTM}_k(u_k) + u_k$, so the backward pass gets an identity path,
# $\partial L / \partial u_k = \partial L / \partial u_{k+1} + (\text{through the
# layer})$, that no layer can shrink.

# %%
depths = (1, 2, 4, 8, 12)
ratios = {res: [gradflow.run_config(gradflow.Config("lstm", d, res, "pytorch", "zeros"),
                                    30, B, H, seed=0).depth_ratio for d in depths]
          for res in ("none", "layers")}
fig, ax = plt.subplots(figsize=(5, 2.6))
for res, label in (("none", "plain"), ("layers", "residual")):
    ax.semilogy(depths, ratios[res], marker="o", label=label)
ax.set_xlabel("layers")
ax.set_ylabel(r"$G_{top} / G_{bottom}$")
ax.set_title("how much weaker the gradient is at the bottom")
ax.legend(fontsize=8)
plt.show()
for res in ratios:
    print(f"{res:<7}", "  ".join(f"L={d}: {r:.2g}" for d, r in zip(depths, ratios[res])))

# %% [markdown]
# In the plain stack the bottom layer's gradient falls by roughly the same factor with
# every layer added: an exponential in depth. With residual connections the ratio stays
# near one at any depth. The same contrast as heatmaps, 8 layers:

# %%
deep = {label: gradflow.run_config(gradflow.Config("lstm", 8, res, "pytorch", "zeros"),
                                   T, B, H, seed=0).h[:, 0, :]
        for label, res in (("plain, 8 layers", "none"), ("residual, 8 layers", "layers"))}
plot_heatmaps(deep, "LSTM, loss on the last step")

# %% [markdown]
# ## What it does to training
#
# Gradients at initialisation are a prediction; training is the test. We train
# character-level language models (`rnncore.charlm.CharLM`: embedding, LSTM stack,
# softmax) on rnncore's generated `words` corpus, whose entropy is known exactly (the
# "floor": no model can go below it), for a fixed budget of 200 Adam steps, at depths 1
# to 8, plain and residual, and report validation bits per character. We also measure
# $G_\text{top} / G_\text{bottom}$ with the model's own cross-entropy loss at
# initialisation. (This is a scaled-down version of `python -m rnncore.experiments
# depth`.)

# %%
data = LMData.make(60_000, 16, 32)
train_depths = (1, 2, 4, 8)
results = {}
for residual in (None, "layers"):
    for depth in train_depths:
        model = new_lm(data, embed_size=32, hidden_size=32, num_layers=depth, cell="lstm",
                       seed=0, residual=residual)
        layers = lm_layer_gradients(model, *data.train.window(0)).layer_norms()
        _, val_bpc = train_lm(data, model, 200, 3e-3, "adam", clip=1.0)
        results[residual or "plain", depth] = (val_bpc, layers[-1] / layers[0])
print(f"entropy floor of the corpus: {data.floor_bpc:.3f} bits per character")
print(f"{'stack':<9}{'layers':>7}{'val bpc':>9}{'G_top/G_bottom at init':>25}")
for (name, depth), (val_bpc, ratio) in results.items():
    print(f"{name:<9}{depth:>7}{val_bpc:>9.3f}{ratio:>25.3g}")

# %%
fig, ax = plt.subplots(figsize=(5, 2.6))
for name, label in (("plain", "plain"), ("layers", "residual")):
    ax.plot(train_depths, [results[name, d][0] for d in train_depths], marker="o", label=label)
ax.axhline(data.floor_bpc, color="k", ls=":", label="entropy floor")
ax.set_xlabel("layers")
ax.set_ylabel("validation bits / char")
ax.set_title("char-LM after 200 steps")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# With the same budget, the plain stacks get *worse* as they get deeper, in step with
# the gradient that reaches their bottom layers; the residual stacks get better with
# depth. One seed and a tiny budget are enough to show the direction; the full
# experiment (`python -m rnncore.experiments depth`) uses more steps and several seeds.
# In large systems the same observation made Google's translation model (Wu et al.
# 2016) add residual connections to go beyond four LSTM layers.
