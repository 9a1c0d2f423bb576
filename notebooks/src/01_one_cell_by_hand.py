# Notebook 1 source: build with `python notebooks/build.py --execute 01`.

# %% [markdown]
# # 1. One cell, by hand
#
# A recurrent network applies the same small function, the *cell*, at every time step
# and threads a state from one step to the next. This notebook takes the LSTM cell and
# the GRU cell apart:
#
# 1. the step equations next to the lines of rnncore that compute them;
# 2. one step forward and one step backward, worked by hand and checked against the
#    `rnncore.LSTM` module;
# 3. backpropagation through time (BPTT) in a dozen lines;
# 4. a finite-difference gradient check, which we then break on purpose.
#
# Everything runs in float64 on the CPU in a few seconds.

# %%
import matplotlib.pyplot as plt
import nbhelpers
import numpy as np
from course import diagrams

import rnncore
from rnncore.cells import gru, lstm
from rnncore.drivers import PythonLoop
from rnncore.gradcheck import check_module_gradients

nbhelpers.setup()
rng = np.random.default_rng(0)

# %% [markdown]
# ## The LSTM step
#
# At step $t$ the cell sees the input $x_t$ (shape $B \times I$ for a batch of $B$) and
# its previous state $(h_{t-1}, c_{t-1})$, each $B \times H$. Two matrix products make
# the pre-activations of all four gates at once,
#
# $$z = \underbrace{x_t W_{ih}^\top + b_{ih}}_{\texttt{xg}}
#     + \underbrace{h_{t-1} W_{hh}^\top + b_{hh}}_{\texttt{hg}}
#     \in \mathbb{R}^{B \times 4H},$$
#
# and $z$ is cut into four blocks of $H$ columns, in PyTorch's order
# **i**nput, **f**orget, cell candidate **g**, **o**utput:
#
# $$i = \sigma(z_i), \quad f = \sigma(z_f), \quad g = \tanh(z_g), \quad o = \sigma(z_o)$$
#
# $$c_t = f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(c_t).$$
#
# After the two matrix products everything is element-wise. rnncore cuts the step at
# exactly that line: the products live in the cell's step and the time loop around it,
# the element-wise part in `pointwise_forward` (which the fused CUDA kernel of
# notebook 7 replaces). Here it is:

# %%
nbhelpers.show_source(lstm.pointwise_forward)

# %% [markdown]
# Read it against the equations:
#
# * `gates = xp.add(xg, hg, out=gates)` is $z$; both biases are already inside `xg`
#   and `hg`. (`xp` is NumPy or CuPy. The `out=` buffers let rnncore's time loop hand
#   in arrays allocated once before the loop starts; called without `out`, as below,
#   the function allocates its own.)
# * $i$ and $f$ are neighbours, so one sigmoid covers the first $2H$ columns; tanh
#   makes $g$ and a sigmoid makes $o$. They overwrite `gates` in place, so afterwards
#   `gates` holds the *activated* gates, which is exactly what the backward pass needs.
#   (rnncore computes $\sigma(a)$ as $\tfrac12 \tanh(a/2) + \tfrac12$, an exact
#   identity that is faster in NumPy.)
# * `c = f * c_prev`, then `c += i * g`, and `h = o * tanh_c` are the last two
#   equations, letter for letter.
# * `carry(valid, new, old)` is for padded batches: where a sequence has already ended
#   (`valid` false) the state is passed on unchanged. With `valid=None` (every
#   sequence full length) it simply returns the new state.
# * The cache keeps the activated gates, $c_{t-1}$ and $\tanh(c_t)$: nothing more.
#
# Where do `xg` and `hg` come from? In rnncore a cell is a *declaration*: the `LSTM`
# class in `rnncore/cells/lstm.py` states its state tensors `("h", "c")`, its gates,
# its parameters, the per-step buffers it saves, and how to take **one** step forward
# and back. It owns no loop. Its `forward_step` issues the recurrent product, one GEMM
# per step (`ops.gemm(...)` writes $h_{t-1} W_{hh}^\top$ into `saved["hg"]`), then the
# pointwise call (`ops.pw` is the NumPy reference or the fused kernels); the `else`
# branch is LSTMP's projection $h_t = W_{hr}(o \odot \tanh c_t)$, unused here:

# %%
nbhelpers.show_source(lstm.LSTM.forward_step)

