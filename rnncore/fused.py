"""The fused pointwise kernels: load ``kernels/*.cu``, compile them, launch them.

The kernels (one thread per (batch, unit) element, templated on float and double) are
compiled one of two ways, and driven by the *same* launch code either way:

* on a GPU by NVRTC through ``cupy.RawModule`` (once per device and dtype, cached);
* on the CPU by the host C++ compiler, through ``kernels/host_shim.h``, into a shared
  library cached by source hash in the user's cache directory and loaded with ctypes.
  There a launch runs the kernel for every (block, thread) index in turn, so the CPU
  executes exactly the code the GPU runs, and the tests compare it with the NumPy
  reference in every run.

Which kernels exist is read from the cell registry: each cell declares its kernel names
and C++ template expressions (``Cell.kernels``) and its fused twins (``fused_pointwise``),
which launch through a ``Launcher``. ``launcher_for(device, dtype)`` gives the launcher;
``pointwise_for(device, dtype)`` a namespace with the names, signatures and return values
of ``rnncore.cells.REFERENCE`` (``lstm_forward``, ``gru_backward``, …). Each call is one
kernel launch: a (B, H) grid of threads, in blocks of ``BLOCK``, with arguments
``(B, H, matrix, leading dimension, …, valid, outputs)``. Inputs are read in place (column
slices and broadcast rows through their leading dimension); outputs are the caller's
preallocated buffers, or fresh C-contiguous arrays when none are given. On a GPU nothing
here synchronises with the host: shapes are checked on the host, the launch is
asynchronous.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import backend, cells
from .cells.base import KernelSpec

BLOCK = 256  # threads per block, on the GPU and in the emulation alike
ROW_BLOCK = 128  # threads per block of a row (cooperative) kernel
NVRTC_OPTIONS = ("--std=c++17",)
HOST_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-fno-math-errno", "-w")
CTYPES = {"float32": "float", "float64": "double"}
SUFFIX = {"float32": "f32", "float64": "f64"}


class FusedUnavailableError(RuntimeError):
    """The fused kernels cannot run here (no compiler, no GPU, or the build failed)."""


class FusedBuildError(FusedUnavailableError):
    """The kernel sources did not compile: a defect, never a reason to skip a test."""


# ----------------------------------------------------------------------------- sources
def kernel_table(dtype) -> dict:
    """{exported name: C++ template expression} of every registered cell's kernels."""
    dt = backend.resolve_dtype(dtype).name
    ctype, sfx = CTYPES[dt], SUFFIX[dt]
    table = {}
    for cell in cells.cells():
        for stem, kernel in cell.kernels.items():
            table[f"{stem}_{sfx}"] = KernelSpec.of(kernel).template.format(T=ctype)
    return table


def cooperative_kernels(dtype) -> set:
    """The exported names of kernels whose threads cooperate (barriers, shared memory)."""
    sfx = SUFFIX[backend.resolve_dtype(dtype).name]
    return {f"{stem}_{sfx}" for cell in cells.cells() for stem, kernel in cell.kernels.items()
            if KernelSpec.of(kernel).cooperative}


def sources() -> tuple:
    """Every pointwise kernel source file, in name order (a new cell's .cu joins
    automatically). ``persistent_*.cu`` (whole-sequence cooperative kernels, which need the
    cooperative-groups headers) are built apart, by ``rnncore.persistent_kernels``."""
    return tuple(sorted(p.name for p in kernels_dir().glob("*.cu")
                        if not p.name.startswith("persistent_")))


def kernels_dir() -> Path:
    """The folder holding the .cu sources: inside the package (wheel) or the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FusedUnavailableError(f"kernel sources not found next to {here}")


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$")


def _expand(path: Path, seen: set) -> str:
    """The file's text with its local ``#include "…"`` inlined, each file once."""
    if path.name in seen:
        return ""
    seen.add(path.name)
    lines = []
    for line in path.read_text().splitlines():
        match = _INCLUDE.match(line)
        if match:
            lines.append(_expand(path.parent / match.group(1), seen))
        elif not _PRAGMA_ONCE.match(line):
            lines.append(line)
    return "\n".join(lines) + "\n"


def device_source() -> str:
    """One self-contained CUDA source with every kernel (what NVRTC compiles)."""
    seen: set = set()
    return "".join(_expand(kernels_dir() / name, seen) for name in sources())


