# Notebook 8 source: build with `python notebooks/build.py --execute 08`.

# %% [markdown]
# # 8. Exercises: write the backward passes yourself
#
# Four functions are left for you to write, each the backward pass of one piece of a deep
# LSTM: one LSTM step, one GRU step, backpropagation through time over one layer, and the
# loop down through the layers of a residual stack. Under each one a check runs it at a
# random point and compares every number it returns with **central finite differences**
# of the forward pass (rnncore's `gradcheck.central_difference`, element by element), and
# says which gate, which time step or which layer is the first to be wrong.
#
# **How to start.** From a clone of the repository:
#
# ```
# make lab
# ```
#
# installs rnncore with its `notebooks` extra (Jupyter, matplotlib) into `.venv` and
# opens Jupyter Lab in `notebooks/`; open this notebook (`08_exercises.ipynb`). Without
# make: `python -m venv .venv && .venv/bin/pip install -e '.[notebooks]'`, then
# `.venv/bin/jupyter lab notebooks/`.
#
# Read notebook 1 first (the step equations and BPTT) and notebook 3 (depth). Replace
# each `raise NotImplementedError` with your code and run the cell and the check below
# it. A check prints a table, one row per gate block (or step, or layer), with the
# relative error $\lVert \text{yours} - \text{numeric} \rVert / \max(\lVert
# \text{yours} \rVert, \lVert \text{numeric} \rVert)$; below $10^{-6}$ is right in
# float64. You pass when every row is. The notebook as committed shows what a fresh
# copy prints: every check says "not yet".
#
# *For lecturers:* the checks live in `notebooks/course/grading.py` and need no
# solution; the reference solutions are in `notebooks/course/solutions.py` (delete it
# from the students' copy if you like). `make test` runs this notebook twice: as it
# stands (every check must fail) and with `RNNCORE_COURSE_SOLUTIONS=1`, which swaps the
# reference solutions in for every function marked `@exercise` (every check must pass).

# %%
import matplotlib.pyplot as plt
import nbhelpers
from course import diagrams, exercise, grading

nbhelpers.setup()

# %% [markdown]
# ## Exercise 1: one LSTM step, backward
#
# The forward step (notebook 1) with $z = x_t W_{ih}^\top + h_{t-1} W_{hh}^\top + b$ cut
# into blocks $z_i, z_f, z_g, z_o$:
#
# $$i = \sigma(z_i),\ f = \sigma(z_f),\ g = \tanh(z_g),\ o = \sigma(z_o),\qquad
#   c_t = f \odot c_{t-1} + i \odot g,\qquad h_t = o \odot \tanh c_t.$$
#
# Given $\partial h = \partial L/\partial h_t$ and $\partial c = \partial L/\partial c_t$
# (each $B \times H$) and the cache `(gates, c_prev, tanh_c)` (the *activated* gates
# $[i, f, g, o]$ side by side, $B \times 4H$; $c_{t-1}$; $\tanh c_t$), return
# $\partial L/\partial z$ ($B \times 4H$, blocks in the order $i, f, g, o$) and
# $\partial L/\partial c_{t-1}$. The red arrows of this picture are what you write:

# %%
diagrams.draw_lstm_cell()
plt.show()

# %%
@exercise
def lstm_step_backward(dh, dc, cache):
    gates, c_prev, tanh_c = cache
    H = tanh_c.shape[-1]
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    # your code: dz (B, 4H) and dc_prev (B, H)
    raise NotImplementedError


verdict = grading.check_lstm_step_backward(lstm_step_backward)

# %% [markdown]
# ## Exercise 2: one GRU step, backward
#
# To keep $z$ for the LSTM's pre-activation, the GRU's update gate is written $u$ here
# (rnncore's code and PyTorch call it `z`). With the input and recurrent products
# $a^x = x_t W_{ih}^\top + b_{ih}$ and $a^h = h_{t-1} W_{hh}^\top + b_{hh}$, each cut into
# blocks $r, u, n$:
#
# $$r = \sigma(a^x_r + a^h_r),\quad u = \sigma(a^x_u + a^h_u),\quad
#   n = \tanh(a^x_n + r \odot a^h_n),\quad h_t = (1-u) \odot n + u \odot h_{t-1}.$$
#
# Given $\partial h = \partial L/\partial h_t$, $h_{t-1}$, the cache `(r, u, n, ah_n)`
# (each $B \times H$; `ah_n` is $a^h_n$) and $W_{hh}$ ($3H \times H$), return
# $\partial L/\partial a^x$ and $\partial L/\partial a^h$ (each $B \times 3H$, blocks
# $r, u, n$) and the **whole** $\partial L/\partial h_{t-1}$: $h_{t-1}$ reaches $h_t$
# directly and through $a^h$.