# %% [markdown]
# The time loop belongs to a **driver**, `rnncore.drivers.PythonLoop`, the same for
# every cell; so a new kind of cell is one file in `rnncore/cells/` (plus, for the
# GPU's fused path, its kernel), and nothing outside it changes. The driver also does
# the input product: it does not depend on the state, so it runs for all $T$ steps as
# a single GEMM before the loop ("hoisting"), with both biases $b_{ih} + b_{hh}$ (the
# cell's `input_bias`) added there, once. Then it allocates every per-step buffer the
# cell declares (`saved_widths`), once, and calls `forward_step` with step $t$'s
# slices:

# %%
nbhelpers.show_source(PythonLoop.forward, start="xg = filled", stop="valid = inputs.get")

# %% [markdown]
# `filled` makes an array that starts as a broadcast bias; `gemm(..., beta=1.0)` then
# adds the product onto it. `prefill` is the same trick for a cell whose recurrent
# product must start from $b_{hh}$ (the GRU's, below); the LSTM has none. `_at(saved, t)`
# hands the step the $t$-th slices of the buffers, so `forward_step` writes straight into
# the arrays the backward pass will read, and `ops` carries the `gemm` and the pointwise
# namespace `pw`.

# %% [markdown]
# ## One step forward, three ways
#
# We take a one-layer float64 `rnncore.LSTM` with $I = 3$ inputs and $H = 4$ units. Its
# parameters carry torch.nn's names and shapes: the four gates' weights are stacked
# row-wise, so `weight_ih_l0` is $4H \times I$. The module's `.cell` is the declaration
# it was built from, found by name in the registry of cells
# (`rnncore.Recurrent("lstm", I, H)` builds the same module), and after a forward pass
# `last_cache.layers[k][d].saved` holds the per-step buffers the declaration asked for.

# %%
I, H, B = 3, 4, 2
cell = rnncore.LSTM(I, H, dtype="float64", seed=0)
for name, value in cell.params.items():
    print(f"{name:<14} {str(value.shape):<8}")
W_ih, W_hh = cell.params["weight_ih_l0"], cell.params["weight_hh_l0"]
b_ih, b_hh = cell.params["bias_ih_l0"], cell.params["bias_hh_l0"]

x = rng.standard_normal((B, I))
h_prev = 0.5 * rng.standard_normal((B, H))
c_prev = 0.5 * rng.standard_normal((B, H))

print("\ncell:", cell.cell, "state", cell.cell.state, "gates", cell.cell.gates)
print("registered cells:", rnncore.cells.names())
cell(x[None])
saved = cell.last_cache.layers[0][0].saved
print("saved per step:", {name: buf.shape for name, buf in saved.items()}, "(T, B, width)")

# %% [markdown]
# First, the equations typed straight into NumPy:

# %%
def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


z = x @ W_ih.T + b_ih + h_prev @ W_hh.T + b_hh
i, f = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H])
g, o = np.tanh(z[:, 2 * H : 3 * H]), sigmoid(z[:, 3 * H :])
c_hand = f * c_prev + i * g
h_hand = o * np.tanh(c_hand)

# %% [markdown]
# Second, rnncore's pointwise function fed with the two products; third, the whole
# module run on a sequence of length one (a leading time axis of 1, and the initial
# state as `(h0, c0)` with a leading layer axis of 1):

# %%
xg = x @ W_ih.T + b_ih
hg = h_prev @ W_hh.T + b_hh
h_pw, c_pw, cache = lstm.pointwise_forward(xg, hg, h_prev, c_prev, None)

out, (h_n, c_n) = cell(x[None], (h_prev[None], c_prev[None]))

print("pointwise vs by hand:", np.abs(h_pw - h_hand).max(), np.abs(c_pw - c_hand).max())
print("module    vs by hand:", np.abs(h_n[0] - h_hand).max(), np.abs(c_n[0] - c_hand).max())
print("cache:", {name: value.shape for name, value in cache._asdict().items()})

# %% [markdown]
# The three agree to rounding error ($10^{-16}$): it is the same arithmetic.
#
# ## One step backward
#
# The picture shows the step just computed. Black arrows are the forward pass; the red
# dashed arrows run the other way and carry the gradients the backward pass computes,
# labelled with the factor each one picks up. (It is drawn by `notebooks/course/diagrams.py`
# from the same equations, each time the notebook runs.)

# %%
diagrams.draw_lstm_cell()
plt.show()

