# Notebook 10 source: build with `python notebooks/build.py --execute 10`.

# %% [markdown]
# # 10. Looking inside backpropagation through time
#
# rnncore writes every backward step by hand, so it can answer questions that a fused
# library hides: how much does the state $k$ steps back still matter to the last one,
# which path did the gradient reaching a layer's input take, and — when two
# implementations disagree — at which step and which gate they part ways.
#
# Three instruments, each tested against finite differences where it claims a
# derivative: the temporal Jacobian probe (`rnncore.jacobian`), path attribution
# (`rnncore.attribution`) and the divergence localiser (`rnncore.localise`).

# %%
import matplotlib.pyplot as plt
import nbhelpers
import numpy as np

import rnncore
from rnncore import attribution, jacobian, localise

nbhelpers.setup()
x = np.random.default_rng(1).standard_normal((40, 2, 8))

# %% [markdown]
# ## 1. The temporal Jacobian
#
# $J(\ell) = \partial s_T / \partial s_{T-\ell}$ for one layer with its input fixed.
# The cell's `backward_step` is linear in the state gradient it is handed, so unit
# vectors fed in at $s_T$ and walked back give every $J(\ell)$ exactly. We plot the
# largest singular value of the LSTM's hidden block $\partial h_T/\partial h_k$ and cell
# block $\partial c_T/\partial c_k$ against the lag, for three forget-gate biases.

# %%
fig, ax = plt.subplots()
for i, fb in enumerate((0.0, 1.0, 3.0)):
    m = rnncore.LSTM(8, 8, dtype="float64", seed=0, forget_bias=fb)
    r = jacobian.module_jacobians(m, x)[0]
    ax.semilogy(r.sigma("c").mean(axis=1), color=f"C{i}", label=f"dc_T/dc_k, bias {fb:g}")
    ax.semilogy(r.sigma("h").mean(axis=1), "--", color=f"C{i}", label=f"dh_T/dh_k, bias {fb:g}")
    print(f"forget bias {fb:g}: effective memory (sigma < 0.01) "
          f"c path {r.effective_memory('c')}, h path {r.effective_memory('h')} steps")
ax.set_xlabel("lag T - k")
ax.set_ylabel("largest singular value")
ax.set_title("the cell path remembers longer; the forget bias sets how long")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 2. Which path did the gradient take?
#
# The input gradient of each layer splits exactly into the residual skip, and per
# direction the part that arrived at each step through $h_t$ and through the carried
# $c_t$. The parts sum to the total (to rounding):

# %%
m = rnncore.LSTM(16, 8, num_layers=2, bidirectional=True, residual="layers",
                 dtype="float64", seed=0)
xs = np.random.default_rng(2).standard_normal((20, 2, 16))
dout = np.random.default_rng(3).standard_normal((20, 2, 16))
paths = attribution.attribute(m, xs, dout)
for k, parts in paths.items():
    total = parts["total"]
    err = np.linalg.norm(sum(a for n, a in parts.items() if n != "total") - total)
    shares = attribution.shares({k: parts})[k]
    print(f"layer {k + 1}: " + ", ".join(f"{n} {s:.2f}" for n, s in shares.items())
          + f"  (sum error {err / np.linalg.norm(total):.1e})")

# %% [markdown]
# ## 3. Where do two implementations disagree?
#
# The localiser runs the reference pointwise functions and the fused kernels (here their
# CPU emulation) on one module and reports the first step, gate and unit where they
# differ; finite differences then say which one is right. We break the reference LSTM
# backward on purpose: the forget-gate gradient of unit 2 at the fourth backward step.

# %%
from rnncore.cells import lstm as L  # noqa: E402  (the notebook imports it where it is used)

original = L.LSTM.reference.lstm_backward
calls = {"n": 0}


def broken(*args, **kwargs):
    dz, carried, dc_prev = original(*args, **kwargs)
    if calls["n"] == 3:
        dz[0, 8 + 2] += 1e-3
    calls["n"] += 1
    return dz, carried, dc_prev


m = rnncore.LSTM(3, 8, num_layers=2, dtype="float64", seed=0)
xb = np.random.default_rng(0).standard_normal((6, 2, 3))
print(localise.localise(m, xb))
L.LSTM.reference.lstm_backward = broken
try:
    print(localise.localise(m, xb))
finally:
    L.LSTM.reference.lstm_backward = original

# %% [markdown]
# The fourth backward step of the top layer is time step 2 (the backward walks
# $t = 5, 4, 3, 2, \dots$); the localiser names layer 1 (0-based), step 2, gate f, unit 2,
# and finite differences side with the fused kernel.
#
# **Modified gradients.** `rnncore.Options` also has `gate_clip`, `h_detach`, `truncate`
# and `grad_noise` (flags of `python -m rnncore.train`): interventions inside the
# backward loop. They change what BPTT computes — the result is no longer the gradient —
# and are documented as such in `rnncore/interventions.py`.
