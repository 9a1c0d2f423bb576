# Notebook 2 source: build with `python notebooks/build.py --execute 02`.

# %% [markdown]
# # 2. Going deep
#
# One recurrent layer turns a sequence of inputs into a sequence of hidden states. A
# *deep* RNN stacks layers: layer $k+1$ reads the whole output sequence of layer $k$ as
# its input sequence. This notebook follows the shapes through the classic example
# (a 3-layer, batch-first LSTM), takes the stack apart layer by layer, adds the
# reverse direction, and finally checks that the same weights give the same numbers in
# `torch.nn`.

# %%
import matplotlib.pyplot as plt
import nbhelpers
import numpy as np

import rnncore

nbhelpers.setup()
rng = np.random.default_rng(0)

# %% [markdown]
# ## The classic example
#
# A batch of 32 sequences, 50 steps each, 100 features per step; three LSTM layers of
# 128 units. `batch_first=True` means arrays are laid out (batch, time, features), as
# most data loaders produce them. (Inside, rnncore works time-major, (time, batch,
# features), so that one time step is one contiguous block; `batch_first` is handled
# at the front door.)

# %%
lstm = rnncore.LSTM(100, 128, num_layers=3, batch_first=True, seed=0)
x = rng.standard_normal((32, 50, 100)).astype(np.float32)

out, (h_n, c_n) = lstm(x)
print("input ", x.shape, "  (batch, time, features)")
print("output", out.shape, "  (batch, time, hidden): the LAST layer's h at every step")
print("h_n   ", h_n.shape, "  (layers, batch, hidden): EVERY layer's h at the last step")
print("c_n   ", c_n.shape, "  (layers, batch, hidden): every layer's cell state, last step")

# %% [markdown]
# Note the asymmetry: `output` runs along time but only for the top layer; `h_n` and
# `c_n` run along depth but only for the final step. They meet in one place, the top
# layer at the last step. `h_n` is never batch-first, whatever `batch_first` says (the
# same convention as torch.nn).

# %%
print("output[:, -1] == h_n[-1]:", np.array_equal(out[:, -1], h_n[-1]))

# %% [markdown]
# The parameters, under torch.nn's names. Each layer has its own four tensors; the
# four gates' weights are stacked along the rows ($4 \times 128 = 512$). Only layer 0
# reads the 100 input features; layers 1 and 2 read the 128 outputs of the layer below.

# %%
total = 0
for name, value in lstm.named_parameters():
    total += value.size
    print(f"{name:<14} {str(value.shape):<11} {value.size:>7,}")
print(f"{'total':<26} {total:>7,}")

# %% [markdown]
# ## What each layer sees
#
# A stack is nothing more than layers run one after another over the whole sequence.
# To see it, cut the 3-layer module into three 1-layer modules with the same weights
# (renaming `…_l1` to `…_l0` and loading it with `load_state_dict`), and feed each
# one's output sequence to the next:

# %%
def layer_as_module(stack, k):
    """Layer k of a unidirectional stack as a 1-layer module with the same weights."""
    width = stack.input_size if k == 0 else stack.hidden_size
    one = rnncore.LSTM(width, stack.hidden_size, batch_first=True)
    one.load_state_dict({name.replace(f"_l{k}", "_l0"): value
                         for name, value in stack.state_dict().items()
                         if name.endswith(f"_l{k}")})
    return one


u, per_layer = x, []
for k in range(3):
    seen = u.shape
    u, (h_k, c_k) = layer_as_module(lstm, k)(u)
    per_layer.append(u)
    print(f"layer {k}: reads {seen}, writes {u.shape};",
          f"final h == h_n[{k}]: {np.allclose(h_k[0], h_n[k], atol=1e-6)},",
          f"final c == c_n[{k}]: {np.allclose(c_k[0], c_n[k], atol=1e-6)}")
print("top layer's sequence equals output:", np.allclose(u, out, atol=1e-6))

# %% [markdown]
# The pictures below show one sequence on its way up: the input, then each layer's
# output (first 40 units), time running left to right. Each panel has its own colour
# scale (its colour bar), symmetric about zero, because the values shrink by an order of
# magnitude per layer and one shared scale would leave the upper panels blank. Every
# layer has the same shape of output, so a stack can be as deep as you like; notebook 3
# shows why, in practice, people stop at three or four layers.