# %% [markdown]
# Say a loss $L$ depends on $h_t$ and $c_t$, and we are handed
# $\partial L/\partial h_t$ and $\partial L/\partial c_t$ (written $\partial h$,
# $\partial c$). The chain rule, backwards through the forward equations:
#
# 1. $c_t$ also reaches $L$ through $h_t = o \odot \tanh(c_t)$, so the total is
#    $\partial c \mathrel{+}= \partial h \odot o \odot (1 - \tanh^2 c_t)$.
# 2. Through the products: $\partial o = \partial h \odot \tanh c_t$,
#    $\partial i = \partial c \odot g$, $\partial g = \partial c \odot i$,
#    $\partial f = \partial c \odot c_{t-1}$, and $\partial c_{t-1} = \partial c \odot f$.
# 3. Through the nonlinearities, using $\sigma' = \sigma(1-\sigma)$ and
#    $\tanh' = 1 - \tanh^2$ written in terms of the saved *outputs*:
#    $\partial z = [\partial i \odot i(1-i),\ \partial f \odot f(1-f),\
#    \partial g \odot (1-g^2),\ \partial o \odot o(1-o)]$. No exponential is
#    recomputed.
# 4. Through the two products: $\partial x_t = \partial z\, W_{ih}$,
#    $\partial h_{t-1} = \partial z\, W_{hh}$, $\partial W_{ih} = \partial z^\top x_t$,
#    $\partial W_{hh} = \partial z^\top h_{t-1}$, and both bias gradients are
#    $\sum_b \partial z$.
#
# Steps 1–3 are `pointwise_backward`:

# %%
nbhelpers.show_source(lstm.pointwise_backward)

# %% [markdown]
# (`split_grad` and the `*_carried` terms are the padded-step rule again; with
# `valid=None` they pass the gradient through untouched. `store` writes into an `out=`
# buffer when one is given.) Now step 4 by hand, against the module's
# `backward`. The module takes $\partial L/\partial\,\text{output}$ and, optionally,
# $\partial L/\partial (h_n, c_n)$; here the loss is on the final state only, so the
# output gradient is zero.

# %%
dh = rng.standard_normal((B, H))
dc = rng.standard_normal((B, H))
dz, _, dc_prev_hand = lstm.pointwise_backward(dh, dc, cache, None)
grads_hand = {
    "weight_ih_l0": dz.T @ x,
    "weight_hh_l0": dz.T @ h_prev,
    "bias_ih_l0": dz.sum(axis=0),
    "bias_hh_l0": dz.sum(axis=0),
}
dx_hand, dh_prev_hand = dz @ W_ih, dz @ W_hh

cell.zero_grad()
cell(x[None], (h_prev[None], c_prev[None]))
dx, (dh0, dc0) = cell.backward(np.zeros((1, B, H)), (dh[None], dc[None]))

for name, value in grads_hand.items():
    print(f"{name:<14} max |hand − module| = {np.abs(value - cell.grads[name]).max():.1e}")
print(f"{'input':<14} max |hand − module| = {np.abs(dx_hand - dx[0]).max():.1e}")
print(f"{'h0, c0':<14} max |hand − module| = "
      f"{max(np.abs(dh_prev_hand - dh0[0]).max(), np.abs(dc_prev_hand - dc0[0]).max()):.1e}")

# %% [markdown]
# ## Through time
#
# Over a sequence the same step runs $T$ times and the state threads through. The
# backward pass walks the steps in reverse. At step $t$ the gradient reaching $h_t$
# has two sources: the loss's own term for the output at $t$, and what step $t+1$ sent
# back through $h_t W_{hh}^\top$ and $c_t$. The weights are shared by every step, so
# their gradients are sums over $t$. In the unrolled graph (one layer, five steps; the
# highlighted state is $h_2$):

# %%
diagrams.draw_unrolled(layers=1, steps=5, focus=(2, 0))
plt.show()

