"""The CuPy path on a real GPU (``pytest -m gpu``): fused kernels and the reference code on
cupy equal the NumPy result, pass the float64 gradient check, and are deterministic."""

import numpy as np
import pytest

import rnncore
from rnncore import backend, gradcheck

# No skip: these run only when asked for (``-m gpu``; pyproject deselects them otherwise),
# and then a machine without a usable CuPy and GPU fails them (tests/conftest.py).
pytestmark = [pytest.mark.gpu]

CLASSES = {"lstm": rnncore.LSTM, "gru": rnncore.GRU, "rnn": rnncore.RNN}
CONFIGS = [
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("lstm", dict(num_layers=2, proj_size=3, batch_first=True)),
    ("lstm", dict(num_layers=3, dropout=0.25, residual="layers", init_state="learned")),
    ("gru", dict(num_layers=2, bidirectional=True)),
    ("gru", dict(num_layers=2, reset_after=False, dropout=0.5, dropout_mode="variational")),
    ("rnn", dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    ("rnn", dict(num_layers=1, nonlinearity="tanh", residual="stack")),
]
TOL = {"float64": dict(rtol=1e-10, atol=1e-10),
       "float32": dict(rtol=1e-4, atol=1e-4)}  # CuPy may flush denormals and fuse mul-adds


def _make(kind, options, device, impl, dtype, hidden=33):
    # 33 units: one full 32-thread warp and one nearly empty one per row
    return CLASSES[kind](5, hidden, dtype=dtype, seed=11, device=device, impl=impl, **options)


def _problem(module, T=6, B=4, seed=0):
    """Host inputs, initial state, lengths, ∂L/∂out and ∂L/∂state for ``module``."""
    rng = np.random.default_rng(seed)
    dt = module.dtype
    shape = (B, T, module.input_size) if module.batch_first else (T, B, module.input_size)
    LD = module.num_layers * module.num_directions
    hx = None
    if module.init_state != "learned":
        h0 = 0.5 * rng.standard_normal((LD, B, module.spec.out_size)).astype(dt)
        hx = (h0, 0.5 * rng.standard_normal((LD, B, module.hidden_size)).astype(dt)) \
            if module.mode == "lstm" else h0
    width = module.spec.out_size * module.num_directions
    out_shape = (B, T, width) if module.batch_first else (T, B, width)
    dout = rng.standard_normal(out_shape).astype(dt)
    dh = rng.standard_normal((LD, B, module.spec.out_size)).astype(dt)
    dstate = (dh, rng.standard_normal((LD, B, module.hidden_size)).astype(dt)) \
        if module.mode == "lstm" else dh
    return dict(x=rng.standard_normal(shape).astype(dt), hx=hx, lengths=([T, 2, T - 1, 1] * B)[:B],
                dout=dout, dstate=dstate)


def _on(device, value):
    """``value`` (an array, a tuple of them, a dict of them, lengths, None) on ``device``."""
    if isinstance(value, dict):
        return {k: _on(device, v) for k, v in value.items()}
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return tuple(_on(device, v) for v in value)
    return backend.to_device(value, device)


def _flat(result):
    """Every array of (out, state), (dx, dstate), grads, as host arrays in a fixed order."""
    arrays = []
    for item in result:
        if isinstance(item, dict):
            arrays += [(k, item[k]) for k in sorted(item)]
        elif isinstance(item, tuple):
            arrays += [("state", a) for a in item if a is not None]
        elif item is not None:
            arrays.append(("array", item))
    return [(k, backend.to_numpy(a)) for k, a in arrays]


def _forward_backward(module, problem):
    p = _on(str(module.device), problem)
    module.zero_grad()
    out, state = module(p["x"], p["hx"], lengths=p["lengths"])
    dx, dhx = module.backward(p["dout"], p["dstate"])
    grads = dict(module.grads)
    if module.device.kind == "cuda":
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    return _flat([out, state if isinstance(state, tuple) else (state,), dx,
                  dhx if isinstance(dhx, tuple) else (dhx,), grads])


@pytest.mark.parametrize("kind,options", CONFIGS, ids=str)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_module_matches_numpy(kind, options, impl, dtype):
    cpu = _make(kind, options, "cpu", "reference", dtype)
    gpu = _make(kind, options, "cuda", impl, dtype)
    assert gpu.impl_in_use == impl
    problem = _problem(cpu)
    want, got = _forward_backward(cpu, problem), _forward_backward(gpu, problem)
    assert [k for k, _ in want] == [k for k, _ in got]
    for (name, a), (_, b) in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, err_msg=f"{kind} {impl} {name}", **TOL[dtype])


def test_auto_chooses_by_size_on_cuda():
    """impl="auto" on a GPU is the by-size choice (rnncore/drivers/auto.py)."""
    m = rnncore.LSTM(3, 4, device="cuda")
    assert m.impl_in_use == "auto" and m.driver.name == "auto"


@pytest.mark.parametrize("kind,options", [
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=2)),
    ("gru", dict(num_layers=2, reset_after=False)),
    ("gru", dict(bidirectional=True)),
    ("rnn", dict(num_layers=2, nonlinearity="relu")),
], ids=str)
def test_cuda_fused_gradcheck(kind, options):
    module = _make(kind, options, "cuda", "fused", "float64", hidden=3)
    problem = _on("cuda", _problem(module, T=4, B=3, seed=1))
    report = gradcheck.check_module_gradients(module, problem["x"], problem["hx"],
                                              lengths=problem["lengths"])
    assert report.max_error < 1e-6, report.table()


@pytest.mark.parametrize("kind,options", [
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("gru", dict(num_layers=2)),
    ("rnn", dict(num_layers=2, nonlinearity="relu")),
], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_backward_is_bitwise_deterministic(kind, options, dtype):
    module = _make(kind, options, "cuda", "fused", dtype, hidden=257)
    problem = _problem(module, T=20, B=16, seed=2)
    first, second = _forward_backward(module, problem), _forward_backward(module, problem)
    for (name, a), (_, b) in zip(first, second, strict=True):
        assert np.array_equal(a, b), f"{name} differs between two identical runs"
