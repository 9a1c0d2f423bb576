"""Cooperating threads in the host emulation: block barriers, shared memory, grid sync.

The test kernels in tests/kernels/ are built for the CPU by the host compiler through
kernels/host_shim.h (exports in tests/kernels/exports.cpp), launched through ctypes with
the cooperative ABI

    name(const unsigned grid[3], const unsigned block[3], unsigned shared_bytes, void** args)

and compared with NumPy. The same sources compile with NVRTC.
"""

import ctypes
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_kernels_compile import _check, require_nvrtc

from rnncore import fused
from rnncore.cells import REFERENCE
from rnncore.persistent_kernels import cuda_include_dirs

TEST_KERNELS = Path(__file__).resolve().parent / "kernels"


# ----------------------------------------------------------------------------- building
def _compile(target, defines=()):
    """Start g++ on exports.cpp (the shim, every test kernel) into target; the process."""
    cxx = fused.find_compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    return subprocess.Popen(
        [cxx, *fused.HOST_FLAGS, "-shared", *defines, f"-I{fused.kernels_dir()}",
         f"-I{TEST_KERNELS}",
         str(TEST_KERNELS / "exports.cpp"), "-o", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def libraries(tmp_path_factory):
    """{"switch": path, "ucontext": path}: the x86-64 context switch (or ucontext where
    that is all there is) and the forced ucontext fallback, built in parallel, once."""
    folder = tmp_path_factory.mktemp("emulation")
    targets = {"switch": folder / "kernels.so", "ucontext": folder / "kernels_ucontext.so"}
    jobs = {"switch": _compile(targets["switch"]),
            "ucontext": _compile(targets["ucontext"], ["-DRNNCORE_FIBER_UCONTEXT"])}
    for name, job in jobs.items():
        _, err = job.communicate()
        assert job.returncode == 0, f"building the {name} test kernels failed:\n{err[-4000:]}"
    return targets


@pytest.fixture(scope="session")
def lib(libraries):
    return ctypes.CDLL(str(libraries["switch"]))


@pytest.fixture(scope="session")
def lib_ucontext(libraries):
    return ctypes.CDLL(str(libraries["ucontext"]))


# ----------------------------------------------------------------------------- launching
def _value(arg):
    if isinstance(arg, np.ndarray):
        assert arg.flags.c_contiguous
        return ctypes.c_void_p(arg.ctypes.data)
    if isinstance(arg, int):
        return ctypes.c_int32(arg)
    raise TypeError(type(arg).__name__)


def launch(lib, name, grid, block, args, shared_bytes=0):
    """One cooperative launch of export `name` (grid and block padded with 1s)."""
    function = getattr(lib, name)
    function.restype = None
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p]
    values = [_value(a) for a in args]  # kept alive for the call
    pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    dims = ctypes.c_uint * 3
    function(dims(*(tuple(grid) + (1, 1))[:3]), dims(*(tuple(block) + (1, 1))[:3]),
             shared_bytes, pointers)


# ----------------------------------------------------------------------------- references
def block_sum_order(partials):
    """block_sum's fixed order on the last axis (cooperate.cuh), in the array's dtype."""
    s = partials.copy()
    m = s.shape[-1]
    while m > 1:
        h = (m + 1) // 2
        s[..., :m - h] += s[..., h:m]
        m = h
    return s[..., 0]


def row_stats_mirror(x, threads):
    """row_stats operation by operation: each thread's strided sum, then block_sum."""
    B, H = x.shape
    t = x.dtype.type

    def reduce(values):
        partials = np.zeros((B, threads), x.dtype)
        for j in range(0, H, threads):  # thread k adds x[:, j + k] in j order
            chunk = values[:, j:j + threads]
            partials[:, :chunk.shape[1]] += chunk
        return block_sum_order(partials) / t(H)

    mean = reduce(x)
    d = x - mean[:, None]
    return mean, reduce(d * d)


def row_stats(lib, x, threads):
    B, H = x.shape
    mean, var = np.full(B, np.nan, x.dtype), np.full(B, np.nan, x.dtype)
    name = "row_stats_f32" if x.dtype == np.float32 else "row_stats_f64"
    launch(lib, name, (B,), (threads,), (B, H, x, mean, var), threads * x.itemsize)
    return mean, var


# ----------------------------------------------------------------------------- block reduction
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H,threads", [(5, 300, 64), (3, 37, 32), (4, 1000, 96), (2, 7, 32)])
def test_row_mean_and_variance(lib, dtype, B, H, threads):
    """One block per row, threads striding over H (not a multiple of the block)."""
    rng = np.random.default_rng(B * H + threads)
    x = (rng.standard_normal((B, H)) * 3 + rng.standard_normal((B, 1)) * 5).astype(dtype)
    mean, var = row_stats(lib, x, threads)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=1), rtol=tol, atol=tol)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=1), rtol=tol, atol=tol)
    # Bit for bit the fixed order of block_sum, whatever the scheduling.
    want_mean, want_var = row_stats_mirror(x, threads)
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_array_equal(var, want_var)