# %% [markdown]
# ### The whole gradient at $c_{t-1}$
#
# The step above handed back $\partial c_t \odot f_t$ as "$\partial c_{t-1}$". That is
# one of **two** paths from $c_{t-1}$ to the loss. The other goes through the previous
# output: $h_{t-1} = o_{t-1} \odot \tanh c_{t-1}$ reaches step $t$ through
# $h_{t-1} W_{hh}^\top$ (all four gates) and reaches the loss's own term $\ell_{t-1}$ at
# step $t-1$. Writing $\partial h_{t-1} = \partial \ell_{t-1}/\partial h_{t-1} +
# \partial z_t\, W_{hh}$ for the total gradient at $h_{t-1}$,
#
# $$\frac{\partial L}{\partial c_{t-1}}
#   = \underbrace{\frac{\partial L}{\partial c_t} \odot f_t}_{\text{the } f \text{ path}}
#   + \underbrace{\Big(\frac{\partial \ell_{t-1}}{\partial h_{t-1}} + \partial z_t\,
#     W_{hh}\Big) \odot o_{t-1} \odot (1 - \tanh^2 c_{t-1})}_{\text{the } h_{t-1}
#     \text{ path, through } W_{hh}},$$
#
# where $\partial z_t$ itself depends on $\partial L/\partial c_t$ (blocks $i, f, g$) and
# on $\partial L/\partial h_t$ (block $o$). The code never writes this sum in one place:
# step $t$'s `pointwise_backward` returns the $f$ path, and at step $t-1$ its first line,
# `dc = dc + dh * o * (1 - tanh_c * tanh_c)`, adds the $h$ path once $\partial h_{t-1}$ is
# known. Only the $f$ path is free of weight matrices and of saturating derivatives,
# which is why a forget gate near 1 lets gradients travel far (notebook 3 measures it).
#
# Below is a complete LSTM layer, forward and BPTT, built from the two pointwise
# functions. Like rnncore's driver it hoists the input product out of the loop, and
# forms $\partial W_{ih}$ and $\partial x$ after the loop as single products over all
# steps. (`einsum("tbg,tbi->gi")` is $\sum_t \partial z_t^\top x_t$.)

# %%
def lstm_forward_by_hand(params, x, h0, c0):
    W_ih, W_hh, b_ih, b_hh = params
    xg = x @ W_ih.T + b_ih                      # (T, B, 4H): every step's input part at once
    h, c, outs, caches = h0, c0, [], []
    for t in range(len(x)):
        h_prev = h
        h, c, step_cache = lstm.pointwise_forward(xg[t], h @ W_hh.T + b_hh, h, c, None)
        outs.append(h)
        caches.append((step_cache, h_prev))
    return np.stack(outs), (h, c), caches


def lstm_backward_by_hand(params, x, caches, dout, pointwise_backward=lstm.pointwise_backward):
    W_ih, W_hh, _, _ = params
    dh = np.zeros_like(dout[0])                 # nothing flows in from after the last step
    dc = np.zeros_like(dout[0])
    dW_hh = np.zeros_like(W_hh)
    dz_all, dh_norms = [None] * len(x), [None] * len(x)
    for t in reversed(range(len(x))):
        step_cache, h_prev = caches[t]
        dh = dh + dout[t]                       # the loss's term at t + what t+1 sent back
        dh_norms[t] = np.linalg.norm(dh)
        dz, _, dc = pointwise_backward(dh, dc, step_cache, None)
        dW_hh += dz.T @ h_prev
        dh = dz @ W_hh                          # on to h_{t-1}
        dz_all[t] = dz
    dz = np.stack(dz_all)
    grads = {"weight_ih_l0": np.einsum("tbg,tbi->gi", dz, x), "weight_hh_l0": dW_hh,
             "bias_ih_l0": dz.sum(axis=(0, 1)), "bias_hh_l0": dz.sum(axis=(0, 1))}
    return dz @ W_ih, (dh, dc), grads, np.array(dh_norms)

# %% [markdown]
# The loss is a fixed random weighting of every output, $L = \sum w \odot
# \text{output}$, so $\partial L/\partial\,\text{output} = w$. The module starts from a
# zero state when no `hx` is given, and so do we.

# %%
T = 6
params = (W_ih, W_hh, b_ih, b_hh)
xs = rng.standard_normal((T, B, I))
w_out = rng.standard_normal((T, B, H))
zeros = np.zeros((B, H))

outs, _, caches = lstm_forward_by_hand(params, xs, zeros, zeros)
dxs_hand, _, grads_hand, _ = lstm_backward_by_hand(params, xs, caches, w_out)

cell.zero_grad()
outs_module, _ = cell(xs)
dxs, _ = cell.backward(w_out)
print("outputs:", np.abs(outs - outs_module).max())
for name in grads_hand:
    print(f"{name:<14}", np.abs(grads_hand[name] - cell.grads[name]).max())
print(f"{'input':<14}", np.abs(dxs_hand - dxs).max())

