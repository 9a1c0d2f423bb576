# Notebook 7 source: build with `python notebooks/build.py --execute 07`.

# %% [markdown]
# # 7. Inside the fused kernels
#
# In notebook 1 an LSTM step split into two matrix products and an element-wise part.
# On a GPU the products go to cuBLAS and run near the card's peak. The element-wise
# part is the problem: written as array expressions, as rnncore's reference is, every
# operation is a separate pass over memory and, on a GPU, a separate kernel launch.
# Count them in `pointwise_forward` (notebook 1): an addition, the activations (each
# sigmoid alone is four operations, $\tfrac12 \tanh(x/2) + \tfrac12$), the products
# and sums of the cell update, another tanh: over a dozen launches per step forward and
# about two dozen backward, each reading and writing whole $B \times H$ or
# $B \times 4H$ arrays.
#
# A *fused* kernel does the whole element-wise step in one launch: one GPU thread per
# (batch row, hidden unit) element reads its gate pre-activations once, keeps every
# intermediate in registers, and writes the results once. This notebook reads rnncore's
# fused LSTM kernel, runs the very same CUDA source on the CPU, checks it against the
# reference, and times both.

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import nbhelpers
import numpy as np

import rnncore
from rnncore import backend, fused
from rnncore.cells import REFERENCE
from rnncore.gradcheck import check_module_gradients

nbhelpers.setup()
KERNELS = fused.kernels_dir()
print("kernel sources:", sorted(p.name for p in KERNELS.iterdir()))

# %% [markdown]
# ## The LSTM forward kernel
#
# `kernels/lstm.cu` is plain CUDA C++, templated on the element type (`float` or
# `double`). Its header comment restates the equations; here is the forward kernel:

# %%
nbhelpers.show_file(KERNELS / "lstm.cu", start="template <typename T>",
                    stop="template <typename T>")

# %% [markdown]
# Line for line it is `rnncore.cells.lstm.pointwise_forward`, for one element:
#
# * `element_index` turns the thread's position in the launch grid into the element
#   $(b, j)$ it owns, and returns false for the spare threads past the last unit.
# * `at(b, j, ld)` is the offset of element $(b, j)$ of a row-major matrix whose rows
#   are `ld` elements apart. Passing the leading dimension lets the kernel read a
#   column slice or a broadcast row in place, without a copy.
# * Gate $k$ of unit $j$ sits at column $kH + j$, so the four reads `x + H`, `x + 2H`, …
#   pick $i, f, g, o$ in PyTorch's order.
# * The results are written once: $h$, $c$, and the cache the backward kernel needs
#   (activated gates and $\tanh c$), exactly what the NumPy reference caches.
# * `keep ? new : old` is the padded-step rule of `carry`.
#
# The helpers come from `common.cuh`, each named after its Python twin:

# %%
nbhelpers.show_file(KERNELS / "common.cuh", start="T sigmoid(T x)", stop="// masking.py")

# %% [markdown]
# ## One thread per element
#
# A launch is a grid of blocks of threads. rnncore launches a grid of $B \times
# \lceil H / \text{block} \rceil$ blocks: block $(b, y)$ covers batch row $b$ and a
# contiguous run of up to 256 units, so the threads of a block read neighbouring
# addresses (coalesced loads). No thread depends on another, there is no shared
# memory and there are no atomics, so the result cannot depend on the order in which
# threads run: the kernel is deterministic, forward and backward.

