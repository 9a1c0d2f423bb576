"""A cuBLAS handle of our own, called through ctypes: GEMMs a CUDA graph can capture.

Why a handle of our own: CuPy sets the stream of *its* cuBLAS handle on every call, and
``cublasSetStream`` raises while a stream is being captured (CuPy issue #6290), so no GEMM
issued through CuPy can be part of a CUDA graph. A handle whose stream and workspace are
set once, before capture, can.

Why ctypes on libcublas rather than nvmath-python: the GPU machines this project runs on
cannot reach a package index, and libcublas is already there (CuPy loads it); ctypes needs
nothing installed. We call six functions (create, destroy, set stream, set workspace,
S/D gemm), whose C signatures are stable across CUDA 11–13; the argument checks are ours
and run before the library is touched, so they are tested on the CPU with a fake library.

Row-major arrays, as everywhere in rnncore: ``gemm(a, b, out, transpose_b, beta)`` is

    out ← a · op(b) + β out,   op(b) = bᵀ if transpose_b,   β ∈ {0, 1}

A row-major (m, n) array read as column-major is its (n, m) transpose, so cuBLAS
computes outᵀ = op(b)ᵀ aᵀ:
``?gemm(op_b, N, n, m, k, 1, b, ld_b, a, ld_a, β, out, ld_out)``, with ld the row stride
in elements. Each array may be a row block or column block of a larger one (unit stride
along its last axis, a row stride ≥ its width); nothing is copied, which inside a graph
would be an allocation the graph does not own, so anything else is refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

import numpy as np

OP_N, OP_T = 0, 1
WORKSPACE_BYTES = 32 * 2**20  # what NVIDIA recommends for Hopper; ample for older GPUs
STATUS = {0: "SUCCESS", 1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE",
          8: "ARCH_MISMATCH", 11: "MAPPING_ERROR", 13: "EXECUTION_FAILED",
          14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED", 16: "LICENSE_ERROR"}

_P, _I = ctypes.c_void_p, ctypes.c_int
SIGNATURES = {
    "cublasCreate_v2": [_P],
    "cublasDestroy_v2": [_P],
    "cublasSetStream_v2": [_P, _P],
    "cublasSetWorkspace_v2": [_P, _P, ctypes.c_size_t],
    "cublasSgemm_v2": [_P, _I, _I, _I, _I, _I, _P, _P, _I, _P, _I, _P, _P, _I],
    "cublasDgemm_v2": [_P, _I, _I, _I, _I, _I, _P, _P, _I, _P, _I, _P, _P, _I],
}


class CublasError(RuntimeError):
    """A cuBLAS call returned an error status."""


def library_candidates() -> list:
    """Where libcublas may be: already loaded by CuPy (its path in /proc/self/maps), the
    nvidia-cublas wheels, then the loader's search path."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libcublas.so" in os.path.basename(path) and path not in found:
                    found.append(path)
    except OSError:
        pass
    for base in sys.path:  # nvidia-cublas-cu12 (nvidia/cublas/lib), CUDA 13's (nvidia/cu13/lib)
        for folder in ("cublas", "cu*"):
            found += sorted(glob.glob(os.path.join(base, "nvidia", folder, "lib",
                                                   "libcublas.so*")))
    found += [n for n in (ctypes.util.find_library("cublas"), "libcublas.so.13",
                          "libcublas.so.12", "libcublas.so.11", "libcublas.so") if n]
    return found


def load_library():
    """libcublas through ctypes, with the argument types of the functions we call."""
    errors = []
    for name in library_candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as err:
            errors.append(f"{name}: {err}")
            continue
        return declare(lib)
    raise CublasError("libcublas not found; tried " + "; ".join(errors or ["nothing"]))


def declare(lib):
    """Set the C signatures (a fake library in the tests takes the same calls)."""
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    return lib


def pointer(a) -> int:
    """The device (CuPy) or host (NumPy) address of an array's first element."""
    data = getattr(a, "data", None)
    if hasattr(data, "ptr"):
        return int(data.ptr)
    return int(a.ctypes.data)


