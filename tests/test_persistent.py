"""The persistent LSTM kernel (kernels/persistent_lstm.cu, rnncore/drivers/persistent.py):
compiled by NVRTC with the cooperative-groups headers, executed by the CPU emulation
(fibers, per-block shared memory, grid barrier) and compared with the reference driver."""

import ctypes

import numpy as np
import pytest
from test_kernels_compile import ARCHS, _check, require_nvrtc

import rnncore
from rnncore import cells, fused, persistent_kernels
from rnncore.drivers import PythonLoop
from rnncore.drivers.persistent import Persistent, plan

LSTM = cells.get("lstm")
REF = PythonLoop("reference")


# ----------------------------------------------------------------------------- NVRTC
@pytest.mark.parametrize("arch", ARCHS)
def test_persistent_kernels_compile_with_nvrtc(arch):
    lib, prog = require_nvrtc(), ctypes.c_void_p()
    assert persistent_kernels.cuda_include_dirs(), "no cooperative-groups headers found"
    source = persistent_kernels.device_source()
    _check(lib, prog, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                             b"persistent.cu", 0, None, None))
    try:
        expressions = [e for dt in ("float32", "float64")
                       for e in persistent_kernels.table(dt).values()]
        for expr in expressions:
            _check(lib, prog, lib.nvrtcAddNameExpression(prog, expr.encode()))
        options = [o.encode() for o in persistent_kernels.nvrtc_options(arch)]
        _check(lib, prog, lib.nvrtcCompileProgram(
            prog, len(options), (ctypes.c_char_p * len(options))(*options)))
        size = ctypes.c_size_t()
        _check(lib, prog, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, prog, lib.nvrtcGetPTX(prog, ptx))
        for expr in expressions:
            name = ctypes.c_char_p()
            _check(lib, prog, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)))
            assert f".entry {name.value.decode()}(" in ptx.value.decode(), expr
        assert ".extern .shared" in ptx.value.decode()  # W_hh slices in dynamic shared memory
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def test_the_pointwise_build_leaves_the_persistent_kernels_out():
    """fused's NVRTC source needs no cooperative-groups headers; the host build of the
    persistent kernels exports them cooperatively."""
    assert "persistent_lstm.cu" not in fused.sources()
    assert "persistent_lstm.cu" in persistent_kernels.sources()
    assert "RNNCORE_HOST_EXPORT_COOPERATIVE(persistent_lstm_forward_f64" in \
        persistent_kernels.host_source()


def test_no_atomics_in_the_kernel_source():
    source = (fused.kernels_dir() / "persistent_lstm.cu").read_text()
    assert "atomic" not in source.replace("no atomics", "")


# ----------------------------------------------------------------------------- plans
def test_plan_fits_the_grid_and_shared_memory():
    limits = persistent_kernels.Limits(resident_blocks=132, shared_bytes=227 * 1024)
    p = plan(128, 32, 4, limits)
    assert (p.units, p.blocks, p.shared_bytes) == (1, 128, 4 * 128 * 4)
    p = plan(256, 32, 4, limits)
    assert (p.units, p.blocks) == (2, 128) and p.threads == 64
    assert plan(1024, 64, 4, limits).blocks <= 132
    assert plan(2048, 64, 4, limits) is None  # 16 units × 4 × 2048 floats > 227 KiB
    assert plan(5, 3, 8, limits, units=2) == (2, 3, 32, 4 * 2 * 5 * 8)
    assert plan(300, 1, 8, persistent_kernels.Limits(2, 10**9)) == (150, 2, 160, 4 * 150 * 300 * 8)


# ----------------------------------------------------------------------------- emulation
def _params(rng, I, H, scale=0.5):
    return {"w_ih": rng.standard_normal((4 * H, I)) * scale,
            "w_hh": rng.standard_normal((4 * H, H)) * scale,
            "b_ih": rng.standard_normal(4 * H) * 0.1, "b_hh": rng.standard_normal(4 * H) * 0.1,
            "w_hr": None}


def _run(driver, p, x, state0, valid, reverse, dout, dstate):
    out, state, cache = driver.forward(LSTM, p, x, state0, {"valid": valid}, reverse)
    dx, dstate0, grads = driver.backward(LSTM, p, cache, dout, dstate)
    return [out, *state, dx, *dstate0] + [grads[k] for k in sorted(grads)
                                          if grads[k] is not None]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("units", [None, 2, 3])
def test_persistent_equals_the_reference_driver(reverse, masked, units):
    """float64, several blocks (H 7 in slices of 2 or 3, the last one short), lengths."""
    rng = np.random.default_rng(7 + 2 * reverse + masked)
    T, B, I, H = 6, 4, 3, 7
    p = _params(rng, I, H)
    x = rng.standard_normal((T, B, I))
    state0 = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    valid = None
    if masked:
        valid = (np.arange(T)[:, None] < np.array([6, 2, 5, 1])[None, :])[..., None]
    dout, dstate = rng.standard_normal((T, B, H)), (rng.standard_normal((B, H)),
                                                    rng.standard_normal((B, H)))
    persistent = Persistent("cpu", "float64", REF, units=units)
    assert persistent.runs(LSTM, p, B)
    want = _run(REF, p, x, state0, valid, reverse, dout, dstate)
    got = _run(persistent, p, x, state0, valid, reverse, dout, dstate)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    again = _run(persistent, p, x, state0, valid, reverse, dout, dstate)
    for a, b in zip(got, again, strict=True):
        assert np.array_equal(a, b)  # deterministic, bit for bit


def test_persistent_float32_close_to_float64():
    rng = np.random.default_rng(3)
    T, B, I, H = 5, 2, 4, 9
    p64 = _params(rng, I, H)
    x = rng.standard_normal((T, B, I))
    s0 = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    dout, ds = rng.standard_normal((T, B, H)), (np.zeros((B, H)), np.zeros((B, H)))
    want = _run(REF, p64, x, s0, None, False, dout, ds)
    f32 = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
    got = _run(Persistent("cpu", "float32", REF, units=4), {k: f32(v) for k, v in p64.items()},
               f32(x), tuple(map(f32, s0)), None, False, f32(dout), tuple(map(f32, ds)))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_persistent_module_matches_reference_module():
    """Through the front door: a 2-layer bidirectional LSTM with lengths, impl='persistent'
    (the emulation on the CPU), against impl='reference'; the instruments' record falls
    back to the reference loop."""
    kw = dict(num_layers=2, bidirectional=True, dtype="float64", seed=4)
    ref = rnncore.LSTM(3, 6, impl="reference", **kw)
    per = rnncore.LSTM(3, 6, impl="persistent", **kw)
    assert per.impl_in_use == "persistent"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 3))
    results = []
    for m in (ref, per):
        out, (h, c) = m(x, lengths=[5, 3, 1])
        dx, (dh, dc) = m.backward(np.cos(out))
        results.append([out, h, c, dx, dh, dc] + [m.grads[k] for k in sorted(m.grads)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_unsupported_calls_fall_back():
    """LSTMP and the GRU have no persistent kernel: the fallback driver runs them."""
    rng = np.random.default_rng(1)
    persistent = Persistent("cpu", "float64", REF)
    p = _params(rng, 3, 4)
    p["w_hr"] = rng.standard_normal((2, 4))
    assert not persistent.runs(LSTM, p, 2)
    gru = rnncore.GRU(3, 4, impl="persistent", dtype="float64", seed=0)
    ref = rnncore.GRU(3, 4, impl="reference", dtype="float64", seed=0)
    x = rng.standard_normal((4, 2, 3))
    np.testing.assert_array_equal(gru(x)[0], ref(x)[0])