# %%
def launch_geometry(B, H, block=fused.BLOCK):
    threads = min(block, 32 * ((H + 31) // 32))    # whole warps of 32, at most `block`
    grid = (B, (H + threads - 1) // threads)
    return grid, threads


for B, H in ((64, 128), (64, 512), (64, 1000)):
    grid, threads = launch_geometry(B, H)
    launched = grid[0] * grid[1] * threads
    print(f"B={B:<3} H={H:<5} grid {grid}, {threads} threads per block: "
          f"{launched:>6} threads for {B * H:>6} elements ({launched - B * H} idle)")

# %% [markdown]
# ## The same source on the CPU
#
# Without a GPU the kernels still run, and still from the same `.cu` files. A small
# header, `host_shim.h`, defines CUDA's keywords away (`__global__` becomes nothing),
# makes `threadIdx`, `blockIdx`, `blockDim` and `gridDim` ordinary variables, and
# wraps each kernel in a host function that walks the whole launch grid, block by
# block and thread by thread, calling the kernel body once per thread:

# %%
nbhelpers.show_file(KERNELS / "host_shim.h", start="template <auto Kernel>",
                    stop="}  // namespace rnncore_host", language="cpp")

# %% [markdown]
# `rnncore.fused` hands the host C++ compiler the shim followed by the *identical*
# device source NVRTC compiles on a GPU, builds a shared library once (cached by a hash
# of the source), and calls it through `ctypes` with the same argument list it would
# hand to CuPy. The emulation is sequential and gains nothing in speed; its purpose is
# that every test run, on any laptop or CI machine, executes the kernel code the GPU
# runs and compares it with the NumPy reference.

# %%
print("device source is inside the host source:", fused.device_source() in fused.host_source())
start = time.perf_counter()
library = fused.build_host_library()
print(f"host library: {library.name}, {library.stat().st_size / 1024:.0f} KiB "
      f"(built or found in the cache in {time.perf_counter() - start:.1f} s)")
print("GPU here:", backend.cuda_available())

# %% [markdown]
# ## The fused path against the reference
#
# `rnncore.fused.pointwise_for(device, dtype)` returns the kernels under the same names
# and signatures as `rnncore.cells.REFERENCE` (every registered cell's NumPy pointwise
# functions in one namespace), so either can stand in for the other. Inside a module the
# driver hands a cell's step its own set as `ops.pw` (`cell.reference`, or
# `cell.fused_pointwise(launcher)` with `impl="fused"`), and the step cannot tell which
# it got. First one step, on random pre-activations, in both precisions:

# %%
DEVICE = "cuda" if backend.cuda_available() else "cpu"
rng = np.random.default_rng(0)
for dtype in ("float32", "float64"):
    B, H = 16, 48
    xg, hg = rng.standard_normal((2, B, 4 * H)).astype(dtype)
    h0, c0, dh, dc = rng.standard_normal((4, B, H)).astype(dtype)
    args = [backend.to_device(a, DEVICE) for a in (xg, hg, h0, c0)]
    kernels = fused.pointwise_for(DEVICE, dtype)
    h_ref, c_ref, cache_ref = REFERENCE.lstm_forward(*args, None)
    h_fus, c_fus, cache_fus = kernels.lstm_forward(*args, None)
    grads = [backend.to_device(a, DEVICE) for a in (dh, dc)]
    dz_ref, _, dcp_ref = REFERENCE.lstm_backward(*grads, cache_ref, None)
    dz_fus, _, dcp_fus = kernels.lstm_backward(*grads, cache_fus, None)
    diffs = {name: float(np.abs(backend.to_numpy(a) - backend.to_numpy(b)).max())
             for name, a, b in (("h", h_ref, h_fus), ("c", c_ref, c_fus),
                                ("∂z", dz_ref, dz_fus), ("∂c_prev", dcp_ref, dcp_fus))}
    print(dtype, {k: f"{v:.1e}" for k, v in diffs.items()})

# %% [markdown]
# The two differ by a few units in the last place: the kernel computes $\sigma$ as
# `1 / (1 + exp(-x))`, the reference as $\tfrac12 \tanh(x/2) + \tfrac12$, and the
# compiler may contract a multiply and an add into one fused multiply-add. Within a
# module the same holds: `impl="fused"` and `impl="reference"` give the same outputs
# and gradients to rounding, and the fused module passes the finite-difference check
# of notebook 1 on its own.

# %%
def run_module(impl, dtype, x, dout):
    module = rnncore.LSTM(8, 16, num_layers=2, bidirectional=True, dtype=dtype, seed=3,
                          impl=impl, device=DEVICE)
    out, (h_n, c_n) = module(backend.to_device(x, DEVICE))
    dx, _ = module.backward(backend.to_device(dout, DEVICE))
    return [backend.to_numpy(a) for a in (out, h_n, dx, module.grads["weight_hh_l0"])]


x = rng.standard_normal((12, 4, 8))
dout = rng.standard_normal((12, 4, 32))
for dtype in ("float32", "float64"):
    ref = run_module("reference", dtype, x.astype(dtype), dout.astype(dtype))
    fus = run_module("fused", dtype, x.astype(dtype), dout.astype(dtype))
    worst = max(np.abs(a - b).max() / np.abs(a).max() for a, b in zip(ref, fus))
    print(f"{dtype}: largest relative difference over out, h_n, ∂x, ∂W_hh: {worst:.1e}")

again = run_module("fused", "float32", x.astype("float32"), dout.astype("float32"))
fus32 = run_module("fused", "float32", x.astype("float32"), dout.astype("float32"))
print("fused twice, bit for bit the same:", all(np.array_equal(a, b) for a, b in zip(again, fus32)))

report = check_module_gradients(
    rnncore.LSTM(3, 4, num_layers=2, dtype="float64", impl="fused", device=DEVICE, seed=1),
    backend.to_device(rng.standard_normal((5, 2, 3)), DEVICE))
print(f"fused LSTM, finite-difference check: largest relative error {report.max_error:.1e}")

# %% [markdown]
# ## Timing, and what the numbers mean
#
# Two measurements, each the median of interleaved repeats (the functions alternate,
# so a busy moment of the machine hits both alike):
#
# 1. **the element-wise step alone**, forward then backward, for a batch of 64 and a
#    few widths $H$;
# 2. **a whole LSTM stack**, forward + backward, with both implementations (and
#    `torch.nn.LSTM` as a yardstick if PyTorch is installed: cuDNN on a GPU).
#
# The code, from `nbhelpers.py`:

# %%
nbhelpers.show_source(nbhelpers.measure_pointwise, start="    kernels =")

# %%
def plot_pointwise(rows, title, ax):
    widths = [str(r["H"]) for r in rows]
    for shift, name in ((-0.2, "reference"), (0.2, "fused")):
        ax.bar(np.arange(len(rows)) + shift, [r[name] for r in rows], width=0.4, label=name)
    ax.set_xticks(range(len(rows)), widths)
    ax.set_yscale("log")
    ax.set_xlabel("hidden units H (batch 64)")
    ax.set_ylabel("ms per step (fwd + bwd)")
    ax.set_title(title)
    nbhelpers.legend_beside(ax)


def print_modules(rows):
    for r in rows:
        times = "  ".join(f"{k} {v:8.2f} ms" for k, v in r.items()
                          if k not in ("layers", "H", "B", "T"))
        print(f"LSTM {r['layers']}×{r['H']:<5} B={r['B']:<3} T={r['T']:<4} {times}")


on_gpu = DEVICE == "cuda"
live_sizes = (128, 512, 2048) if on_gpu else (64, 256, 1024)
live_configs = [(1, 256, 64, 100), (3, 512, 64, 100)] if on_gpu else [(1, 128, 16, 50),
                                                                     (2, 256, 32, 50)]
live_pointwise = nbhelpers.measure_pointwise(DEVICE, 64, live_sizes)
live_modules = nbhelpers.measure_modules(DEVICE, live_configs, repeats=5 if on_gpu else 3)

fig, ax = plt.subplots(figsize=(4.5, 2.8))
plot_pointwise(live_pointwise, f"element-wise LSTM step on this machine ({DEVICE})", ax)
plt.show()
for r in live_pointwise:
    print(f"H={r['H']:<5} reference {r['reference']:.3f} ms   fused {r['fused']:.3f} ms   "
          f"reference / fused = {r['reference'] / r['fused']:.2f}")
print_modules(live_modules)

# %% [markdown]
# **On a CPU** (the case when this notebook runs in CI) the fused column is the
# emulator: one host thread walking the launch grid and calling the kernel body once per
# element. It checks correctness; it is not meant to be fast, and how it compares with
# NumPy's vectorised operations says nothing about the GPU. This is why `impl="auto"`
# never runs the emulated kernels: on a CPU it runs the compiled CPU driver (the NumPy
# reference where no C++ compiler is found), and on a GPU the fused kernels, inside the
# CUDA-graph or the persistent driver.
#
# ## Recorded on a GPU
#
# The numbers below were measured on a GPU by running the same two functions with
# `python notebooks/record_gpu_timings.py` (the file records the card, the date and the
# command). They are read from `notebooks/data/gpu_timings.json`, not measured now.

# %%
recorded_path = Path("data/gpu_timings.json")
recorded = json.loads(recorded_path.read_text()) if recorded_path.exists() else None
if recorded is None:
    print("no recorded GPU timings in", recorded_path)
else:
    print(f"{recorded['device']}, {recorded['date']}, rnncore commit "
          f"{recorded.get('commit', '?')}; {recorded['versions']}")
    print("command:", recorded["command"])
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    plot_pointwise(recorded["pointwise"], f"element-wise LSTM step, {recorded['device']}", ax)
    plt.show()
    for r in recorded["pointwise"]:
        print(f"H={r['H']:<5} reference {r['reference']:.3f} ms   fused {r['fused']:.3f} ms   "
              f"reference / fused = {r['reference'] / r['fused']:.1f}")
    print_modules(recorded["modules"])

# %%
if recorded is not None:
    step = recorded["pointwise"]
    print(f"element-wise step, reference: {min(r['reference'] for r in step):.2f} to "
          f"{max(r['reference'] for r in step):.2f} ms over H = "
          f"{step[0]['H']}..{step[-1]['H']} (a {step[-1]['H'] // step[0]['H']}× wider state)")
    for r in recorded["modules"]:
        print(f"LSTM {r['layers']}×{r['H']}: "
              f"reference / fused = {r['reference'] / r['fused']:.1f}, "
              f"fused / cuDNN = {r['fused'] / r['torch (cuDNN)']:.1f}")

# %% [markdown]
# How to read the recorded GPU numbers:
#
# * **The element-wise step hardly depends on $H$.** A state 16 times wider costs about
#   the same time, so the arithmetic and the memory traffic are not what is being
#   measured: at these sizes a GPU finishes each operation almost at once, and the time
#   is the fixed cost of issuing work, from Python, one kernel launch per array
#   operation. The reference issues dozens of launches per step; the fused path issues
#   two (forward and backward), which is where its several-fold advantage comes from.
# * **The whole stack gains less than the step.** Each step still makes its recurrent
#   matrix product and runs Python's loop body (the `PythonLoop` driver issues every
#   step from the host); fusing removed only the element-wise launches. The speed-up
#   of a part is bounded by the share of the time that part took (Amdahl's law).
# * **cuDNN is faster still**, because it runs the entire time loop inside the library:
#   no Python per step, and (as Appleyard et al. 2016 describe) streams that overlap
#   layers and other scheduling a Python loop cannot do. What separates rnncore from it
#   is the cost of driving the loop, not the arithmetic of the kernels. That is why
#   rnncore keeps the time loop behind one boundary, `rnncore.drivers`: a driver that
#   issues the steps another way replaces the loop without touching the cells.
# * **That driver exists.** `impl="graph"` records a layer's T steps (the same GEMMs
#   and the same fused kernels) into a CUDA graph once and replays it with one host
#   call. Measured later on an H100 (`docs/bench/gpu-h100.md` in the repository), a
#   profiled LSTM 3×512 forward + backward spent 1.6 ms outside kernels with it, against
#   80 ms with the per-step loop, and it was level with cuDNN or ahead on the large
#   models (cuDNN / graph 1.02–1.24) and at 0.77–0.82 of cuDNN on the small ones, where
#   cuDNN's own persistent kernel keeps the weights on chip. `impl="auto"` uses it on a GPU.
#
# Timings taken through Python on a shared machine vary from run to run; the ratios
# carry over better than the milliseconds do. To measure your own card, run
# `python notebooks/record_gpu_timings.py`, or this notebook, on a machine with CuPy and
# a GPU.
