"""Activation memory: what a forward keeps for the backward, counted and estimated.

- ``kept_bytes(obj)``: the bytes of the distinct array buffers reachable from a cache (a
  module's last forward, a ``StackCache``, a dict or tuple of arrays), each buffer counted
  once however many views of it there are. This is the engine's own count of what a
  forward keeps for its backward (the bench reports it beside torch's saved tensors).
- ``activation_estimate(spec, T, B, itemsize, every)``: the bytes a forward + backward
  needs for activations, from the shapes alone, before anything is allocated: per layer
  direction the buffers the cell declares it saves (``saved_widths``) and the hoisted
  input projection, per step, for all T (or, with ``checkpoint_every`` = k, the states
  every k steps, h for all T and one segment's buffers), the layer's output, and the
  backward's per-step gradient buffers (``grad_widths``, ∂h).
- ``check_activations(...)``: refuses, with a one-line error naming the bytes and the
  recompute knob, a forward whose estimate is above ``max_activation_bytes()``:
  ``RNNCORE_MAX_ACTIVATION_BYTES`` if set, else the memory the OS reports available.
"""

from __future__ import annotations

import functools
import math
import os
import time

import numpy as np


def _buffer(a):
    """The array that owns ``a``'s memory (the base of a chain of views)."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def kept_bytes(obj) -> int:
    """Bytes of the distinct array buffers reachable from ``obj`` (arrays, dicts, lists,
    tuples, named tuples, objects' ``__dict__``); a buffer shared by views counts once.
    ``exclude`` arrays (the input, parameters) are not the caller's to pass: count them
    separately and subtract."""
    seen_ids, buffers = set(), {}

    def walk(o):
        if id(o) in seen_ids:
            return
        seen_ids.add(id(o))
        if hasattr(o, "nbytes") and hasattr(o, "shape"):
            base = _buffer(o)
            buffers[id(base)] = int(base.nbytes)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            for v in vars(o).values():
                walk(v)

    walk(obj)
    return sum(buffers.values())


def activation_estimate(spec, T: int, B: int, itemsize: int, every: int = 0) -> int:
    """Bytes of a forward + backward's activations at (T, B), from the shapes alone."""
    try:  # every forward asks: remembered per (spec, T, B, itemsize, every)
        return _remembered_bytes(spec, T, B, itemsize, every)
    except TypeError:  # a spec whose cell cannot be hashed
        return _activation_bytes(spec, T, B, itemsize, every)


@functools.lru_cache(maxsize=256)
def _remembered_bytes(spec, T, B, itemsize, every) -> int:
    return _activation_bytes(spec, T, B, itemsize, every)


def _activation_bytes(spec, T, B, itemsize, every) -> int:
    total = 0
    for k in range(spec.num_layers):
        dims = spec.dims(k)
        cell = spec.cell
        p = {}
        saved = sum(cell.saved_widths(dims, p).values())
        grads = sum(cell.grad_widths(dims, p).values())
        gates = cell.num_gates * dims.hidden
        states = sum(cell.state_widths(dims))
        per_step_kept = saved + gates  # the saved buffers and the hoisted x_g
        if 0 < every < T:
            kept = math.ceil(T / every) * states + T * dims.out + every * per_step_kept
        else:
            kept = T * per_step_kept
        # the output (the next layer's input), the backward's ∂h and per-step gradients
        work = T * (dims.out + dims.out + grads)
        total += spec.num_directions * (kept + work)
    return total * B * itemsize


# MemAvailable is read at most this often (every forward checks it: a read of /proc/meminfo
# took about a tenth of the Python time of a small layer's forward)
MEM_AVAILABLE_SECONDS = 1.0
_MEM_AVAILABLE = [-math.inf, 0]  # [when it was read, bytes]


def max_activation_bytes() -> int:
    """``RNNCORE_MAX_ACTIVATION_BYTES`` if set, else the memory the OS reports available
    (``MemAvailable``; without /proc/meminfo, the physical memory)."""
    text = os.environ.get("RNNCORE_MAX_ACTIVATION_BYTES")
    if text:
        try:
            return int(float(text))
        except ValueError:
            raise ValueError(f"RNNCORE_MAX_ACTIVATION_BYTES must be a number of bytes, "
                             f"got {text!r:.40}") from None
    now = time.monotonic()
    if now - _MEM_AVAILABLE[0] < MEM_AVAILABLE_SECONDS:
        return _MEM_AVAILABLE[1]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    _MEM_AVAILABLE[:] = [now, int(line.split()[1]) * 1024]
                    return _MEM_AVAILABLE[1]
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def suggest_every(spec, T, B, itemsize, limit) -> int:
    """A ``checkpoint_every`` that brings the estimate under ``limit`` (√T if none)."""
    k = max(1, math.isqrt(T))
    return k


def check_activations(spec, T: int, B: int, itemsize: int, every: int = 0) -> int:
    """The estimate; raises MemoryError (one line) when it is above the limit."""
    need = activation_estimate(spec, T, B, itemsize, every)
    limit = max_activation_bytes()
    if need > limit:
        hint = (f"try checkpoint_every={suggest_every(spec, T, B, itemsize, limit)} "
                f"(recompute, about √T) or a shorter sequence / smaller batch"
                if not 0 < every < T else "try a smaller checkpoint_every, a shorter "
                "sequence or a smaller batch")
        raise MemoryError(f"this forward (T {T}, B {B}) needs about {need / 2**30:.3g} GiB "
                          f"({need} bytes) of activations, above the {limit / 2**30:.3g} GiB "
                          f"available (RNNCORE_MAX_ACTIVATION_BYTES sets it): {hint}")
    return need


def numpy_peak(fn):
    """(fn's result, peak bytes NumPy allocated while it ran, above what was live before):
    NumPy reports its allocations to ``tracemalloc``; memory the C++ loop or BLAS allocate
    themselves is not seen (the compiled driver allocates its buffers with NumPy)."""
    import tracemalloc

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    return result, peak


__all__ = ["activation_estimate", "check_activations", "kept_bytes", "max_activation_bytes",
           "numpy_peak"]
_ = np  # numpy is the arrays' home; kept for type clarity
