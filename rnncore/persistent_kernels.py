"""Build and launch the persistent kernels (``kernels/persistent_*.cu``).

A persistent kernel runs all T steps of one layer direction in one cooperative launch
(``kernels/persistent_lstm.cu`` explains the work split). These kernels call
``grid_sync()``, so they are built apart from the pointwise kernels of ``rnncore.fused``:

* on a GPU by NVRTC through ``cupy.RawModule``, with ``-I`` to the cooperative-groups
  headers (``cuda_include_dirs``), and launched with ``cuLaunchCooperativeKernel``
  (CuPy's ``enable_cooperative_groups=True`` at launch; -rdc is not needed since CUDA 11);
* on the CPU by the host C++ compiler, through ``kernels/host_shim.h`` with
  ``RNNCORE_HOST_EXPORT_COOPERATIVE``: every emulated CUDA thread is a fiber, blocks keep
  their own shared memory, and ``grid_sync()`` is the emulation's grid barrier, so the CPU
  executes the very code the GPU runs and the tests compare it with the reference driver.

``kernels_for(device, dtype)`` gives ``{stem: launch(grid, block, args, shared_bytes)}``.
``limits(device)`` says how many blocks may be resident at once and how much shared
memory one block may have: what a cooperative launch must respect.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from . import backend, fused

# The kernels: stem -> C++ template ("{T}" the scalar type). Each is cooperative.
KERNELS = {
    "persistent_lstm_forward": "persistent_lstm_forward<{T}>",
    "persistent_lstm_backward": "persistent_lstm_backward<{T}>",
}


class Limits(NamedTuple):
    """What one cooperative launch may use on a device."""

    resident_blocks: int  # blocks that can be resident at once (one per multiprocessor)
    shared_bytes: int  # dynamic shared memory one block may have (the opt-in maximum)
    threads: int = 256  # threads per block the drivers use at most


# The host emulation has no hard limits; it is given an H100's (132 SMs, 227 KiB of
# shared memory per block), so that the choices made on the CPU are those of a GPU.
EMULATED = Limits(resident_blocks=132, shared_bytes=227 * 1024)


def sources() -> tuple:
    return tuple(sorted(p.name for p in fused.kernels_dir().glob("persistent_*.cu")))


def table(dtype) -> dict:
    """{exported name: C++ template expression} for ``dtype``."""
    dt = backend.resolve_dtype(dtype).name
    return {f"{stem}_{fused.SUFFIX[dt]}": expr.format(T=fused.CTYPES[dt])
            for stem, expr in KERNELS.items()}


def device_source() -> str:
    """One self-contained CUDA source (local includes inlined), what NVRTC compiles."""
    seen: set = set()
    return "".join(fused._expand(fused.kernels_dir() / name, seen) for name in sources())


def host_source() -> str:
    """The shim, the same kernels, one cooperative export per kernel and dtype."""
    seen: set = set()
    shim = fused._expand(fused.kernels_dir() / "host_shim.h", seen)
    body = "".join(fused._expand(fused.kernels_dir() / name, seen) for name in sources())
    exports = [f"RNNCORE_HOST_EXPORT_COOPERATIVE({name}, {expr})"
               for dt in fused.CTYPES for name, expr in table(dt).items()]
    return shim + body + "\n".join(exports) + "\n"


# ----------------------------------------------------------------------------- headers
def _nvrtc_major():
    """NVRTC's major version through CuPy or the pip wheel; None when unknown."""
    try:
        import ctypes
        import glob

        for base in sys.path:
            for name in sorted(glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib",
                                                      "libnvrtc.so*"))):
                lib = ctypes.CDLL(name)
                major, minor = ctypes.c_int(), ctypes.c_int()
                lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
                return major.value
    except OSError:
        pass
    return None


def _toolkit_major(include):
    try:
        with open(os.path.join(include, "cuda.h"), errors="replace") as f:
            for line in f:
                if line.startswith("#define CUDA_VERSION"):
                    return int(line.split()[2]) // 1000
    except (OSError, ValueError, IndexError):
        pass
    return None