def host_source() -> str:
    """The host translation unit: the shim, the same kernels, one export per kernel."""
    seen: set = set()
    shim = _expand(kernels_dir() / "host_shim.h", seen)
    exports = []
    for dt in CTYPES:
        cooperative = cooperative_kernels(dt)
        for name, expr in kernel_table(dt).items():
            macro = "RNNCORE_HOST_EXPORT_COOPERATIVE" if name in cooperative \
                else "RNNCORE_HOST_EXPORT"
            exports.append(f"{macro}({name}, {expr})")
    return shim + device_source() + "\n".join(exports) + "\n"


# ----------------------------------------------------------------------------- CPU build
def find_compiler():
    """The host C++ compiler: $CXX if set (and found), else g++, c++ or clang++."""
    wanted = os.environ.get("CXX")
    if wanted:
        return shutil.which(wanted)
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def cache_dir() -> Path:
    """$RNNCORE_CACHE_DIR, else $XDG_CACHE_HOME/rnncore, else ~/.cache/rnncore."""
    if os.environ.get("RNNCORE_CACHE_DIR"):
        return Path(os.environ["RNNCORE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnncore"


def _private(path: Path) -> bool:
    """Whether ``path`` is owned by this user and nobody else may write to it."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return (not stat.S_ISLNK(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _trusted_folder() -> Path:
    """The cache folder if it is (or can be made) private to this user; otherwise a fresh
    private folder for this process only (``mkdtemp``: unpredictable name, mode 0700)."""
    folder = cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        pass
    if _private(folder):
        return folder
    if "fallback" not in _HOST_BUILD:
        _HOST_BUILD["fallback"] = Path(tempfile.mkdtemp(prefix="rnncore-"))
    return _HOST_BUILD["fallback"]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(target: Path, digest_file: Path) -> bool:
    """A cached library is loaded only if it and its recorded hash are this user's own,
    nobody else can write them, and its content hash matches the record."""
    if not (_private(target) and _private(digest_file)):
        return False
    try:
        return digest_file.read_text().strip() == _file_digest(target)
    except OSError:
        return False


def build_host_library(cxx=None, source=None) -> Path:
    """Compile a kernels' host translation unit (the emulation); its cached path.

    ``source`` is the translation unit's text (default ``host_source()``, the pointwise
    kernels; ``rnncore.persistent_kernels`` passes its own).
    """
    stem = "fused" if source is None else "kernels"
    source = host_source() if source is None else source
    return build_library(stem, source, HOST_FLAGS, cxx=cxx)


def build_library(stem, source, flags, link_flags=("-shared",), cxx=None,
                  key_extra="") -> Path:
    """Compile ``source`` (``flags``) and link it (``link_flags``) into a shared library,
    once per source, compiler and flags. Compiling and linking are separate steps, so a
    compile-only flag such as -ffast-math does not link in startup code that would change
    the whole process's floating-point mode (flush-to-zero).

    The library is cached in a folder private to this user, beside a record of its content
    hash; a cached file that fails those checks is rebuilt, never loaded.
    """
    cxx = cxx or find_compiler()
    if cxx is None:
        raise FusedUnavailableError(
            "impl='fused' on the CPU needs a C++ compiler (g++, c++ or clang++ on PATH, "
            "or $CXX); none was found. Use impl='reference' or install one.")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([source, cxx, version, *flags, "|", *link_flags,
                                     key_extra]).encode())
    key = key.hexdigest()
    folder = _trusted_folder()
    target = folder / f"{stem}-{key[:20]}.so"
    digest_file = folder / f"{stem}-{key[:20]}.sha256"
    if _verified(target, digest_file):
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, obj, lib = (Path(tmp) / f"{stem}{ext}" for ext in (".cpp", ".o", ".so"))
        src.write_text(source)
        for command in ([cxx, *flags, "-c", str(src), "-o", str(obj)],
                        [cxx, str(obj), "-o", str(lib), *link_flags]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise FusedBuildError(f"building the {stem} library with {cxx} failed:\n"
                                      f"{result.stderr[-4000:]}")
        os.chmod(lib, 0o700)
        record = Path(tmp) / f"{stem}.sha256"
        record.write_text(_file_digest(lib) + "\n")
        os.replace(lib, target)  # atomic: concurrent builders leave one complete file
        os.replace(record, digest_file)
    return target


class HostKernel:
    """A kernel of the host library, called like ``cupy.RawKernel``:
    k(grid, block, args, shared_mem=0). A cooperative kernel (barriers, shared memory)
    is exported with host_cooperative.h's ABI, which also takes the dynamic shared bytes."""

    _dims = ctypes.c_uint * 3

    def __init__(self, function, cooperative=False):
        function.restype = None
        self.cooperative = cooperative
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + \
            ([ctypes.c_uint] if cooperative else []) + [ctypes.c_void_p]
        self.function = function

    @staticmethod
    def _value(arg):
        if arg is None:
            return ctypes.c_void_p(None)
        if isinstance(arg, np.ndarray):
            return ctypes.c_void_p(arg.ctypes.data)
        if isinstance(arg, np.int32):
            return ctypes.c_int32(int(arg))
        if isinstance(arg, np.float32):
            return ctypes.c_float(float(arg))
        if isinstance(arg, np.float64):
            return ctypes.c_double(float(arg))
        raise TypeError(f"host kernel argument of unsupported type {type(arg).__name__}")

    def __call__(self, grid, block, args, shared_mem=0):
        values = [self._value(a) for a in args]  # kept alive for the call
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        pad = (1, 1)
        dims = (self._dims(*(tuple(grid) + pad)[:3]), self._dims(*(tuple(block) + pad)[:3]))
        if self.cooperative:
            self.function(*dims, ctypes.c_uint(shared_mem), pointers)
        elif shared_mem:
            raise ValueError("dynamic shared memory needs a cooperative kernel")
        else:
            self.function(*dims, pointers)


def _host_kernels(dtype) -> dict:
    library = ctypes.CDLL(str(build_host_library()))
    cooperative = cooperative_kernels(dtype)
    return {name: HostKernel(getattr(library, name), name in cooperative)
            for name in kernel_table(dtype)}


# ----------------------------------------------------------------------------- GPU build
def _cupy_kernels(device, dtype) -> dict:
    cupy = backend.import_cupy()
    table = kernel_table(dtype)
    with cupy.cuda.Device(device.index):
        module = cupy.RawModule(code=device_source(), options=NVRTC_OPTIONS,
                                name_expressions=list(table.values()))
        return {name: module.get_function(expr) for name, expr in table.items()}


# ----------------------------------------------------------------------------- launches
def _launch_dims(B, H):
    """One thread per (b, j): grid (B, ⌈H / block⌉), a block of at most BLOCK threads."""
    block = min(BLOCK, 32 * ((H + 31) // 32))
    return (B, (H + block - 1) // block), (block,)


class Launcher:
    """Launches one device's and dtype's kernels; the cells' fused twins call it.

    A twin passes matrices as (array, leading dimension) pairs (``matrix``), per-row masks
    through ``valid`` and outputs through ``outputs``, then ``launch``es the kernel stem.
    """

    def __init__(self, kernels, xp, dtype):
        self.kernels, self.xp, self.dtype = kernels, xp, np.dtype(dtype)
        self._suffix = SUFFIX[self.dtype.name]  # looked up once: launches are the hot path

    def bind(self, **twins):
        """A namespace of fused twins ``f(launcher, *args)`` bound to this launcher."""
        return SimpleNamespace(**{name: partial(f, self) for name, f in twins.items()})

    def matrix(self, name, a, rows, cols):
        """(a, leading dimension) for a (rows, cols) input read in place when possible."""
        if a.dtype != self.dtype:
            raise TypeError(f"fused {name} must be {self.dtype.name}, got {a.dtype}")
        if a.shape != (rows, cols):
            raise ValueError(f"fused {name} must have shape {(rows, cols)}, got {a.shape}")
        item = a.itemsize
        s0, s1 = a.strides
        if not ((s1 == item or cols == 1) and s0 >= 0 and s0 % item == 0):
            a = self.xp.ascontiguousarray(a)
            s0 = a.strides[0]
        return a, np.int32(s0 // item if rows > 1 else cols)

    @staticmethod
    def absent():
        """An optional matrix argument left out: a null pointer and leading dimension 0."""
        return None, np.int32(0)

    def optional(self, name, a, rows, cols):
        """``matrix`` for an input that may be None (then ``absent``): a regulariser's mask."""
        return self.absent() if a is None else self.matrix(name, a, rows, cols)

    def dense(self, name, a, rows, cols):
        """A C-contiguous (rows, cols) input (the kernels' own saved outputs always are)."""
        return self.xp.ascontiguousarray(self.matrix(name, a, rows, cols)[0])

    def valid(self, valid, B):
        if valid is None:
            return None
        if valid.dtype != np.bool_ or valid.shape != (B, 1):
            raise ValueError(f"valid must be a ({B}, 1) bool array, got {valid.shape} "
                             f"{valid.dtype}")
        return self.xp.ascontiguousarray(valid)

    def outputs(self, out, B, *widths):
        """The (B, width) output arrays: the caller's preallocated ``out`` (C-contiguous
        slices of the layer's buffers), or fresh ones; a width of None means no output."""
        out = out or (None,) * len(widths)
        arrays = []
        for given, width in zip(out, widths):
            if width is None:
                arrays.append(None)
            elif given is None:
                arrays.append(self.xp.empty((B, width), dtype=self.dtype))
            else:
                if given.shape != (B, width) or given.dtype != self.dtype \
                        or not given.flags.c_contiguous:
                    raise ValueError(f"fused output must be a C-contiguous ({B}, {width}) "
                                     f"{self.dtype.name} array, got {given.shape} {given.dtype}")
                arrays.append(given)
        return arrays

    def strided_output(self, out, B, width):
        """(array, leading dimension) of a (B, width) output written in place, e.g. a column
        block of a wider buffer; fresh when ``out`` is None."""
        if out is None:
            out = self.xp.empty((B, width), dtype=self.dtype)
        if out.shape != (B, width) or out.dtype != self.dtype or \
                (out.strides[1] != out.itemsize and width > 1) or out.strides[0] < 0 or \
                out.strides[0] % out.itemsize:
            raise ValueError(f"fused output must be a ({B}, {width}) {self.dtype.name} array "
                             f"with unit column stride, got {out.shape} {out.dtype}")
        return out, np.int32(out.strides[0] // out.itemsize if B > 1 else width)

    def launch(self, stem, B, H, *args):
        """One launch of kernel ``stem``: a thread per (b, j) of a B × H state."""
        grid, block = _launch_dims(B, H)
        self.kernels[f"{stem}_{self._suffix}"](grid, block, (np.int32(B), np.int32(H)) + args)

    def launch_rows(self, stem, B, H, *args):
        """One launch of cooperative kernel ``stem``: a block per row b whose threads stride
        over the row's units, with one T of dynamic shared memory per thread (the scratch of
        ``block_sum``)."""
        threads = min(ROW_BLOCK, 32 * ((H + 31) // 32))
        self.kernels[f"{stem}_{self._suffix}"]((B,), (threads,),
                                               (np.int32(B), np.int32(H)) + args,
                                               shared_mem=threads * self.dtype.itemsize)

    def scalar(self, value):
        """A floating-point kernel argument of this launcher's dtype."""
        return self.dtype.type(value)

    def namespace(self):
        """Every registered cell's fused twins under their reference names."""
        functions = {}
        for cell in cells.cells():
            if cell.kernels:
                functions.update(vars(cell.fused_pointwise(self)))
        return SimpleNamespace(name="fused", device=None, dtype=self.dtype.name, **functions)


# ----------------------------------------------------------------------------- public
_LAUNCHERS: dict = {}
_HOST_BUILD: dict = {}  # "error": the reason the CPU build is unavailable, once known


def _host_error():
    """None when the CPU library builds (or is cached), else why it cannot (no compiler).

    A compiler that rejects the kernel sources raises ``FusedBuildError``: that is a
    defect in the sources, not a machine without the means to build them.
    """
    if "error" not in _HOST_BUILD:
        try:
            build_host_library()
            _HOST_BUILD["error"] = None
        except FusedBuildError:
            raise
        except (FusedUnavailableError, OSError) as err:
            _HOST_BUILD["error"] = str(err)
    return _HOST_BUILD["error"]


def available(device) -> bool:
    """Whether ``impl="fused"`` can run on ``device`` (what ``impl="auto"`` asks)."""
    dev = backend.parse_device(device)
    if dev.kind == "cuda":
        return backend.cuda_available()
    return _host_error() is None


def launcher_for(device, dtype) -> Launcher:
    """The kernel launcher of a device and dtype (kernels built once, then cached)."""
    dev, dt = backend.parse_device(device), backend.resolve_dtype(dtype)
    key = (str(dev), dt.name)
    if key not in _LAUNCHERS:
        if dev.kind == "cuda":
            cupy = backend.import_cupy()
            _LAUNCHERS[key] = Launcher(_cupy_kernels(dev, dt), cupy, dt)
        else:
            error = _host_error()
            if error is not None:
                raise FusedUnavailableError(error)
            _LAUNCHERS[key] = Launcher(_host_kernels(dt), np, dt)
    return _LAUNCHERS[key]


def pointwise_for(device, dtype) -> SimpleNamespace:
    """The fused pointwise namespace (``REFERENCE``'s names) for a device and dtype."""
    namespace = launcher_for(device, dtype).namespace()
    namespace.device = str(backend.parse_device(device))
    return namespace


def reset_caches() -> None:
    """Forget built kernels and the CPU build's verdict (tests; a changed $CXX)."""
    _LAUNCHERS.clear()
    for key in ("error",):
        _HOST_BUILD.pop(key, None)