# %%
diagrams.draw_gru_cell()
plt.show()

# %%
@exercise
def gru_step_backward(dh, h_prev, cache, W_hh):
    r, u, n, ah_n = cache
    # your code: da_x (B, 3H), da_h (B, 3H), dh_prev (B, H)
    raise NotImplementedError


verdict = grading.check_gru_step_backward(gru_step_backward)

# %% [markdown]
# ## Exercise 3: backpropagation through time, one layer
#
# One LSTM layer ran forward over $T$ steps from $(h_0, c_0)$ and saved, for every step
# $t$, `caches[t] = (step_cache, h_prev)`: the cache of exercise 1 and $h_{t-1}$. The
# loss depends on every output and on the final state, so you are given
# `dout` $= \partial L/\partial h_t$ from the outputs ($T \times B \times H$) and
# `dstate_n` $= (\partial L/\partial h_T, \partial L/\partial c_T)$ from the final state.
# Walk back from $t = T-1$ to $0$. At each step the gradient at $h_t$ has two sources
# (the picture: from the output at $t$ and from step $t+1$); call
# `step_backward(dh, dc, step_cache)` (a correct exercise 1, given to you) for $\partial
# z_t$ and $\partial c_{t-1}$; send $\partial z_t W_{hh}$ back to $h_{t-1}$; and add
# $\partial z_t^\top h_{t-1}$ into $\partial W_{hh}$. Return
# `(dz, dW_hh, (dh0, dc0))`, `dz` holding every step's $\partial L/\partial z_t$
# ($T \times B \times 4H$).

# %%
diagrams.draw_unrolled(layers=1, steps=5, focus=(2, 0))
plt.show()

# %%
@exercise
def lstm_layer_backward(dout, dstate_n, W_hh, caches, step_backward):
    dh, dc = dstate_n
    # your code: walk t = T-1, ..., 0
    raise NotImplementedError


verdict = grading.check_lstm_layer_backward(lstm_layer_backward)

# %% [markdown]
# ## Exercise 4: down through the layers, with residual connections
#
# A stack of $L$ layers: $u_0 = x$, and layer $k$ reads the sequence $u_k$ and writes
# $y_k$; without residuals $u_{k+1} = y_k$, with them $u_{k+1} = y_k + u_k$; the output
# is $u_L$. Each layer also has a final state, whose gradient `dstates_n[k]` $=
# (\partial L/\partial h^{(k)}_T, \partial L/\partial c^{(k)}_T)$ comes with the loss.
# `layers[k].backward(dy, dstate_n)` does exercise 3 for you: given $\partial L/\partial
# y_k$ (the whole sequence, $T \times B \times H$) and its final state's gradient, it adds
# the layer's weight gradients (so call it once per layer) and returns $(\partial
# L/\partial u_k$ *through the layer*, $\partial L/\partial(\text{its initial state}))$.
# Return $\partial L/\partial x$ and the list of every layer's initial-state gradient.
# The check runs your function on a plain and on a residual stack of 3 layers.

# %%
diagrams.draw_unrolled(layers=3, steps=4, residual=True)
plt.show()

# %%
@exercise
def stack_backward(dout, dstates_n, layers, residual):
    # your code: walk k = L-1, ..., 0, filling a list dstates_0 (one per layer)
    raise NotImplementedError


verdict = grading.check_stack_backward(stack_backward)

# %% [markdown]
# ## When a check says "not yet"
#
# Read the first wrong row: it is where to look. A wrong gate block in exercises 1–2 is a
# local mistake in that gate's line. In exercise 3 the first wrong step, walking back
# from $T-1$, is where the error enters; every step before it is wrong too, because the
# error travels back through $\partial h_{t-1} = \partial z_t W_{hh}$ (notebook 1, "Break
# it on purpose"). In exercise 4 the first wrong layer, going down from the top, is
# where the gradient handed from one layer to the next went astray. The column "vs
# rnncore" (exercises 1–2) compares with rnncore's own `pointwise_backward`: it tells
# a near miss (a small error, often a missing term) from a wrong formula.
#
# Once all four pass you have written, in a few dozen lines, everything the engine's
# backward pass does for an LSTM stack except the bookkeeping: compare your loops with
# `rnncore.drivers.PythonLoop.backward` and `rnncore.stack.stack_backward`.