def cuda_include_dirs() -> list:
    """Folders holding <cooperative_groups.h> and the CCCL headers it includes.

    $RNNCORE_CUDA_INCLUDE (os.pathsep-separated) as given; else the nvidia-cuda-runtime-cu12
    and nvidia-cuda-cccl-cu12 wheels; else a CUDA toolkit ($CUDA_PATH, $CUDA_HOME,
    /usr/local/cuda; include/ and include/cccl/) of NVRTC's major version when that is
    known. [] when none is found (grid_sync.cuh explains why these are needed).
    """
    given = [p for p in os.environ.get("RNNCORE_CUDA_INCLUDE", "").split(os.pathsep) if p]
    if given:
        return given

    def first(relative, *files):
        return next((os.path.join(base, relative) for base in sys.path
                     if all(os.path.isfile(os.path.join(base, relative, f)) for f in files)),
                    None)

    runtime = first(os.path.join("nvidia", "cuda_runtime", "include"), "cooperative_groups.h")
    cccl = first(os.path.join("nvidia", "cuda_cccl", "include"), os.path.join("nv", "target"))
    if runtime and cccl:
        return [runtime, cccl]
    nvrtc = _nvrtc_major()
    roots = [os.environ.get(v) for v in ("CUDA_PATH", "CUDA_HOME")] + ["/usr/local/cuda"]
    for root in filter(None, roots):
        include = os.path.join(root, "include")
        if os.path.isfile(os.path.join(include, "cooperative_groups.h")) and \
                (nvrtc is None or _toolkit_major(include) in (None, nvrtc)):
            return [include] + [d for d in [os.path.join(include, "cccl")] if os.path.isdir(d)]
    return []


def nvrtc_options(arch=None) -> tuple:
    """NVRTC options: rnncore's, the header folders, and the architecture when given."""
    includes = cuda_include_dirs()
    if not includes:
        raise fused.FusedUnavailableError(
            "the persistent kernels need <cooperative_groups.h>: pip install "
            "nvidia-cuda-runtime-cu12 nvidia-cuda-cccl-cu12, or set RNNCORE_CUDA_INCLUDE")
    options = list(fused.NVRTC_OPTIONS) + [f"-I{d}" for d in includes]
    if arch:
        options.append(f"--gpu-architecture=compute_{arch}")
    return tuple(options)


# ----------------------------------------------------------------------------- builds
class _CupyCooperative:
    """A kernel of a ``cupy.RawModule`` launched cooperatively (every block resident at
    once). The module is compiled without CuPy's ``enable_cooperative_groups`` (which adds
    -rdc and links libcudadevrt from a CUDA toolkit); the launch goes through the
    ``cupy.cuda.function.Function`` underneath the RawKernel, whose last argument asks for
    ``cuLaunchCooperativeKernel``."""

    def __init__(self, raw_kernel):
        self.raw = raw_kernel
        self._shared_set = 0

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > 48 * 1024 and shared_mem > self._shared_set:
            # above 48 KiB of dynamic shared memory a kernel must opt in
            self.raw.max_dynamic_shared_size_bytes = shared_mem
            self._shared_set = shared_mem
        self.raw.kernel(tuple(grid), tuple(block), tuple(args), shared_mem, None, True)


def _cupy_kernels(device, dtype) -> dict:
    cupy = backend.import_cupy()
    names = table(dtype)
    with cupy.cuda.Device(device.index):
        module = cupy.RawModule(code=device_source(), options=nvrtc_options(),
                                name_expressions=list(names.values()))
        return {name: _CupyCooperative(module.get_function(expr))
                for name, expr in names.items()}


def _host_kernels(dtype) -> dict:
    import ctypes

    library = ctypes.CDLL(str(fused.build_host_library(source=host_source())))
    return {name: fused.HostKernel(getattr(library, name), cooperative=True)
            for name in table(dtype)}


@lru_cache(maxsize=None)
def _kernels(device_key, dtype_name):
    device = backend.parse_device(device_key)
    if device.kind == "cuda":
        return _cupy_kernels(device, dtype_name)
    if fused.find_compiler() is None:
        raise fused.FusedUnavailableError("the persistent kernels' CPU emulation needs a "
                                          "C++ compiler (g++, c++ or clang++, or $CXX)")
    return _host_kernels(dtype_name)


def kernels_for(device, dtype) -> dict:
    """{stem: launch(grid, block, args, shared_mem)} for ``device`` and ``dtype``."""
    dev, dt = backend.parse_device(device), backend.resolve_dtype(dtype)
    built = _kernels(str(dev), dt.name)
    suffix = fused.SUFFIX[dt.name]
    return {stem: built[f"{stem}_{suffix}"] for stem in KERNELS}


@lru_cache(maxsize=None)
def _cuda_limits(index):
    cupy = backend.import_cupy()
    props = cupy.cuda.runtime.getDeviceProperties(index)
    shared = props.get("sharedMemPerBlockOptin") or props.get("sharedMemPerBlock", 48 * 1024)
    return Limits(int(props["multiProcessorCount"]), int(shared))


def limits(device) -> Limits:
    """The cooperative launch limits of ``device`` (``EMULATED`` on the CPU)."""
    dev = backend.parse_device(device)
    return _cuda_limits(dev.index) if dev.kind == "cuda" else EMULATED


def host_args(*values):
    """Kernel arguments as the launchers take them: ints as int32, arrays as they are."""
    return tuple(np.int32(v) if isinstance(v, (int, bool, np.bool_)) else v for v in values)
