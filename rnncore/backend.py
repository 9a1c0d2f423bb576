"""The array layer: one place that knows whether arrays live in NumPy or CuPy.

Everything else in rnncore is written against an array module ``xp`` (``numpy`` or
``cupy``) obtained here, so the same reference code runs on the CPU and the GPU.
CuPy is imported lazily, only when a CUDA device is asked for or a CuPy array is seen;
importing and testing rnncore never needs it.

Devices are strings, as in PyTorch: ``"cpu"``, ``"cuda"`` (device 0) or ``"cuda:1"``.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import NamedTuple

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}


class Device(NamedTuple):
    """A parsed device string: ``kind`` is ``"cpu"`` or ``"cuda"``; ``index`` is the GPU."""

    kind: str
    index: int

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(device) -> Device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`Device` into a :class:`Device`."""
    if isinstance(device, Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {device!r}")
    text = device.strip().lower()
    if text == "cpu":
        return Device("cpu", 0)
    if text == "cuda":
        return Device("cuda", 0)
    if text.startswith("cuda:") and text[5:].isdigit():
        return Device("cuda", int(text[5:]))
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def import_cupy():
    """Import and return cupy, or raise a clear error saying why the GPU is unavailable."""
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            "device 'cuda' needs CuPy, which is not installed: "
            "pip install 'rnncore[cuda12]' (or [cuda13])"
        ) from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # cupy raises CUDARuntimeError when no driver is present
        raise RuntimeError(f"device 'cuda' asked for, but no CUDA GPU is usable: {err}") from err
    if count == 0:
        raise RuntimeError("device 'cuda' asked for, but no CUDA GPU is present")
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        import_cupy()
    except RuntimeError:
        return False
    return True


def array_module(device):
    """The array module (``numpy`` or ``cupy``) for a device string."""
    dev = parse_device(device)
    if dev.kind == "cpu":
        return np
    cupy = import_cupy()
    if dev.index >= cupy.cuda.runtime.getDeviceCount():
        raise RuntimeError(f"device {device!r} asked for, but this machine has fewer GPUs")
    return cupy


def is_cupy_array(array) -> bool:
    """True for a ``cupy.ndarray``, without importing cupy when it was never imported."""
    return type(array).__module__.startswith("cupy")


def xp_of(array):
    """The array module of an array: ``cupy`` for CuPy arrays, else ``numpy``."""
    if is_cupy_array(array):
        import cupy

        return cupy
    return np


def to_device(array, device, dtype=None):
    """Copy (only if needed) ``array`` onto ``device``, optionally casting to ``dtype``."""
    dev = parse_device(device)
    if dev.kind == "cpu":
        out = to_numpy(array)
        return out if dtype is None else out.astype(dtype, copy=False)
    cupy = array_module(dev)
    with cupy.cuda.Device(dev.index):
        return cupy.asarray(array, dtype=dtype)


def to_numpy(array) -> np.ndarray:
    """A NumPy array holding ``array``'s values (a host copy for CuPy arrays)."""
    if is_cupy_array(array):
        return array.get()
    if hasattr(array, "detach") and hasattr(array, "numpy"):  # a torch tensor
        return array.detach().cpu().numpy()
    return np.asarray(array)


def resolve_dtype(dtype) -> np.dtype:
    """``"float32"``/``"float64"`` (or the numpy types) to a numpy dtype; nothing else."""
    if dtype is None or isinstance(dtype, bool):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        return np.dtype(DTYPES[dtype])
    try:
        resolved = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from err
    if resolved not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return resolved