def row_stride(name, a) -> int:
    """The row stride in elements of a 2-D array with unit stride along its rows."""
    if a.ndim != 2:
        raise ValueError(f"gemm: {name} must be 2-D, got shape {a.shape}")
    rows, cols = a.shape
    item = a.itemsize
    s0, s1 = a.strides
    if cols > 1 and s1 != item:
        raise ValueError(f"gemm: {name} must have unit stride along its last axis "
                         f"(strides {a.strides})")
    if rows <= 1:
        return max(cols, 1)
    if s0 < 0 or s0 % item or s0 // item < cols:
        raise ValueError(f"gemm: {name} rows must not overlap (strides {a.strides}, "
                         f"shape {a.shape})")
    return s0 // item


def check(a, b, out, transpose_b, beta):
    """The cuBLAS arguments for ``out ← a · op(b) + β out``, or a clear error.

    Returns (routine name, op on b, n, m, k, ld_b, ld_a, ld_out)."""
    if beta not in (0.0, 1.0):
        raise ValueError(f"gemm supports beta 0 or 1, got {beta}")
    dtypes = {np.dtype(a.dtype), np.dtype(b.dtype), np.dtype(out.dtype)}
    if len(dtypes) != 1 or np.dtype(out.dtype).char not in "fd":
        raise TypeError(f"gemm needs a, b and out of one dtype, float32 or float64; got "
                        f"{a.dtype}, {b.dtype}, {out.dtype}")
    ld_a, ld_b, ld_out = row_stride("a", a), row_stride("b", b), row_stride("out", out)
    m, k = a.shape
    n, kb = (b.shape if transpose_b else b.shape[::-1])
    if kb != k or out.shape != (m, n):
        op = "bᵀ" if transpose_b else "b"
        raise ValueError(f"gemm shapes do not match: a {a.shape} · {op} (b {b.shape}) into "
                         f"out {out.shape}")
    routine = "cublasSgemm_v2" if np.dtype(out.dtype).char == "f" else "cublasDgemm_v2"
    return routine, OP_T if transpose_b else OP_N, n, m, k, ld_b, ld_a, ld_out


class Handle:
    """One cuBLAS handle bound to one stream and one workspace for its whole life.

    ``stream`` is a raw cudaStream_t (int); ``workspace`` an array (kept alive here) whose
    memory cuBLAS uses instead of allocating, which it must not do during capture.
    """

    def __init__(self, stream, workspace, lib=None):
        self.lib = lib if lib is not None else load_library()
        self.workspace = workspace
        self.stream = int(stream)
        handle = ctypes.c_void_p()
        self._call("cublasCreate_v2", ctypes.byref(handle))
        self.handle = handle.value
        self._call("cublasSetStream_v2", self.handle, self.stream)
        nbytes = int(workspace.nbytes) if workspace is not None else 0
        self._call("cublasSetWorkspace_v2", self.handle,
                   pointer(workspace) if nbytes else None, nbytes)
        # alpha and beta are read from host memory (the default pointer mode), at capture
        self._scalars = {(c, v): np.array(v, dtype=c) for c in "fd" for v in (0.0, 1.0)}

    def _call(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise CublasError(f"{name} failed: CUBLAS_STATUS_{STATUS.get(status, status)}")

    def gemm(self, a, b, out, *, transpose_b=False, beta=0.0):
        """out ← a · op(b) + β out on this handle's stream (``backend.gemm``'s contract)."""
        routine, op_b, n, m, k, ld_b, ld_a, ld_out = check(a, b, out, transpose_b, beta)
        if self.handle is None:
            raise CublasError("gemm on a destroyed cuBLAS handle")
        char = np.dtype(out.dtype).char
        alpha, beta_ = self._scalars[(char, 1.0)], self._scalars[(char, float(beta))]
        self._call(routine, self.handle, op_b, OP_N, n, m, k, alpha.ctypes.data, pointer(b),
                   ld_b, pointer(a), ld_a, beta_.ctypes.data, pointer(out), ld_out)
        return out

    def close(self):
        if self.handle is not None:
            self._call("cublasDestroy_v2", self.handle)
            self.handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass


def cuda_handle(stream):
    """A Handle on CuPy stream ``stream`` with a fresh WORKSPACE_BYTES workspace."""
    import cupy

    cupy.cuda.device.get_cublas_handle()  # CuPy's libcublas loaded: ours is the same file
    workspace = cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)
    return Handle(stream.ptr, workspace)