# %% [markdown]
# rnncore's own backward loop (`PythonLoop.backward`) is the same loop, written once
# for every cell; the cell's `backward_step` supplies the step (for the LSTM:
# `pointwise_backward`, writing $\partial z$ straight into `grads["dxg"][t]`, then one
# GEMM adding $\partial z\, W_{hh}$ into $\partial h_{t-1}$). Instead of a running `dh`
# the driver keeps one buffer `dh` of shape $(T, B, H)$ that starts as
# $\partial L/\partial\,\text{output}$; each step adds its $\partial h_{t-1}$ into
# the slot of the step before. The other state gradients (the LSTM's $\partial c$)
# live in `rest`, two buffers per state that swap roles every step: one is read, the
# other written. States and their gradients are tuples in the cell's declared order,
# $(h, c)$ here. (`record` is the instrument of notebook 3; `None` unless asked for.)

# %%
nbhelpers.show_source(PythonLoop.backward, start="for k in range(T - 1", stop="dxg = grads[")

# %% [markdown]
# How far back does a gradient reach? Put the loss on the **last** output only and
# watch $\lVert \partial L / \partial h_t \rVert$ as the backward pass carries it
# towards $t = 0$. With this small random cell it shrinks by a roughly constant factor
# per step: the vanishing gradient, which notebook 3 studies across cells and depth.

# %%
T_long = 40
xs_long = rng.standard_normal((T_long, B, I))
last_only = np.zeros((T_long, B, H))
last_only[-1] = 1.0
_, _, caches_long = lstm_forward_by_hand(params, xs_long, zeros, zeros)
*_, dh_norms = lstm_backward_by_hand(params, xs_long, caches_long, last_only)

fig, ax = plt.subplots(figsize=(5.5, 2.6))
ax.semilogy(np.arange(T_long), dh_norms, marker=".")
ax.set_xlabel("time step t")
nbhelpers.integer_ticks(ax)
ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
ax.set_title("gradient of a loss on the last step, carried back in time")
plt.show()
print(f"‖∂L/∂h_0‖ / ‖∂L/∂h_{T_long - 1}‖ = {dh_norms[0] / dh_norms[-1]:.1e}")

# %% [markdown]
# The two paths into $c_t$ on this run, measured in the same backward loop: the $f$ path
# (what step $t+1$ handed back, $\partial L/\partial c_{t+1} \odot f_{t+1}$) and the $h$
# path ($\partial h_t \odot o_t \odot (1 - \tanh^2 c_t)$, with $\partial h_t$ including
# $\partial z_{t+1} W_{hh}$). Their sum is the whole $\partial L/\partial c_t$, which the
# finite-difference check further down confirms for the loop as a whole.

# %%
dh_run, dc_run, paths = np.zeros((B, H)), np.zeros((B, H)), []
for t in reversed(range(T_long)):
    step_cache, _ = caches_long[t]
    dh_run = dh_run + last_only[t]
    o_t = step_cache.gates[:, 3 * H :]
    h_path = dh_run * o_t * (1 - step_cache.tanh_c ** 2)
    paths.append((t, np.linalg.norm(dc_run), np.linalg.norm(h_path)))  # dc_run: the f path
    dz, _, dc_run = lstm.pointwise_backward(dh_run, dc_run, step_cache, None)
    dh_run = dz @ W_hh
