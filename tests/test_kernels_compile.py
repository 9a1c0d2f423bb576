"""The CUDA sources compile for real GPUs without one: NVRTC (the compiler CuPy uses) for
sm_80 and sm_90, every kernel and dtype; ``ptxas -v`` reports no spills where it exists."""

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from rnncore import fused

ARCHS = ("80", "90")


def _load_nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc-cu12 wheel, else the system; None if absent."""
    candidates = []
    for base in sys.path:
        candidates += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib",
                                                     "libnvrtc.so*")))
    candidates += [n for n in (ctypes.util.find_library("nvrtc"), "libnvrtc.so.12",
                               "libnvrtc.so") if n]
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


NVRTC = _load_nvrtc()


def require_nvrtc():
    """NVRTC, or a failed test: the test extra installs nvidia-cuda-nvrtc-cu12, so a
    missing libnvrtc is a broken install, not a reason to skip."""
    if NVRTC is None:
        pytest.fail("libnvrtc not found: the test extra installs it "
                    "(pip install -e '.[test]', or nvidia-cuda-nvrtc-cu12)")
    return NVRTC


def _check(lib, prog, status):
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        raise AssertionError(f"NVRTC: {lib.nvrtcGetErrorString(status).decode()}\n"
                             f"{log.value.decode(errors='replace')}")


def nvrtc_ptx(source, name_expressions, arch):
    """Compile with NVRTC to PTX for compute_<arch>; returns (ptx, {expr: lowered name})."""
    lib = NVRTC
    prog = ctypes.c_void_p()
    _check(lib, prog, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                             b"rnncore_kernels.cu", 0, None, None))
    try:
        for expr in name_expressions:
            _check(lib, prog, lib.nvrtcAddNameExpression(prog, expr.encode()))
        options = [o.encode() for o in (*fused.NVRTC_OPTIONS, f"--gpu-architecture=compute_{arch}")]
        argv = (ctypes.c_char_p * len(options))(*options)
        _check(lib, prog, lib.nvrtcCompileProgram(prog, len(options), argv))
        size = ctypes.c_size_t()
        _check(lib, prog, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, prog, lib.nvrtcGetPTX(prog, ptx))
        lowered = {}
        for expr in name_expressions:
            name = ctypes.c_char_p()
            _check(lib, prog, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)))
            lowered[expr] = name.value.decode()
        return ptx.value.decode(), lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def compiled():
    """{(dtype, arch): (ptx, lowered names)}: each compiled once, as CuPy would."""
    require_nvrtc()
    source = fused.device_source()
    return {(dt, arch): nvrtc_ptx(source, list(fused.kernel_table(dt).values()), arch)
            for dt in ("float32", "float64") for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_kernel_compiles_with_nvrtc(compiled, dtype, arch):
    ptx, lowered = compiled[(dtype, arch)]
    table = fused.kernel_table(dtype)
    assert set(lowered) == set(table.values())
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    for expr, name in lowered.items():
        assert name in entries, f"{expr} ({name}) missing from the PTX"
    assert len(entries) == len(table)  # nothing but the requested instantiations


@pytest.mark.parametrize("arch", ARCHS)
def test_ptxas_reports_no_spills(compiled, arch, tmp_path):
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        print("ptxas spill check skipped: no CUDA toolkit (ptxas) on PATH")
        pytest.skip("ptxas not on PATH")
    for dtype in ("float32", "float64"):
        path = tmp_path / f"{dtype}_sm{arch}.ptx"
        path.write_text(compiled[(dtype, arch)][0])
        result = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}", str(path), "-o",
                                 os.devnull], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        report = result.stderr + result.stdout
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
        assert len(spills) == len(fused.kernel_table(dtype)), report
        assert all(s == ("0", "0") for s in spills), report
        stacks = re.findall(r"(\d+) bytes stack frame", report)
        assert all(s == "0" for s in stacks), report


def test_host_build_compiles_the_same_kernels():
    """The emulation exports one launcher per kernel of the NVRTC table, both dtypes."""
    if fused.find_compiler() is None:
        pytest.skip("no C++ compiler")
    lib = ctypes.CDLL(str(fused.build_host_library()))
    for dtype in ("float32", "float64"):
        for name in fused.kernel_table(dtype):
            assert hasattr(lib, name), name