def test_the_bitwise_check_sees_the_order():
    """The mirror's order matters: summing the rows left to right gives other float32 bits."""
    x = np.random.default_rng(0).standard_normal((8, 1000)).astype(np.float32)
    tree, _ = row_stats_mirror(x, 96)
    left_to_right = np.array([np.add.accumulate(r)[-1] for r in x]) / np.float32(1000)
    assert not np.array_equal(tree, left_to_right)


def test_wrong_references_fail(lib):
    """The comparisons can fail: the sample variance (H - 1) and a mean off by one ulp."""
    x = np.random.default_rng(1).standard_normal((3, 50))
    mean, var = row_stats(lib, x, 32)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(var, x.var(axis=1, ddof=1), rtol=1e-12)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(mean, np.nextafter(row_stats_mirror(x, 32)[0], 1))


# ----------------------------------------------------------------------------- static shared
def scan_reference(x, threads):
    n = len(x)
    blocks = -(-n // threads)
    padded = np.zeros(blocks * threads, x.dtype)
    padded[:n] = x
    return np.cumsum(padded.reshape(blocks, threads), axis=1)[:, ::-1].ravel()[:n]


@pytest.mark.parametrize("dtype,name", [(np.int32, "block_scan_reversed_i32"),
                                        (np.float64, "block_scan_reversed_f64")])
@pytest.mark.parametrize("n,threads", [(700, 128), (200, 96), (5, 8)])
def test_static_shared_over_several_barriers(lib, dtype, name, n, threads):
    """__shared__ ping-pong buffers, log2(block) __syncthreads phases, several blocks."""
    x = np.random.default_rng(n).integers(-50, 50, n).astype(dtype)  # exact sums
    out = np.zeros(n, dtype)
    launch(lib, name, (-(-n // threads),), (threads,), (n, x, out))
    want = scan_reference(x, threads)
    np.testing.assert_array_equal(out, want)
    assert not np.array_equal(out, np.cumsum(x)[::-1])  # not a scan of the whole array


# ----------------------------------------------------------------------------- grid sync
def grid_steps_reference(x, steps, threads, per_block_mean=False):
    """grid_steps.cu in NumPy; per_block_mean: the wrong rule, each block's own mean."""
    n = len(x)
    blocks = -(-n // threads)
    cur = x.copy()
    kept = np.zeros(blocks * threads)
    weight = np.repeat(np.arange(1, blocks + 1, dtype=float), threads)
    for _ in range(steps):
        padded = np.zeros(blocks * threads)
        padded[:n] = cur
        kept += padded * weight
        if per_block_mean:
            mean = np.repeat(padded.reshape(blocks, threads).sum(axis=1) / n, threads)[:n]
        else:
            mean = padded.sum() / n
        left = np.concatenate([[0.0], cur[:-1]])
        right = np.concatenate([cur[1:], [0.0]])
        cur = (left + cur + right) / 3 - mean
    history = np.roll(kept.reshape(blocks, threads), -1, axis=1).ravel()[:n]
    return cur, history


def grid_steps(lib, x, steps, threads):
    n = len(x)
    blocks = -(-n // threads)
    a, b = x.copy(), np.zeros(n)
    partial, history = np.zeros(blocks), np.zeros(n)
    launch(lib, "grid_steps_f64", (blocks,), (threads,), (n, steps, a, b, partial, history))
    return (a if steps % 2 == 0 else b), history


@pytest.mark.parametrize("n,threads,steps", [(1000, 128, 5), (300, 32, 4), (64, 64, 3)])
def test_grid_sync_steps_depend_on_every_block(lib, n, threads, steps):
    x = np.random.default_rng(n).standard_normal(n) + 0.5
    out, history = grid_steps(lib, x, steps, threads)
    want, want_history = grid_steps_reference(x, steps, threads)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(history, want_history, rtol=1e-12, atol=1e-12)
    if n > threads:  # the cross-block mean is really used: the per-block rule differs
        wrong, _ = grid_steps_reference(x, steps, threads, per_block_mean=True)
        assert not np.allclose(out, wrong, rtol=1e-6)
    again, again_history = grid_steps(lib, x, steps, threads)
    np.testing.assert_array_equal(out, again)  # deterministic, bit for bit
    np.testing.assert_array_equal(history, again_history)


def test_ucontext_fallback_gives_the_same_bits(lib, lib_ucontext):
    """The portable fiber switch (ucontext) schedules the same way as the x86-64 one."""
    x = np.random.default_rng(2).standard_normal(500)
    np.testing.assert_array_equal(grid_steps(lib, x, 4, 64)[0],
                                  grid_steps(lib_ucontext, x, 4, 64)[0])
    rows = np.random.default_rng(3).standard_normal((3, 333)).astype(np.float32)
    for ours, theirs in zip(row_stats(lib, rows, 64), row_stats(lib_ucontext, rows, 64)):
        np.testing.assert_array_equal(ours, theirs)


# ----------------------------------------------------------------------------- misuse
MISUSE = {
    "misuse_early_return": ((1,), (8,), "1 thread(s) returned (first: thread (3,0,0))"),
    "misuse_partial_grid_sync": ((3,), (4,), "grid_sync() not reached by every block: "
                                             "block (1,0,0) returned"),
    "misuse_mixed_barriers": ((1,), (4,), "1 thread(s) at grid_sync()"),
    "misuse_plain_sync": ((1,), (4,), "called outside a cooperative launch"),
    "misuse_uneven_shared": ((1,), (4,), "thread (1,0,0) of block (0,0,0) declares "
                                         "RNNCORE_SHARED array #0 unlike the threads before it"),
}


@pytest.mark.parametrize("name", sorted(MISUSE))
def test_barrier_misuse_aborts_with_a_message(libraries, name):
    grid, block, message = MISUSE[name]
    plain = name == "misuse_plain_sync"  # exported with RNNCORE_HOST_EXPORT: no shared_bytes
    script = textwrap.dedent(f"""
        import ctypes
        lib = ctypes.CDLL({str(libraries["switch"])!r})
        out = (ctypes.c_int * 64)()
        arg = ctypes.c_void_p(ctypes.addressof(out))
        args = (ctypes.c_void_p * 1)(ctypes.addressof(arg))
        dims = ctypes.c_uint * 3
        grid, block = dims(*{grid!r}, *[1] * {3 - len(grid)}), dims(*{block!r}, 1, 1)
        f = getattr(lib, {name!r})
        f(grid, block, args) if {plain} else f(grid, block, ctypes.c_uint(0), args)
        print("returned")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and "returned" not in result.stdout, result.stdout
    assert "rnncore emulation error" in result.stderr and message in result.stderr, result.stderr


# ----------------------------------------------------------------------------- NVRTC
def _nvrtc_major():
    major, minor = ctypes.c_int(), ctypes.c_int()
    require_nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value


def _toolkit_major(include):
    """CUDA_VERSION's major (13000 -> 13) from the toolkit's cuda.h; None if unreadable."""
    try:
        text = Path(include, "cuda.h").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"#define\s+CUDA_VERSION\s+(\d+)", text)
    return int(match.group(1)) // 1000 if match else None


NVRTC_KERNELS = {
    "row_stats.cu": ["row_stats<float>", "row_stats<double>"],
    "block_scan.cu": ["block_scan_reversed<int>", "block_scan_reversed<double>"],
    "grid_steps.cu": ["grid_steps<double>"],
    "misuse.cu": ["early_return", "partial_grid_sync", "mixed_barriers", "plain_sync",
                  "uneven_shared"],
}


def nvrtc_entries(source_name, expressions, options):
    lib = require_nvrtc()
    prog = ctypes.c_void_p()
    source = (TEST_KERNELS / source_name).read_text()
    _check(lib, prog, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                             source_name.encode(), 0, None, None))
    try:
        for expr in expressions:
            _check(lib, prog, lib.nvrtcAddNameExpression(prog, expr.encode()))
        argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        _check(lib, prog, lib.nvrtcCompileProgram(prog, len(options), argv))
        size = ctypes.c_size_t()
        _check(lib, prog, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, prog, lib.nvrtcGetPTX(prog, ptx))
        names = []
        for expr in expressions:
            name = ctypes.c_char_p()
            _check(lib, prog, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)))
            names.append(name.value.decode())
        return ptx.value.decode(), names
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("source_name", sorted(NVRTC_KERNELS))
def test_test_kernels_compile_with_nvrtc(source_name):
    require_nvrtc()
    options = [*fused.NVRTC_OPTIONS, "--gpu-architecture=compute_80",
               f"-I{fused.kernels_dir()}", f"-I{TEST_KERNELS}"]
    if "grid_sync.cuh" in (TEST_KERNELS / source_name).read_text():
        includes = cuda_include_dirs()
        assert includes, ("grid_sync.cuh needs <cooperative_groups.h> and <nv/target>: pip "
                          "install nvidia-cuda-runtime-cu12 nvidia-cuda-cccl-cu12 (the test "
                          f"extra), or set RNNCORE_CUDA_INCLUDE, or CUDA_PATH to a CUDA "
                          f"{_nvrtc_major()} toolkit (NVRTC's version)")
        options += [f"-I{d}" for d in includes]
    ptx, names = nvrtc_entries(source_name, NVRTC_KERNELS[source_name], options)
    for name in names:
        assert f".entry {name}(" in ptx, name
    if source_name == "row_stats.cu":  # dynamic shared memory, and a barrier per step
        assert ".extern .shared" in ptx and "bar.sync" in ptx
    if source_name == "block_scan.cu":
        assert ".shared .align" in ptx


# ----------------------------------------------------------------------------- existing kernels
def test_existing_kernels_keep_the_plain_abi_and_run():
    """fused.py's host library (RNNCORE_HOST_EXPORT, three arguments) still builds and runs."""
    if fused.find_compiler() is None:
        pytest.skip("no C++ compiler")
    assert "RNNCORE_HOST_EXPORT_COOPERATIVE" in fused.host_source()  # the shim brings it in
    fused.reset_caches()
    pw = fused.pointwise_for("cpu", "float64")
    rng = np.random.default_rng(4)
    xg, hg, h = (rng.standard_normal((3, 40)) for _ in range(3))
    ours = pw.rnn_forward(xg, hg, h, None, "tanh")
    want = REFERENCE.rnn_forward(xg, hg, h, None, "tanh")
    np.testing.assert_allclose(ours[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(ours[0], np.tanh(xg + hg), rtol=1e-12)