# %%
fig, axes = plt.subplots(1, 4, figsize=(10, 2.4), sharey=True)
panels = [("input x (first 40 features)", x[0, :, :40])]
panels += [(f"layer {k} output", per_layer[k][0, :, :40]) for k in range(3)]
for ax, (title, data) in zip(axes, panels):
    limit = np.abs(data).max()
    image = ax.imshow(data.T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    ax.set_title(title)
    ax.set_xlabel("time step")
    ax.set_xticks(range(0, 50, 10))
axes[0].set_ylabel("feature / unit")
plt.tight_layout()
plt.show()

# %% [markdown]
# Two things change on the way up, and the pictures mix them. Each unit's output is a
# constant offset (set by the biases) plus a part that varies over time, and the
# **time-varying part fades** with depth. Measure it separately: its size (the standard
# deviation over time, averaged over units and sequences), and how rough it is relative
# to itself, the mean step-to-step change $|u_t - u_{t-1}|$ over that same standard
# deviation (white noise scores $2/\sqrt{\pi} \approx 1.13$), and the correlation of
# consecutive steps:

# %%
def over_time(seq):
    """(std over time, roughness relative to it, lag-1 autocorrelation), per unit, averaged."""
    std = seq.std(axis=1)
    rough = (np.abs(np.diff(seq, axis=1)).mean(axis=1) / std).mean()
    d = seq - seq.mean(axis=1, keepdims=True)
    return std.mean(), rough, (d[:, 1:] * d[:, :-1]).mean() / (d * d).mean()


print(f"{'':<9}{'std over time':>14}{'roughness':>11}{'lag-1 corr.':>12}{'overall std':>12}")
for name, seq in [("input x", x)] + [(f"layer {k}", per_layer[k]) for k in range(3)]:
    std, rough, corr = over_time(seq)
    print(f"{name:<9}{std:>14.3f}{rough:>11.2f}{corr:>12.2f}{seq.std():>12.3f}")

# %% [markdown]
# Both are true, in different measure. Relative to its own variation each layer is
# smoother than the one below (roughness 1.15 → 0.86 → 0.56 → 0.37, consecutive steps
# ever more correlated): an LSTM's state is a running blend of its past (the forget gate
# keeps part of $c_{t-1}$), so a layer acts as a low-pass filter on what it reads. But
# the bigger effect is the fading: the part of the output that varies over time shrinks
# four- to eightfold per layer at this random initialisation, while the constant offsets do
# not (compare the last two columns), so in the top panel most of what is left is the
# offset. Trained weights change both numbers; nothing here says that a trained stack
# must smooth its input.
#
# ## Gradients have the same shapes going back
#
# `backward` takes $\partial L/\partial\,\text{output}$ (and optionally
# $\partial L/\partial (h_n, c_n)$) and returns $\partial L/\partial x$ and
# $\partial L/\partial (h_0, c_0)$ in the same layouts, adding the parameter gradients
# into `lstm.grads` under the parameters' names. Backpropagation goes through time
# within a layer and through depth from layer to layer, the exact reverse of the
# forward pass.

# %%
lstm.zero_grad()
dout = rng.standard_normal(out.shape).astype(np.float32)
dx, (dh0, dc0) = lstm.backward(dout)
print("dx ", dx.shape, " dh0", dh0.shape, " dc0", dc0.shape)
print("grads:", {name: g.shape for name, g in list(lstm.grads.items())[:4]}, "…")

# %% [markdown]
# ## Both directions
#
# A unidirectional layer's output at step $t$ has seen only $x_0 \dots x_t$. A
# bidirectional layer runs a second LSTM, with its own weights, from the last step to
# the first, and concatenates the two outputs feature-wise, so every step sees the
# whole sequence. The next layer then reads $2 \times 128 = 256$ features.

# %%
bi = rnncore.LSTM(100, 128, num_layers=3, batch_first=True, bidirectional=True, seed=0)
out_bi, (h_bi, c_bi) = bi(x)
print("output", out_bi.shape, "  [forward 128 | reverse 128] at every step")
print("h_n   ", h_bi.shape, "  (layers × directions, batch, hidden)")
for name in ("weight_ih_l0", "weight_ih_l0_reverse", "weight_ih_l1", "weight_hh_l1_reverse"):
    print(f"  {name:<22} {bi.params[name].shape}")

# %% [markdown]
# The $6$ rows of `h_n` are ordered layer by layer, forward before reverse:
# row $2k + d$ is layer $k$, direction $d$ (0 forward, 1 reverse), so
# `h_n.reshape(3, 2, batch, hidden)` separates them. Each direction's *final* step is
# a different time step: the forward direction ends at $t = T-1$, the reverse
# direction at $t = 0$. So the top layer's entries of `h_n` sit at opposite ends of
# `output`:

# %%
H = 128
layers_dirs = h_bi.reshape(3, 2, 32, H)
print("top forward  == output[:, -1, :128]:", np.array_equal(layers_dirs[2, 0], out_bi[:, -1, :H]))
print("top reverse  == output[:, 0, 128:]: ", np.array_equal(layers_dirs[2, 1], out_bi[:, 0, H:]))
print("top reverse  == output[:, -1, 128:]:", np.array_equal(layers_dirs[2, 1], out_bi[:, -1, H:]))

# %% [markdown]
# A common bug is to take `output[:, -1]` as "the summary of the sequence" in a
# bidirectional model: its reverse half is the reverse direction after a single step.
# Use `h_n` (or concatenate `output[:, -1, :H]` with `output[:, 0, H:]`).
#
# With sequences of different lengths the rule is the same but "last" is per
# sequence. Pass `lengths`: padded steps output zeros and leave the state alone, and
# the reverse direction starts at each sequence's own last step (as a PyTorch
# `PackedSequence` would).

# %%
lengths = rng.integers(10, 51, size=32)
out_var, (h_var, _) = bi(x, lengths=lengths)
top = h_var.reshape(3, 2, 32, H)[2]
forward_end = np.stack([out_var[b, n - 1, :H] for b, n in enumerate(lengths)])
print("lengths[:8]:", lengths[:8])
print("top forward == output at step length−1:", np.array_equal(top[0], forward_end))
print("top reverse == output at step 0:       ", np.array_equal(top[1], out_var[:, 0, H:]))
print("padded steps are zero:", all(np.all(out_var[b, n:] == 0) for b, n in enumerate(lengths)))

# %% [markdown]
# ## The same numbers in torch.nn
#
# rnncore uses torch.nn's parameter names, shapes and gate order, so a torch
# `state_dict` loads as it is (converted to NumPy). If PyTorch is installed, we build a
# bidirectional 3-layer `torch.nn.LSTM`, copy its weights into an rnncore module, run
# both forward and backward on the same data, and compare everything.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed; skipping the comparison (pip install torch to run it).")

# %%
if torch is not None:
    torch.manual_seed(0)
    reference = torch.nn.LSTM(100, 128, num_layers=3, batch_first=True, bidirectional=True)
    ours = rnncore.LSTM(100, 128, num_layers=3, batch_first=True, bidirectional=True)
    ours.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})

    x_t = torch.from_numpy(x).requires_grad_()
    out_t, (h_t, c_t) = reference(x_t)
    dout = rng.standard_normal(out_t.shape).astype(np.float32)
    out_t.backward(torch.from_numpy(dout))

    ours.zero_grad()
    out_o, (h_o, c_o) = ours(x)
    dx_o, _ = ours.backward(dout)

    pairs = {"output": (out_o, out_t), "h_n": (h_o, h_t), "c_n": (c_o, c_t),
             "∂L/∂x": (dx_o, x_t.grad)}
    pairs.update({f"∂L/∂{name}": (ours.grads[name], param.grad)
                  for name, param in reference.named_parameters()})
    worst = {name: np.abs(a - b.detach().numpy()).max() / np.abs(b.detach().numpy()).max()
             for name, (a, b) in pairs.items()}
    for name in ["output", "h_n", "c_n", "∂L/∂x", "∂L/∂weight_hh_l0", "∂L/∂weight_ih_l2_reverse"]:
        print(f"{name:<26} max |rnncore − torch| / max |torch| = {worst[name]:.1e}")
    print(f"worst over all {len(worst)} compared tensors: {max(worst.values()):.1e} (float32)")

# %% [markdown]
# The differences are at float32 rounding level: the two implementations compute the
# same function and the same gradients, summed in a different order.