print(f"{'t':>3} {'‖f path‖':>10} {'‖h path‖':>10}")
for t, f_norm, h_norm in paths[:: T_long // 8]:
    print(f"{t:>3} {f_norm:>10.2e} {h_norm:>10.2e}")

# %% [markdown]
# At the last step nothing has come back along $c$ yet, so all of $\partial L/\partial
# c_{T-1}$ comes through $h$. From then on the $f$ path carries three to fifteen times
# more than the $h$ path in this random cell: most of the gradient reaching a cell state
# arrived along the memory line, multiplied only by forget gates.

# %% [markdown]
# ## The GRU step
#
# The GRU has no separate cell state and three gates, **r**eset, **u**pdate and the
# candidate **n** (PyTorch's order r, u, n). A word on names: PyTorch and rnncore's code
# call the update gate `z`, but here $z$ is already the LSTM's pre-activation, so the
# update gate is $u$; and $h_n$ is the final state a module returns, so the GRU's blocks
# get their own letter. The input and recurrent products, each cut into blocks $r, u, n$:
#
# $$a^x = x_t W_{ih}^\top + b_{ih}, \qquad a^h = h_{t-1} W_{hh}^\top + b_{hh},$$
#
# $$r = \sigma(a^x_r + a^h_r), \quad u = \sigma(a^x_u + a^h_u), \quad
#   n = \tanh(a^x_n + r \odot a^h_n), \quad h_t = (1 - u) \odot n + u \odot h_{t-1}.$$
#
# The reset gate multiplies the recurrent block $a^h_n$ *including its bias*
# $b_{hn}$, which is why the input and recurrent biases cannot be merged into one as
# they can for the LSTM. (This "reset-after" form is PyTorch's and cuDNN's; Cho et
# al.'s original applies $r$ to $h_{t-1}$ before the product: `reset_after=False`,
# registered as its own cell, `gru_reset_before`.)

# %%
nbhelpers.show_source(gru.pointwise_forward)

# %% [markdown]
# `h = n + z * (h_prev - n)` is $(1-u)\,n + u\,h_{t-1}$ rearranged (the code's `z` is
# $u$, its `hn` is $a^h_n$).
#
# ### The GRU step backward
#
# Given $\partial h = \partial L/\partial h_t$, back through the four equations:
#
# 1. $h_t = (1-u) \odot n + u \odot h_{t-1}$ gives three terms:
#    $\partial n = \partial h \odot (1-u)$, $\partial u = \partial h \odot (h_{t-1} - n)$,
#    and a direct $\partial h \odot u$ for $h_{t-1}$.
# 2. Through the tanh, with $p_n = a^x_n + r \odot a^h_n$ its argument:
#    $\partial p_n = \partial n \odot (1 - n^2)$.
# 3. $p_n$ is a sum and a product: $\partial a^x_n = \partial p_n$,
#    $\partial a^h_n = \partial p_n \odot r$, $\partial r = \partial p_n \odot a^h_n$.
# 4. Through the sigmoids: $\partial a_r = \partial r \odot r(1-r)$ and
#    $\partial a_u = \partial u \odot u(1-u)$, and since $r$ and $u$ see the sum
#    $a^x + a^h$, these blocks are the same in $\partial a^x$ and in $\partial a^h$.
# 5. Collected: $\partial a^x = [\partial a_r, \partial a_u, \partial p_n]$,
#    $\partial a^h = [\partial a_r, \partial a_u, r \odot \partial p_n]$, and
#    $\partial h_{t-1} = \partial h \odot u + \partial a^h\, W_{hh}$;
#    $\partial W_{ih} = \partial {a^x}^\top x_t$, $\partial W_{hh} = \partial {a^h}^\top
#    h_{t-1}$, the biases the column sums.
#
# So the two gate gradients differ only in the $n$ block, where $r$ sits between $a^h_n$
# and the tanh. In the picture:

# %%
diagrams.draw_gru_cell()
plt.show()

# %% [markdown]
# rnncore's `pointwise_backward` is steps 1–4 (the code's `da_n` is $\partial p_n$; the
# $W_{hh}$ term of step 5 is the driver's GEMM, as for the LSTM):

# %%
nbhelpers.show_source(gru.pointwise_backward)

# %% [markdown]
# One GRU step by hand against `rnncore.GRU`, forward and backward, in the same way:

# %%
gcell = rnncore.GRU(I, H, dtype="float64", seed=1)
Wg_ih, Wg_hh = gcell.params["weight_ih_l0"], gcell.params["weight_hh_l0"]
bg_ih, bg_hh = gcell.params["bias_ih_l0"], gcell.params["bias_hh_l0"]

ax_r, ax_u, ax_n = np.split(x @ Wg_ih.T + bg_ih, 3, axis=1)
ah_r, ah_u, ah_n = np.split(h_prev @ Wg_hh.T + bg_hh, 3, axis=1)
r, u = sigmoid(ax_r + ah_r), sigmoid(ax_u + ah_u)
n = np.tanh(ax_n + r * ah_n)
h_gru_hand = (1 - u) * n + u * h_prev

gcell.zero_grad()
out, h_last = gcell(x[None], h_prev[None])
print("forward, max |hand − module|:", np.abs(h_last[0] - h_gru_hand).max())

# the derivation above, line by line
dn, du, dp_n = dh * (1 - u), dh * (h_prev - n), dh * (1 - u) * (1 - n**2)
da_r, da_u = dp_n * ah_n * r * (1 - r), du * u * (1 - u)
da_x = np.concatenate([da_r, da_u, dp_n], axis=1)
da_h = np.concatenate([da_r, da_u, r * dp_n], axis=1)
dh_prev_gru = dh * u + da_h @ Wg_hh

dxg, dhg, _ = gru.pointwise_backward(dh, h_prev, gru.GRUCache(r, u, n, ah_n), None)
_, dh0_gru = gcell.backward(np.zeros((1, B, H)), dh[None])
print("∂a^x, ∂a^h vs pointwise_backward:", np.abs(da_x - dxg).max(), np.abs(da_h - dhg).max())
print("∂W_ih,  max |hand − module|:", np.abs(da_x.T @ x - gcell.grads["weight_ih_l0"]).max())
print("∂W_hh,  max |hand − module|:", np.abs(da_h.T @ h_prev - gcell.grads["weight_hh_l0"]).max())
print("∂h_t−1, max |hand − module|:", np.abs(dh_prev_gru - dh0_gru[0]).max())

# %% [markdown]
# ## Checking a gradient with finite differences
#
# Agreement between two implementations of the same derivation proves little: both can
# share one mistake. The independent check is the definition of the derivative. For
# each element $\theta_k$ of a tensor, the central difference
#
# $$\frac{\partial L}{\partial \theta_k} \approx
#   \frac{L(\theta + \varepsilon e_k) - L(\theta - \varepsilon e_k)}{2\varepsilon}$$
#
# has a truncation error of order $\varepsilon^2$; rounding adds an error of order
# $\delta / \varepsilon$ (with $\delta \approx 10^{-16}$ in float64, $10^{-7}$ in
# float32, so checks run in float64). We compare whole tensors by the relative error
# $\lVert a - n \rVert / \max(\lVert a \rVert, \lVert n \rVert)$.

# %%
def finite_difference(loss, theta, eps=1e-6):
    """∂loss/∂theta by central differences, perturbing theta in place, one element at a time."""
    grad = np.zeros_like(theta)
    for k in np.ndindex(theta.shape):
        keep = theta[k]
        theta[k] = keep + eps
        up = loss()
        theta[k] = keep - eps
        down = loss()
        theta[k] = keep
        grad[k] = (up - down) / (2 * eps)
    return grad


def relative_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)