def memory_bound(env: str, fraction: float) -> int:
    """Bytes something may ask for: ``$env`` (a number of bytes) if set, else ``fraction``
    of the machine's physical memory (16 GiB where that cannot be read)."""
    text = os.environ.get(env)
    if text:
        try:
            return int(float(text))
        except ValueError:
            raise ValueError(f"{env} must be a number of bytes, got {text!r:.40}") from None
    try:
        return int(fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def sigmoid(xp, x, out=None):
    """Logistic sigmoid σ(x) = 1 / (1 + e^{−x}), computed as σ(x) = ½ tanh(x/2) + ½.

    The identity is exact; tanh is a vectorised ufunc in NumPy and CuPy, which makes this
    several times faster than ``expit`` on the CPU. ``out`` may be ``x`` itself.
    """
    out = xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def gemm(a, b, out, *, transpose_b=False, beta=0.0):
    """out ← a · op(b) + β · out, in place; op(b) = bᵀ if transpose_b; β is 0 or 1.

    ``out`` is a time step's slice of a preallocated buffer. On the GPU this is one cuBLAS
    call (β = 1 accumulates for free). On the CPU it is NumPy's matmul into ``out`` (β = 0)
    or into a temporary that is then added (β = 1): NumPy's own BLAS, so that one thread
    pool serves every GEMM (mixing in SciPy's BLAS, a second pool, halves the speed).
    """
    if beta not in (0.0, 1.0):
        raise ValueError(f"gemm supports beta 0 or 1, got {beta}")
    if is_cupy_array(out):
        return _cublas_gemm(a, b, out, transpose_b, beta)
    op_b = b.T if transpose_b else b
    if beta:
        out += a @ op_b
    else:
        np.matmul(a, op_b, out=out)
    return out


_SCALARS = {}  # (dtype, value) -> a host scalar whose address cuBLAS reads alpha/beta from


def _host_scalar(dtype, value):
    key = (np.dtype(dtype).char, float(value))
    if key not in _SCALARS:
        _SCALARS[key] = np.array(value, dtype=dtype)
    return _SCALARS[key].ctypes.data


def _cublas_gemm(a, b, out, transpose_b, beta):
    """cuBLAS ?gemm on row-major arrays, called directly when all three are C-contiguous.

    Row-major out = a · op(b) is column-major outᵀ = op(b)ᵀ · aᵀ, so cuBLAS gets
    (op on b, no op on a, n, m, k) with the leading dimensions of the row-major arrays.
    Anything else goes through ``cupy.cublas.gemm``, which copies as it needs to.
    """
    from cupy import cublas as cupy_cublas
    from cupy.cuda import device

    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:  # older CuPy layouts
        from cupy.cuda import cublas

    if not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous
            and a.dtype == b.dtype == out.dtype and out.dtype.char in "fd"):
        return cupy_cublas.gemm("N", "T" if transpose_b else "N", a, b, out=out, beta=beta)
    m, k = a.shape
    n = out.shape[1]
    routine = cublas.sgemm if out.dtype.char == "f" else cublas.dgemm
    routine(device.get_cublas_handle(), int(transpose_b), 0, n, m, k,
            _host_scalar(out.dtype, 1.0), b.data.ptr, b.shape[1], a.data.ptr, k,
            _host_scalar(out.dtype, beta), out.data.ptr, n)
    return out


def bias_sum(*biases):
    """The sum of the bias vectors that exist (None entries skipped), or None if none do."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    total = present[0]
    for b in present[1:]:
        total = total + b
    return total


def filled(xp, value, shape, dtype):
    """A new array of ``shape`` holding ``value`` broadcast (zeros when value is None)."""
    if value is None:
        return xp.zeros(shape, dtype=dtype)
    out = xp.empty(shape, dtype=dtype)
    out[...] = value
    return out


def sum_outer(d, a):
    """Σ_t d_tᵀ a_t for (T, B, m) and (T, B, n) stacks: one (m, T·B) × (T·B, n) GEMM."""
    return d.reshape(-1, d.shape[-1]).T @ a.reshape(-1, a.shape[-1])


class Generator:
    """The seeded random source of a module: dropout masks, random initial states, inits.

    Numbers are drawn on the host by ``numpy.random.Generator`` and moved to the module's
    device, so a seed gives the same weights and masks on the CPU and on the GPU.

    Inside ``batch_share(start, stop, total)`` a draw with a ``batch_axis`` is drawn for
    all ``total`` rows of the batch and rows ``start:stop`` are kept: a data-parallel rank
    holding those rows gets the very numbers a single process holding the whole batch
    would, and its generator advances exactly as that process's does.
    """

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise TypeError(f"seed must be None or a non-negative int, got {seed!r}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._share = None  # (start, stop, total) inside batch_share

    @contextlib.contextmanager
    def batch_share(self, start: int, stop: int, total: int):
        """Draws along a batch axis are those of ``total`` rows, cut to ``start:stop``."""
        self._share = (start, stop, total)
        try:
            yield self
        finally:
            self._share = None

    def _random(self, draw, shape, batch_axis):
        """``draw(size=shape)``, for the whole batch when inside ``batch_share``."""
        if self._share is None or batch_axis is None:
            return draw(size=shape)
        start, stop, total = self._share
        if shape[batch_axis] != stop - start:
            raise ValueError(f"a draw for {shape[batch_axis]} batch rows inside a batch share "
                             f"of {stop - start}")
        whole = draw(size=shape[:batch_axis] + (total,) + shape[batch_axis + 1:])
        return whole[(slice(None),) * batch_axis + (slice(start, stop),)]

    def normal(self, std, shape, dtype, device="cpu", batch_axis=None):
        draw = self._random(self._rng.standard_normal, tuple(shape), batch_axis)
        return to_device((std * draw).astype(dtype), device)

    def standard_normal(self, shape, batch_axis=None) -> np.ndarray:
        """Host float64 N(0, 1) numbers."""
        return self._random(self._rng.standard_normal, tuple(shape), batch_axis)

    def keep_mask(self, p, shape, dtype, device="cpu", batch_axis=None):
        """Inverted-dropout mask: 1/(1-p) with probability 1-p, else 0."""
        keep = self._random(self._rng.random, tuple(shape), batch_axis) >= p
        return to_device((keep / (1.0 - p)).astype(dtype), device)

    def bernoulli(self, p, shape, dtype, device="cpu", batch_axis=None):
        """A mask of 1 with probability p, else 0 (zoneout: 1 keeps the previous state)."""
        draw = self._random(self._rng.random, tuple(shape), batch_axis)
        return to_device((draw < p).astype(dtype), device)

    def get_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state

    @property
    def numpy(self) -> np.random.Generator:
        """The underlying NumPy generator, for draws the helpers above do not cover."""
        return self._rng
