"""The compiled CPU driver: a layer direction's whole time loop in C++, BLAS called from it.

For a cell that declares a CPU loop (``Cell.cpu_loop_for``; ``kernels/<name>_cpu.cpp``),
forward and backward each are one call into a library built from those files and
``kernels/cpu_loop.h`` with the host compiler (``-O3 -march=native -ffast-math -fopenmp``:
the element loops vectorise, with glibc's vector expf/tanhf), which

- lays every per-step buffer out time-major and feature-major within a step, (T, width,
  B), so that the recurrent product of a step is  W_hh · h_{t−1}  into a (G·H, B) buffer
  and each step reads and writes contiguous blocks;
- runs that product through its own kernels with W_hh packed once per call
  (``kernels/cpu_gemm.h``: vectors along the batch where B is a multiple of 16 floats or 8
  doubles, along W's rows otherwise): BLAS would pack both operands at every step. The
  LSTM also takes W_ih x_t into the step's product, so its forward has no hoisted X_g, but
  at B 1, where X_g is one product of all the steps through the same kernels
  (``kernels/hoisted.h``). Its backward, and the RNN's, likewise computes ∂x_t = (W_ihᵀ d_t)ᵀ
  beside the step's product but at small batches (``BackwardProducts``,
  ``joins_input_grad``). The hoisted weight gradients
  (and ∂x elsewhere) call NumPy's own OpenBLAS (its ``cblas_?gemm``, found in the loaded
  library);
- runs the pointwise step as plain loops over b, with the helper functions of the CUDA
  kernels (common.cuh), so no NumPy temporaries and no Python per step; where B is not a
  multiple of the vector's lanes, over a block of units' values as one row instead
  (``UnitElements`` in ``kernels/cpu_loop.h``), so that B 1 or 4 still runs whole vectors;
- runs on as many threads as NumPy's BLAS is limited to (``threadpoolctl``,
  ``OPENBLAS_NUM_THREADS``): one OpenMP team per call, each thread taking whole blocks of
  units (their rows of the product and their element loop; one barrier a step), with BLAS
  set to one thread meanwhile and called by each team thread for its share.

The batch-major ⇄ feature-major changes happen inside the loops, a step at a time while
the block is in cache: the forward lays out x_t for its product (and copies x for its
cache) and writes h_t batch-major; the backward starts ∂h_{t−1} from ∂L/∂out_{t−1}.

Before and after the loop, the hoisted products (``kernels/hoisted.h``, on the same
threads):

    X_g[t] = W_ih X[t]ᵀ  (cells that do not join it)     ∂X = ∂X_gᵀ W_ih  (where the loop does not)
    ∂W_ih += ∂X_g X     ∂W_hh += ∂H_g H_prev              ∂b += Σ_columns

a chunk of steps at a time, the backward loop writing ∂X_g and ∂H_g straight into (G·H,
chunk·B) rows, as these GEMMs read them, and X, H_prev as (chunk·B, ·) rows. A segment
of the backward (all of it, unless it recomputes) is one C++ call that runs its pieces of
the loop and each complete chunk's products (``kernels/backward_chunks.h``).

The caller cannot edit what the caches hold: the driver keeps its own copy of a stack's
input, and its output, which the backward reads, reaches the caller read-only
(``protects_cache``; ``modules.py`` copies neither). Its backward adds ∂W_ih and ∂W_hh
into the module's gradient totals (``accumulates_grads``). The LSTM's forward keeps h_t
feature-major only for the next step (a ring of two blocks): its backward reads h
batch-major.

Results equal the reference driver's to rounding (the GEMM shapes and -ffast-math change
the order of additions), not bit for bit; the tests hold it to 1e-12 in float64, at one
thread and more. A cell without a CPU loop (or LSTMP, the reset-before GRU) runs on the
reference driver.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import fused
from ..backend import bias_sum
from ..buffer_pool import BufferPool, address, aligned_copy, aligned_empty, aligned_zeros
from ..cells.base import Dims
from .python_loop import LayerCache, PythonLoop

# -mprefer-vector-width=512: GCC's Intel AVX-512 targets default to 256-bit loops, and the
# element loops then split each 16-lane call of glibc's vector expf/tanhf into halves
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-march=native", "-mprefer-vector-width=512",
         "-ffast-math", "-fopenmp", "-w")
# linked without -ffast-math: its startup code would set flush-to-zero for the whole process
LINK_FLAGS = ("-shared", "-fopenmp", "-lmvec", "-lm")
# keyed by the dtype itself: its .name is computed in Python at every access (4 µs)
SUFFIX = {np.dtype(name): suffix for name, suffix in fused.SUFFIX.items()}
MAX_STATES = 2
# the backward keeps ∂z for an eighth of a layer's steps at a time, within these bytes:
# the longer the chunk, the longer the weight-gradient GEMMs' inner dimension (chunk·B).
# Measured at LSTM 3×512, B 64, T 100, one thread, on an AMD EPYC: 8 MiB chunks about 3 %
# faster than 512 KiB ones, whole-T chunks (52 MB) 7 %, but those put the peak RSS above
# torch's; on an Intel Xeon at LSTM 1×128, 50-step chunks 7 % slower than 15-step ones
# (out of L2)
CHUNK_BYTES = (1 << 19, 8 << 20)
CHUNK_SHARE = 8
CHUNK_MIN_COLUMNS = 512  # … and at least this many (step, sequence) columns per GEMM
# on several threads the backward's loop runs on one of them while the others compute the
# hoisted products of the chunks it has finished (kernels/backward_chunks.h,
# pipelined_chunks): ∂z then has this many chunk buffers, so that the loop may go on to
# the next chunks meanwhile. Forward + backward at two threads, against the loop and the
# products each split over both threads in turn (Intel Xeon, one process, interleaved):
# LSTM 1×128 0.95 of the time with 2, 3 or 4 buffers; seed row 0.93, 0.91, 0.91; LSTM
# 3×512 0.97 with 2, 0.96 with 3.
ZBUFFERS = 3


class CompiledUnavailableError(RuntimeError):
    """The compiled CPU driver cannot run here (no compiler, or no usable BLAS)."""


# ----------------------------------------------------------------------------- the library
def cpu_source() -> str:
    """cpu_loop.h and every kernels/*_cpu.cpp, local includes inlined, as one unit."""
    folder = fused.kernels_dir()
    seen: set = set()
    return "".join(fused._expand(path, seen) for path in sorted(folder.glob("*_cpu.cpp")))


def _cpu_model() -> str:
    """What -march=native depends on: the CPU's flags (part of the library's cache key)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    return hashlib.sha256((flags.group(1) if flags else text).encode()).hexdigest()


class Blas(ctypes.Structure):
    _fields_ = [("sgemm", ctypes.c_void_p), ("dgemm", ctypes.c_void_p),
                ("ilp64", ctypes.c_int)]

    get_num_threads = set_num_threads = None  # OpenBLAS's thread count (ctypes functions)


# the cblas GEMMs of NumPy's OpenBLAS and its thread count, by the names its builds export:
# (prefix, suffix, ILP64): cblas_sgemm, cblas_dgemm, openblas_{get,set}_num_threads
_BLAS_NAMES = (("scipy_", "64_", 1), ("", "64_", 1), ("scipy_", "", 0), ("", "", 0))


def numpy_blas() -> Blas:
    """The GEMMs of the BLAS NumPy itself uses (found through threadpoolctl), and its
    thread count: the loops' parallel regions run on as many threads as it does, so one
    limit (``threadpoolctl``, ``OPENBLAS_NUM_THREADS``) governs both."""
    from threadpoolctl import threadpool_info

    np.ones((2, 2)) @ np.ones((2, 2))  # make sure the BLAS is loaded
    for info in threadpool_info():
        if info.get("user_api") != "blas" or info.get("internal_api") != "openblas":
            continue
        if "numpy" not in info.get("filepath", ""):
            continue
        library = ctypes.CDLL(info["filepath"])
        for prefix, suffix, ilp64 in _BLAS_NAMES:
            names = ("cblas_sgemm", "cblas_dgemm", "openblas_get_num_threads",
                     "openblas_set_num_threads")
            try:
                s, d, get, set_ = (getattr(library, prefix + name + suffix) for name in names)
            except AttributeError:
                continue
            blas = Blas(ctypes.cast(s, ctypes.c_void_p).value,
                        ctypes.cast(d, ctypes.c_void_p).value, ilp64)
            get.restype = ctypes.c_int
            set_.argtypes = [ctypes.c_int]
            blas.get_num_threads, blas.set_num_threads = get, set_
            return blas
    raise CompiledUnavailableError("NumPy's BLAS is not an OpenBLAS with cblas GEMMs")


_LIBRARY: dict = {}


def library():
    """(the loaded library, the BLAS it calls); built once, then cached."""
    if "lib" not in _LIBRARY:
        try:
            path = fused.build_library("cpu_loops", cpu_source(), FLAGS, LINK_FLAGS,
                                       key_extra=_cpu_model())
            _LIBRARY["lib"] = (ctypes.CDLL(str(path)), numpy_blas())
        except fused.FusedBuildError:
            raise
        except (fused.FusedUnavailableError, CompiledUnavailableError, OSError) as err:
            _LIBRARY["lib"] = err
    if isinstance(_LIBRARY["lib"], Exception):
        raise CompiledUnavailableError(str(_LIBRARY["lib"]))
    return _LIBRARY["lib"]


def element_steps_library() -> ctypes.CDLL:
    """kernels/lstm_elements_alone.cpp, the LSTM's element steps alone (for
    scripts/numba-element-step), built with the loops' flags into a library of its own,
    which leaves the loops' machine code as it is."""
    if "elements" not in _LIBRARY:
        library()  # the same checks: a compiler, NumPy's OpenBLAS
        source = fused._expand(fused.kernels_dir() / "lstm_elements_alone.cpp", set())
        path = fused.build_library("lstm_elements", source, FLAGS, LINK_FLAGS,
                                   key_extra=_cpu_model())
        _LIBRARY["elements"] = ctypes.CDLL(str(path))
    return _LIBRARY["elements"]


def reset() -> None:
    """Forget the library and its verdict (tests; a changed $CXX)."""
    _LIBRARY.clear()


def available() -> bool:
    """Whether the compiled CPU driver can run here (a compiler and NumPy's OpenBLAS)."""
    try:
        library()
        return True
    except CompiledUnavailableError:
        return False


def _args_type(ctype):
    ptr = ctypes.c_void_p
    return type(f"Args_{ctype.__name__}", (ctypes.Structure,), {"_fields_": [
        ("steps", ctypes.c_int64), ("batch", ctypes.c_int64), ("hidden", ctypes.c_int64),
        ("reverse", ctypes.c_int64), ("xg", ptr), ("w_hh", ptr), ("bias_x", ptr),
        ("bias_h", ptr), ("state0", ptr * MAX_STATES), ("valid", ptr), ("saved", ptr * 8),
        ("scratch", ptr), ("dh", ptr), ("dh0", ptr), ("dstate", ptr * 2), ("grads", ptr * 4),
        ("x", ptr), ("w_ih", ptr), ("input", ctypes.c_int64), ("threads", ctypes.c_int64),
        ("grad_stride", ctypes.c_int64), ("out", ptr), ("dout", ptr),
        ("dout0", ptr), ("x_copy", ptr), ("h_ring", ctypes.c_int64)]})


class HoistedArgs(ctypes.Structure):  # kernels/hoisted_cpu.cpp
    _fields_ = [(name, ctypes.c_int64) for name in
                ("groups", "hidden", "input", "columns", "stride", "threads")] + \
               [(name, ctypes.c_void_p) for name in
                ("w_ih", "x", "xg", "dxg", "dhg", "h_prev", "dw_ih", "dw_hh", "db_ih", "db_hh",
                 "dx")] + [("batch", ctypes.c_int64)]


class ChunkedArgs(ctypes.Structure):  # kernels/backward_chunks.h
    _fields_ = [(name, ctypes.c_int64) for name in ("first", "end", "seg_lo", "total", "chunk")] \
        + [("saved_width", ctypes.c_int64 * 8), ("state_slot", ctypes.c_int64 * 2),
           ("checkpoint", ctypes.c_void_p * 2)] \
        + [(name, ctypes.c_void_p) for name in ("x", "h", "h0", "dx", "h_prev")] \
        + [("products", HoistedArgs), ("buffers", ctypes.c_int64)]


class KernelRateArgs(ctypes.Structure):  # kernels/kernel_rate_cpu.cpp
    _fields_ = [(name, ctypes.c_int64) for name in
                ("rows", "depth", "batch", "repeats", "threads")] + \
               [("seconds", ctypes.POINTER(ctypes.c_double))]


_ARGS = {np.dtype(np.float32): _args_type(ctypes.c_float),
         np.dtype(np.float64): _args_type(ctypes.c_double)}


def _ptr(a):
    return None if a is None else address(a)


def kernel_gflops(dtype, threads, rows=2048, depth=512, batch=64, repeats=20) -> float:
    """The packed step kernel's GFLOP/s on a (rows × depth)·(depth × batch) product, hot
    caches, on ``threads`` threads (the fastest of ``repeats``): the bench's roofline takes
    the faster of this and BLAS's large GEMM."""
    lib, blas = library()
    seconds = ctypes.c_double()
    args = KernelRateArgs(rows=rows, depth=depth, batch=batch, repeats=repeats,
                          threads=threads, seconds=ctypes.pointer(seconds))
    getattr(lib, f"cpu_kernel_rate_{SUFFIX[np.dtype(dtype)]}")(ctypes.byref(blas),
                                                                ctypes.byref(args))
    return 2 * rows * depth * batch / seconds.value / 1e9


# ----------------------------------------------------------------------------- the driver
class CompiledCache(NamedTuple):
    """A ``LayerCache`` (``saved`` as batch-major (T, B, ·) views, for the instruments) and
    the feature-major buffers the backward loop reads."""

    x: object
    inputs: dict
    reverse: bool
    state0: tuple
    saved: dict
    dims: Dims
    fm: dict  # name -> (width, T, B) arrays
    state0_fm: tuple
    valid_u8: object
    every: int = 0  # the segment length (T: no recompute)
    checkpoints: tuple = ()  # [segment] feature-major state tuple it starts from


class CompiledCPU:
    """Runs cells with a compiled CPU loop; others on the reference driver."""

    name = "compiled"

    def __init__(self):
        self.lib, self.blas = library()
        self.fallback = PythonLoop("reference")
        self._scratch_arrays = {}

    def _scratch(self, name, shape, dtype):
        """An aligned array for use within one C call only (its content does not outlive
        the call), kept for the next call: one per name, replaced when the shape changes.
        A fresh one per call cost the seed row's 3 layers 0.5 ms of allocation."""
        a = self._scratch_arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._scratch_arrays[name] = aligned_empty(shape, dtype)
        return a

    def _loop(self, cell, p, x):
        dims = Dims(x.shape[-1], p["w_hh"].shape[0] // cell.num_gates,
                    0 if p.get("w_hr") is None else p["w_hr"].shape[0])
        return dims, cell.cpu_loop_for(dims)

    def _call(self, loop, step, dtype, *args):
        getattr(self.lib, f"{loop.name}_cpu_{step}_{SUFFIX[dtype]}")(
            ctypes.byref(self.blas), *(ctypes.byref(a) for a in args))

    def _hoisted(self, name, dtype, **fields):
        getattr(self.lib, f"cpu_{name}_{SUFFIX[dtype]}")(
            ctypes.byref(self.blas), ctypes.byref(HoistedArgs(**fields)))

    @contextmanager
    def _one_pool(self):
        """NumPy's BLAS thread count, for the C++ loops' OpenMP team, with BLAS itself on one
        thread meanwhile: each of the team's threads calls it for its share
        (kernels/hoisted_cpu.cpp says why)."""
        threads = max(1, self.blas.get_num_threads())
        if threads > 1:
            self.blas.set_num_threads(1)
        try:
            yield threads
        finally:
            if threads > 1:
                self.blas.set_num_threads(threads)

    checkpoint_every = 0  # > 0: keep the state every k steps, recompute segments (backward)

    def _bias(self, loop, p):
        if loop.recurrent_bias:
            return p.get("b_ih"), p.get("b_hh")
        return bias_sum(p.get("b_ih"), p.get("b_hh")), None

    def _joins_input(self, loop, batch) -> bool:
        """Whether the loop takes W_ih x_t into its step's product instead of a hoisted X_g:
        at every batch but 1, where X_g is one product of all the steps
        (kernels/hoisted.h). Joined, LSTM 1×128's forward took 0.88–0.91 of the time at
        B 20, 0.86 at B 8; at B 1 1.05 (AMD EPYC, one thread, processes one after the
        other)."""
        return loop.joins_input and batch > 1

    def _run_forward(self, loop, p, x, state_fm, lo, hi, reverse, valid_u8, threads, fm=None,
                     out=None, x_copy=None):
        """The C++ forward over steps lo..hi−1 (in loop order for ``reverse``) from
        ``state_fm`` on ``threads``, also writing h batch-major into the (n, B, H) array
        ``out`` and x[lo:hi] into ``x_copy`` where they are given; returns the segment's
        feature-major saved buffers (n, W·H, B)."""
        n, B = hi - lo, x.shape[1]
        hidden, GH, dt = p["w_hh"].shape[1], p["w_ih"].shape[0], x.dtype
        xg = x_in = w_ih = None
        if self._joins_input(loop, B):  # the loop lays x out (and copies it) itself
            x_in = x[lo:hi]
            w_ih = np.ascontiguousarray(p["w_ih"])
        else:
            if x_copy is not None:
                np.copyto(x_copy, x[lo:hi])
            x_copy = None
            # not pooled: a free buffer this large would stay resident through the backward
            # (measured: the GRU 3×512's peak RSS above torch's)
            xg = aligned_empty((n, GH, B), dt)
            self._hoisted("input_projection", dt, groups=GH // hidden, hidden=hidden,
                          input=x.shape[2], columns=n * B, threads=threads, batch=B,
                          w_ih=_ptr(np.ascontiguousarray(p["w_ih"])),
                          x=_ptr(np.ascontiguousarray(x[lo:hi])), xg=_ptr(xg))
        # h_t only as the next step reads it, in a ring of two blocks, where nothing later
        # reads the feature-major h: 16 KiB less to write to memory a step at H 128, B 32
        ring = min(2, n) if "h" in _BACKWARD_SKIPS.get(loop.name, ()) else 0
        shapes = {name: (ring if ring and name == "h" else n, width * hidden, B)
                  for name, width in loop.saved if name not in _NOT_KEPT.get(loop.name, ())}
        if fm is None or {name: a.shape for name, a in fm.items()} != shapes:
            fm = {name: self._scratch("h ring", shape, dt) if ring and name == "h"
                  else _POOL.empty(shape, dt) for name, shape in shapes.items()}
        bias_x, bias_h = self._bias(loop, p)
        w_hh = np.ascontiguousarray(p["w_hh"])
        valid = None if valid_u8 is None else valid_u8[lo:hi]
        args = _ARGS[dt](steps=n, batch=B, hidden=hidden, reverse=int(bool(reverse)),
                         xg=_ptr(xg), w_hh=_ptr(w_hh), bias_x=_ptr(bias_x),
                         bias_h=_ptr(bias_h), valid=_ptr(valid), x=_ptr(x_in),
                         w_ih=_ptr(w_ih), input=x.shape[2], threads=threads,
                         out=_ptr(out), x_copy=_ptr(x_copy), h_ring=ring)
        for k, st in enumerate(state_fm):
            args.state0[k] = _ptr(st)
        for k, (name, _) in enumerate(loop.saved):
            args.saved[k] = _ptr(fm.get(name))
        args.scratch = _ptr(self._scratch("product", (GH, B), dt))  # a step's product
        self._call(loop, "forward", dt, args)
        return fm

    # the caller cannot reach this driver's caches (modules.py then makes no copies of its
    # own): it keeps its own copy of x, written as its loop lays x out feature-major, and
    # its output is a pooled buffer (never handed out twice while alive) that the module
    # returns read-only. Between layers the stack says even the copy of x is not needed
    # (input_is_internal, output_is_internal: the arrays never reach the caller as they are)
    protects_cache = True

    def forward(self, cell, p, x, state0, inputs, reverse=False, input_is_internal=False,
                output_is_internal=False):
        dims, loop = self._loop(cell, p, x)
        masked = any(v is not None for k, v in inputs.items() if k != "valid")
        if loop is None or masked or x.dtype not in SUFFIX:  # regulariser masks: reference
            out, state_n, cache = self.fallback.forward(
                cell, p, x if input_is_internal else x.copy(), state0, inputs, reverse)
            return out if output_is_internal else out.copy(), state_n, cache
        T, B, I = x.shape
        x = np.ascontiguousarray(x)
        x_kept = x if input_is_internal else _POOL.empty((T, B, I), x.dtype)
        state0_fm = tuple(aligned_copy(s.T) for s in state0)
        valid = inputs.get("valid")
        valid_u8 = None if valid is None else np.ascontiguousarray(valid[..., 0]).view(np.uint8)
        every = self.checkpoint_every if 0 < self.checkpoint_every < T else T
        h = _POOL.empty((T, B, dims.out), x.dtype)  # (T, B, H): the output, kept for ∂W_hh
        checkpoints, fm, state = [], None, state0_fm
        segments = _segments(T, reverse, every)
        with self._one_pool() as threads:
            for s, (_, lo, hi) in enumerate(segments):
                checkpoints.append(state)
                fm = self._run_forward(loop, p, x, state, lo, hi, reverse, valid_u8, threads, fm,
                                       h[lo:hi],
                                       None if x_kept is x else x_kept[lo:hi])
                last = 0 if reverse else hi - lo - 1
                state = tuple(fm[name][last % len(fm[name])] for name in cell.state)
                if s + 1 < len(segments):  # fm is reused by the next segment
                    state = tuple(aligned_copy(st) for st in state)
        # copies: at B 1 s.T is already contiguous, and ascontiguousarray's view of the h ring
        # (scratch the next layer's forward overwrites) was every layer's but the last's h_n
        state_T = tuple(s.T.copy() for s in state)
        out = h if valid is None else h * valid
        if every < T:
            saved = {"h": h}
            fm = None  # recomputed in backward, a segment at a time
        else:
            saved = {name: a.transpose(0, 2, 1) for name, a in fm.items()}
            saved["h"] = h
            for name in _BACKWARD_SKIPS.get(loop.name, ()):  # what its backward never reads
                del fm[name]
        return out, state_T, CompiledCache(x_kept, inputs, reverse, tuple(state0), saved, dims,
                                           fm, state0_fm, valid_u8, every, tuple(checkpoints))

    # its backward adds ∂W_ih and ∂W_hh into the caller's totals (accumulate_into) when
    # they are C-contiguous arrays of the gradient's dtype and shape: no zeroed temporaries,
    # no second pass to add them (rnncore/stack.py stack_backward)
    accumulates_grads = True

    def backward(self, cell, p, cache, dout, dstate, record=None, need_dx=True,
                 interventions=None, dstates_all=None, accumulate_into=None):
        if not isinstance(cache, CompiledCache) or interventions is not None \
                or dstates_all is not None:
            return self.fallback.backward(cell, p, cache, dout, dstate, record, need_dx,
                                          interventions, dstates_all)
        x, inputs, reverse, state0, _, dims, fm, state0_fm, valid_u8, every, checkpoints = cache
        loop = cell.cpu_loop_for(dims)
        T, B, I = x.shape
        H, GH, dt = dims.hidden, p["w_ih"].shape[0], dout.dtype
        valid = inputs.get("valid")
        # ∂h: the loop starts each step's from ∂L/∂out (Args::dout), the first one here
        dh = _POOL.empty((T, H, B), dt)
        dout = np.ascontiguousarray(dout if valid is None else dout * valid)
        last = 0 if reverse else T - 1
        np.add(dout[last].T, dstate[0].T, out=dh[last])
        dh0 = aligned_zeros((H, B), dt)
        rest = [aligned_copy(d.T) for d in dstate[1:]]
        history = _POOL.empty((T, H, B), dt) if record is not None and loop.history else None
        # ∂z is kept for a chunk of steps at a time (a few, ZBUFFERS, on several threads):
        # its hoisted GEMMs (∂W_ih, ∂W_hh, ∂b; ∂x where the loop does not compute it) run as
        # soon as the backward has passed the chunk (kernels/backward_chunks.h).
        # The chunk length is a fixed function of the shapes (CHUNK_BYTES, CHUNK_SHARE; at
        # least 512 columns: 2-step chunks measured 10 % slower), so the arithmetic does
        # not depend on checkpoint_every.
        item = np.dtype(dt).itemsize
        step_bytes = GH * B * item
        chunk_bytes = min(max(T * step_bytes // CHUNK_SHARE, CHUNK_BYTES[0]), CHUNK_BYTES[1])
        chunk = max(-(-CHUNK_MIN_COLUMNS // B), chunk_bytes // step_bytes)
        chunk = min(T, chunk, max(1, CHUNK_BYTES[1] // step_bytes))
        chunk = -(-T // -(-T // chunk))  # every chunk the same length, give or take one
        # (rows, chunk, B): a row's n·B columns contiguous, as the weight gradients read them;
        # every loop's grads are G·H rows (the C++ finds buffer k at k·G·H·chunk·B)
        assert all(width == GH // H for _, width in loop.grads)
        buffers = min(ZBUFFERS, -(-T // chunk)) if self.blas.get_num_threads() > 1 else 1
        zbuf = [self._scratch(name, (buffers, width * H, chunk, B), dt)
                for name, width in loop.grads]
        into = {key: a for key, a in (accumulate_into or {}).items()
                if key in ("w_ih", "w_hh") and _accumulates(a, dt, p[key].shape)}
        wg = {key: into[key] if key in into else np.zeros(p[key].shape, dt)
              for key in ("w_ih", "w_hh")}
        wg["b_ih"] = np.zeros(GH, dt)
        wg["b_hh"] = np.zeros(GH, dt) if loop.recurrent_bias else None
        dx = _POOL.empty((T, B, I), dt) if need_dx else None
        x = np.ascontiguousarray(x)
        w_ih, w_hh = np.ascontiguousarray(p["w_ih"]), np.ascontiguousarray(p["w_hh"])
        h0 = np.ascontiguousarray(state0[0])
        h_prev = self._scratch("h_prev", (chunk * B, H), dt)  # a chunk's h_{t−1} taking h0
        dstate_scratch = [self._scratch(f"dstate {k}", (H, B), dt) for k in range(len(rest))]
        names = [name for name, _ in loop.saved]
        skips = _BACKWARD_SKIPS.get(loop.name, ())
        segments = _segments(T, reverse, every)
        seg_fm = None
        with self._one_pool() as threads:
            args = _ARGS[dt](batch=B, hidden=H, reverse=int(bool(reverse)), w_hh=_ptr(w_hh),
                             valid=_ptr(valid_u8), dh=_ptr(dh), dh0=_ptr(dh0),
                             threads=threads, grad_stride=chunk * B, dout=_ptr(dout))
            for k, (d, sc) in enumerate(zip(rest, dstate_scratch)):
                args.dstate[2 * k], args.dstate[2 * k + 1] = _ptr(d), _ptr(sc)
            for k, z in enumerate(zbuf):
                args.grads[k] = _ptr(z)
            args.grads[3] = _ptr(history)
            chunked = ChunkedArgs(
                total=T, chunk=chunk, x=_ptr(x), h=_ptr(cache.saved["h"]), h0=_ptr(h0),
                dx=_ptr(dx), h_prev=_ptr(h_prev), buffers=buffers, products=HoistedArgs(
                    groups=GH // H, hidden=H, input=I, threads=threads, batch=B,
                    w_ih=_ptr(w_ih), dw_ih=_ptr(wg["w_ih"]), dw_hh=_ptr(wg["w_hh"]),
                    db_ih=_ptr(wg["b_ih"]), db_hh=_ptr(wg["b_hh"])))
            for k, (_, width) in enumerate(loop.saved):
                chunked.saved_width[k] = width
            for k, name in enumerate(cell.state):
                chunked.state_slot[k] = names.index(name) if name in names else -1
            for s in range(len(segments) - 1, -1, -1):
                k0, lo, hi = segments[s]
                if fm is not None:
                    seg = fm
                else:
                    seg_fm = self._run_forward(loop, p, x, checkpoints[s], lo, hi, reverse,
                                               valid_u8, threads, seg_fm)
                    seg = seg_fm
                for k, name in enumerate(names):
                    args.saved[k] = None if name in skips else _ptr(seg.get(name))
                chunked.first, chunked.end, chunked.seg_lo = k0, k0 + hi - lo, lo
                for k, st in enumerate(checkpoints[s]):
                    chunked.checkpoint[k] = _ptr(st)
                self._call(loop, "backward", dt, args, chunked)
        del seg_fm
        if record is not None:
            for t in (range(T) if reverse else range(T - 1, -1, -1)):
                more = () if history is None else (history[t].T,)
                record(t, (dh[t].T,) + more)
        out = {"w_ih": wg["w_ih"], "b_ih": wg["b_ih"], "w_hh": wg["w_hh"],
               "b_hh": wg["b_hh"] if loop.recurrent_bias else wg["b_ih"]}
        for key in into:  # added into the caller's totals already
            del out[key]
        dstate0 = (np.ascontiguousarray(dh0.T),) + tuple(np.ascontiguousarray(d.T) for d in rest)
        return dx, dstate0, out


# the driver's large per-call arrays, reused across calls once nothing holds them: a fresh
# tens-of-MB allocation page-faults at first touch (rnncore/buffer_pool.py)
_POOL = BufferPool()

# the saved buffers a loop's C++ forward need not write (passed as null): the LSTM's
# backward recomputes tanh(c_t) from c_t (kernels/lstm_cpu.cpp)
_NOT_KEPT = {"lstm": ("tanh_c",)}

# the saved buffers a loop's C++ backward never reads (kernels/*_cpu.cpp), dropped after
# the forward: the LSTM's backward reads c, the gates and tanh(c), not h (kept batch-major)
_BACKWARD_SKIPS = {"lstm": ("h",)}


def _accumulates(a, dtype, shape) -> bool:
    """Whether the C++ backward may add a gradient of ``dtype`` and ``shape`` into ``a``."""
    return isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape \
        and a.flags.c_contiguous and a.flags.writeable


def _segments(T, reverse, every):
    """[(first loop position, time range lo, hi)] of each segment of ``every`` steps."""
    out = []
    for k0 in range(0, T, every):
        k1 = min(T, k0 + every)
        out.append((k0, T - k1, T - k0) if reverse else (k0, k0, k1))
    return out


__all__ = ["CompiledCPU", "CompiledCache", "LayerCache", "available", "library"]