# %% [markdown]
# Check our hand-written BPTT at a generic point: a random initial state, so that no
# term of the derivative happens to vanish.

# %%
h0, c0 = 0.5 * rng.standard_normal((B, H)), 0.5 * rng.standard_normal((B, H))


def make_loss(T_steps, state):
    """L = Σ w ⊙ output over the first T_steps steps, from the initial state given."""
    def loss():
        outs, _, _ = lstm_forward_by_hand(params, xs[:T_steps], *state)
        return float((w_out[:T_steps] * outs).sum())
    return loss


_, _, caches = lstm_forward_by_hand(params, xs, h0, c0)
_, _, grads_hand, _ = lstm_backward_by_hand(params, xs, caches, w_out)
for name, theta in zip(["weight_ih_l0", "weight_hh_l0", "bias_ih_l0"], params):
    numeric = finite_difference(make_loss(T, (h0, c0)), theta)
    print(f"{name:<14} relative error {relative_error(grads_hand[name], numeric):.1e}")

# %% [markdown]
# Every error is many orders of magnitude below $10^{-6}$, the usual float64 pass
# mark: the derivation is right. How small can the error get? Sweep
# $\varepsilon$: too large and truncation dominates (the error falls as
# $\varepsilon^2$), too small and rounding does (it rises as $1/\varepsilon$).

# %%
epsilons = np.logspace(-1, -12, 23)
sweep = [relative_error(grads_hand["weight_hh_l0"],
                        finite_difference(make_loss(T, (h0, c0)), W_hh, eps)) for eps in epsilons]
fig, ax = plt.subplots(figsize=(5.5, 2.6))
ax.loglog(epsilons, sweep, marker=".")
ax.invert_xaxis()
ax.set_xlabel(r"$\varepsilon$")
ax.set_ylabel(r"relative error of $\partial L/\partial W_{hh}$")
ax.set_title("central differences in float64")
plt.show()
print(f"best ε here: {epsilons[int(np.argmin(sweep))]:.0e}")

# %% [markdown]
# rnncore's `check_module_gradients` does this for every parameter, the input and any
# given initial state of a module, element by element for small tensors and along
# random directions for large ones. Here a 2-layer LSTM and a 2-layer GRU:

# %%
x_check = rng.standard_normal((5, 3, I))
for module in (rnncore.LSTM(I, H, num_layers=2, dtype="float64", seed=2),
               rnncore.GRU(I, H, num_layers=2, dtype="float64", seed=2)):
    report = check_module_gradients(module, x_check)
    print(type(module).__name__, f"— largest relative error {report.max_error:.1e}")
    print(report.table(), end="\n\n")

# %% [markdown]
# ## Break it on purpose
#
# Now the point of the exercise. Below is `pointwise_backward` copied (without the
# padded-step handling, which we do not use) with **one sign flipped**: the forget
# gate's derivative. Everything else is untouched.

# %%
def broken_backward(dh, dc, cache, valid):
    """rnncore.cells.lstm.pointwise_backward, copied, with one sign flipped."""
    gates, c_prev, tanh_c = cache
    H = dh.shape[-1]
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dz = np.empty_like(gates)
    dz[:, :H] = dc * g * i * (1 - i)
    dz[:, H : 2 * H] = -dc * c_prev * f * (1 - f)      # the bug: was +dc * c_prev * ...
    dz[:, 2 * H : 3 * H] = dc * i * (1 - g * g)
    dz[:, 3 * H :] = dh * tanh_c * o * (1 - o)
    return dz, None, dc * f

# %% [markdown]
# We check $\partial L/\partial W_{ih}$ gate block by gate block (rows $i, f, g, o$),
# in three situations: one step from a **zero** initial state, one step from a random
# state, and six steps from a random state.

# %%
def block_errors(backward, T_steps, state):
    _, _, caches = lstm_forward_by_hand(params, xs[:T_steps], *state)
    _, _, grads, _ = lstm_backward_by_hand(params, xs[:T_steps], caches, w_out[:T_steps],
                                           pointwise_backward=backward)
    numeric = finite_difference(make_loss(T_steps, state), W_ih)
    analytic = grads["weight_ih_l0"]
    return [relative_error(analytic[k * H : (k + 1) * H], numeric[k * H : (k + 1) * H])
            for k in range(4)]


cases = {"T=1, zero state": (1, (zeros, zeros)), "T=1, random state": (1, (h0, c0)),
         f"T={T}, random state": (T, (h0, c0))}
results = {(label, kind): block_errors(fn, *case)
           for label, case in cases.items()
           for kind, fn in (("correct", lstm.pointwise_backward), ("broken", broken_backward))}
print(f"{'':<22}{'':<9}" + "".join(f"{gate:>10}" for gate in "ifgo"))
for (label, kind), errors in results.items():
    print(f"{label:<22}{kind:<9}" + "".join(f"{e:10.1e}" for e in errors))

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 2.6), sharey=True)
for ax, label in zip(axes, cases):
    for shift, kind in ((-0.2, "correct"), (0.2, "broken")):
        errors = np.array(results[label, kind])
        ax.bar(np.arange(4) + shift, np.maximum(errors, 1e-13), width=0.4, label=kind)
        for k in np.flatnonzero(errors == 0):
            ax.text(k + shift, 2e-13, "0", ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(1e-13, 10)
    ax.set_xticks(range(4), list("ifgo"))
    ax.set_title(label)
    ax.axhline(1e-6, color="k", lw=0.8, ls="--")
axes[0].set_ylabel(r"relative error of $\partial L/\partial W_{ih}$")
nbhelpers.legend_beside(axes[2])
plt.tight_layout()
plt.show()

# %% [markdown]
# Three lessons in one table:
#
# * **One step from a zero state, the bug is invisible.** $\partial f = \partial c
#   \odot c_{t-1}$ and $c_{t-1} = 0$, so the flipped term is zero either way and the
#   check passes. Gradient checks must run at generic points: random initial states,
#   several steps, no symmetric inputs. rnncore's test matrix uses random learned
#   initial states, dropout and uneven lengths for this reason.
# * **One step from a random state, the check points at the culprit:** only the
#   forget-gate block is wrong.
# * **Over several steps the error spreads to every gate**, because the wrong
#   $\partial z$ flows into $\partial h_{t-1} = \partial z\, W_{hh}$ and from there into
#   every earlier step. A failing check on a long sequence says *that* something is
#   wrong; a short one with a random state says *where*.
#
# Try it yourself: edit `broken_backward` to drop the factor `(1 - tanh_c * tanh_c)`,
# or to return `dc` instead of `dc * f`, and rerun the last two cells. Notebook 8 turns
# this into graded exercises: you write the LSTM and GRU step backward, the BPTT loop and
# the depth loop, and a check like this one names the first wrong gate, step or layer.
