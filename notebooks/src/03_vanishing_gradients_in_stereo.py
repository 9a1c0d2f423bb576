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
from course import diagrams

import rnncore
from rnncore import gradflow
from rnncore.drivers import PythonLoop
from rnncore.experiments.common import LMData, lm_layer_gradients, new_lm, train_lm
from rnncore.experiments.vanishing import recurrence_ratios, scaled_orthogonal
from rnncore.stack import stack_backward

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
        nbhelpers.integer_ticks(ax)
        ax.set_yticks(range(1, g.shape[0] + 1) if g.shape[0] <= 8 else [1, g.shape[0]])
    np.atleast_1d(axes)[0].set_ylabel("layer (1 = bottom)")
    fig.colorbar(image, ax=axes, label=r"$\log_{10}\|\partial L/\partial h_t\|$", shrink=0.9)
    fig.suptitle(f"{title} (one colour scale shared by the panels)")
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
# ## Why: a product of Jacobians
#
# With the loss on the last step only, the chain rule through time is a product. For
# the plain RNN, $h_s = \phi(a_s)$ with $a_s = W_{hh} h_{s-1} + W_{ih} x_s + b$ (column
# vectors here), the Jacobian of one step is $\partial h_s / \partial h_{s-1} =
# \operatorname{diag}(\phi'(a_s))\, W_{hh}$, so
#
# $$\frac{\partial L}{\partial h_t} = \Big(\prod_{s=t+1}^{T-1}
#   \operatorname{diag}(\phi'(a_s))\, W_{hh}\Big)^{\!\top}
#   \frac{\partial L}{\partial h_{T-1}}, \qquad
#   \Big\lVert \frac{\partial L}{\partial h_t} \Big\rVert \le
#   (\gamma\, s_{\max})^{T-1-t}\, \Big\lVert \frac{\partial L}{\partial h_{T-1}}
#   \Big\rVert,$$
#
# with $s_{\max}$ the largest singular value of $W_{hh}$ and $\gamma \ge
# |\phi'|$ ($\gamma = 1$ for tanh). This is Pascanu, Mikolov and Bengio's (2013)
# argument: $s_{\max} < 1/\gamma$ is *sufficient* for the gradient to vanish
# exponentially, and $s_{\max} > 1/\gamma$ is *necessary* (not sufficient) for it to
# explode. For a **linear** RNN ($\phi(a) = a$) with $W_{hh} = c\,Q$, $Q$ orthogonal,
# every factor is $c\,Q$ and $Q^\top$ keeps norms, so the ratio $r_k = \lVert \partial
# L/\partial h_{T-1-k} \rVert / \lVert \partial L/\partial h_{T-1} \rVert$ is exactly
# $c^k$. The engine's backward pass (its Elman cell with the identity in place of tanh,
# `rnncore.experiments.vanishing`) against the law, and the tanh RNN against its bound:

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 2.8))
k = np.arange(T)
for c in (0.8, 0.9, 1.0, 1.1):
    r = recurrence_ratios(scaled_orthogonal(H, c, seed=0), "linear", T=T)
    a.semilogy(k, r, marker=".", ms=3, label=f"c = {c}")
    a.semilogy(k, c ** k, color="k", lw=0.6, ls=":")
    print(f"linear, c = {c}: max over k of |r_k / c^k − 1| = {np.abs(r / c**k - 1).max():.1e}")
for s_max in (0.9, 1.5, 3.0):
    r = recurrence_ratios(scaled_orthogonal(H, s_max, seed=0), "tanh", T=T)
    b.semilogy(k, r, marker=".", ms=3, label=f"$s_{{max}}$ = {s_max}")
    print(f"tanh,   s = {s_max}: r_59 = {r[-1]:.1e}, bound s^59 = {s_max ** (T - 1):.1e}, "
          f"per step {r[-1] ** (1 / (T - 1)):.2f}")
a.set_title("linear RNN: measured (dots), $c^k$ (dotted)")
b.set_title("tanh RNN: far inside the bound $s^k$")
for ax in (a, b):
    ax.set_xlabel("steps back k")
    nbhelpers.integer_ticks(ax)
    ax.set_ylabel("$r_k$")
    ax.legend(fontsize=7, loc="lower left")
plt.tight_layout()
plt.show()

# %% [markdown]
# The $c^k$ law holds to rounding error, below, at and above $c = 1$. The tanh RNN
# decays much faster than its bound, because $\tanh' < 1$ wherever the state is not
# zero; even $s_{\max} = 1.5$ vanishes, and only a strongly expanding $W_{hh}$ (3) makes
# the gradient grow, far more slowly than $3^k$.
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
nbhelpers.integer_ticks(ax)
ax.set_ylabel(r"$\|\partial L/\partial c_t\|$ (relative)")
ax.set_title("one LSTM layer: the memory path at initialisation")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The measured factor per step is larger than $\sigma(\text{bias})$, for three reasons.
# $f_t = \sigma(b_f + \text{input and recurrent terms})$ varies around the bias from unit
# to unit and step to step (and the mean of $\sigma$ lies a little below $\sigma$ of the
# mean here); over many steps the norm of $\partial L/\partial c_t$ is dominated by the
# units whose $f$ happens to stay largest, because a product of factors decays at the
# rate of its slowest components, not at the average rate; and the $h$ path of notebook
# 1 (through $W_{hh}$) adds gradient on top of the $f$ path. Measured on the same runs:
# the mean of $f$, and the per-step factor of the $f$ path alone, the RMS over units of
# $\prod_t f_t$:

# %%
print(f"{'bias':>5}{'σ(bias)':>9}{'mean f':>8}{'f path alone':>14}{'measured':>10}")
for fb in (0.0, 1.0, 3.0):
    lstm = rnncore.LSTM(H, H, num_layers=1, dtype="float64", seed=0, forget_bias=fb)
    x = np.random.default_rng(1).standard_normal((T, B, H))
    lstm(x)
    f = lstm.last_cache.layers[0][0].saved["gates"][:, :, H : 2 * H]
    f_path = np.sqrt(np.mean(np.prod(f[1:-1], axis=0) ** 2)) ** (1 / (T - 2))
    c = memory_decay(fb)
    print(f"{fb:>5g}{1 / (1 + np.exp(-fb)):>9.3f}{f.mean():>8.3f}{f_path:>14.3f}"
          f"{(c[0] / c[-1]) ** (1 / (len(c) - 1)):>10.3f}")

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
ax.legend(fontsize=8, loc="upper left")  # above the residual line, left of the plain one
plt.show()
for res in ratios:
    print(f"{res:<7}", "  ".join(f"L={d}: {r:.2g}" for d, r in zip(depths, ratios[res])))

# %% [markdown]
# In the plain stack the bottom layer's gradient falls by roughly the same factor with
# every layer added: an exponential in depth. With residual connections the ratio stays
# near one at any depth.
#
# ### Backprop through depth, in the engine's loop order
#
# In the engine's indexing (`rnncore/stack.py`) layer $k$ reads the sequence $u_k$
# ($u_0 = x$) and $u_{k+1} = m_k \odot (\text{RNN}_k(u_k) + u_k)$, with the residual
# term only when `residual="layers"` and $m_k$ the dropout mask between layers (all ones
# without dropout). Backward, the gradient arriving at $u_{k+1}$ goes through the mask
# and then splits: into layer $k$'s own BPTT (which returns $\partial L/\partial u_k$
# through the layer, $J_k^\top$ applied to it, $J_k$ the Jacobian of the whole layer
# over all steps) and, unchanged, along the residual:
#
# $$\frac{\partial L}{\partial u_k} = J_k^\top\Big(m_k \odot \frac{\partial
#   L}{\partial u_{k+1}}\Big) + m_k \odot \frac{\partial L}{\partial u_{k+1}},
#   \qquad\text{so}\qquad
#   \frac{\partial L}{\partial x} = (J_0 + I)^\top (J_1 + I)^\top \cdots
#   (J_{L-1} + I)^\top\, \frac{\partial L}{\partial\,\text{out}}$$
#
# (the second form for a loss on the output only, without dropout). Without the
# residual this is $\prod_k J_k^\top$, a product that shrinks geometrically when each
# layer shrinks; with it, the expanded product contains
# the identity term, a path on which no layer can shrink the gradient. The loop order
# matters: layer $k$'s BPTT needs $\partial L/\partial u_{k+1}$ at **every** step, which
# is complete only after layer $k+1$'s time loop has finished, so the engine runs depth
# outside and time inside, top layer first. The same lines in `stack_backward` (`dy` is
# $\partial L/\partial u_{k+1}$, `du` becomes $\partial L/\partial u_k$; `dx_d` is what
# direction $d$ of layer $k$ returns):

# %%
nbhelpers.show_source(stack_backward, start="dy = dout", stop="dx = dy if")

# %% [markdown]
# The same contrast as heatmaps, 8 layers:

# %%
deep = {label: gradflow.run_config(gradflow.Config("lstm", 8, res, "pytorch", "zeros"),
                                   T, B, H, seed=0).h[:, 0, :]
        for label, res in (("plain, 8 layers", "none"), ("residual, 8 layers", "layers"))}
plot_heatmaps(deep, "LSTM, loss on the last step")

# %% [markdown]
# In the unrolled graph the residual paths are the green arcs: each skips one layer at
# one step, and the gradient runs back along them unchanged.

# %%
diagrams.draw_unrolled(layers=3, steps=4, residual=True)
plt.show()

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
ax.legend(fontsize=8, loc="upper left")  # above both curves at 1-2 layers
plt.show()

# %% [markdown]
# With the same budget, the plain stacks get *worse* as they get deeper, in step with
# the gradient that reaches their bottom layers; the residual stacks get better with
# depth. One seed and a tiny budget are enough to show the direction; the full
# experiment (`python -m rnncore.experiments depth`) uses more steps and several seeds.
# In large systems the same observation made Google's translation model (Wu et al.
# 2016) add residual connections to go beyond four LSTM layers.
