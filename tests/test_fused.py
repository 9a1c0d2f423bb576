"""The fused kernels, run on the CPU through the host shim: equal to the NumPy reference,
whole modules equal to torch.nn, gradients equal to finite differences."""

import numpy as np
import pytest

import rnncore
from rnncore import fused, gradcheck
from rnncore.cells import REFERENCE

TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}
# (B, H): one element, one row, one unit, H straddling a 32-thread block and the 256 limit
SIZES = [(1, 1), (1, 7), (3, 1), (5, 33), (2, 300)]

# Skipped only on a machine with no C++ compiler (said in the summary: make test runs with
# -rs); kernel sources that do not compile raise here and fail the run.
pytestmark = pytest.mark.skipif(not fused.available("cpu"),
                                reason="no C++ compiler: the CPU kernels cannot be built")


def _valid_cases(B):
    yield None
    if B == 1:
        yield np.ones((1, 1), bool)
        yield np.zeros((1, 1), bool)
    else:
        yield (np.arange(B) % 2 == 0)[:, None]  # padded and valid rows mixed


def _assert_same(ours, ref, dtype, what):
    if ref is None:
        assert ours is None, what
        return
    assert ours.dtype == dtype and ours.shape == ref.shape, what
    np.testing.assert_allclose(ours, ref, err_msg=what, **TOL[dtype])


def _assert_tree(ours, ref, dtype, what):
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if isinstance(b, tuple):
            _assert_tree(a, b, dtype, f"{what}[{k}]")
        else:
            _assert_same(a, b, dtype, f"{what}[{k}]")


class Arrays:
    """Random inputs of one dtype; ``sliced`` ones are column views of a wider matrix."""

    def __init__(self, dtype, seed):
        self.rng, self.dtype = np.random.default_rng(seed), dtype

    def __call__(self, B, width, sliced=False):
        if sliced:  # a view with leading dimension width + 3, not C-contiguous
            return self(B, width + 3)[:, 2:2 + width]
        return self.rng.standard_normal((B, width)).astype(self.dtype)

    def broadcast_row(self, B, width):  # leading dimension 0, like a learned h0
        return np.broadcast_to(self(1, width), (B, width))


def _both(name, *args):
    """(fused result, reference result) of pointwise function ``name``."""
    dtype = next(a.dtype for a in args if isinstance(a, np.ndarray) and a.dtype != bool)
    ours = getattr(fused.pointwise_for("cpu", dtype), name)(*args)
    return ours, getattr(REFERENCE, name)(*[a.copy() if isinstance(a, np.ndarray) else a
                                            for a in args])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,H", SIZES)
@pytest.mark.parametrize("layout", ["dense", "views"])
def test_pointwise_equals_reference(dtype, B, H, layout):
    """Every forward output and every backward output, with and without padded rows."""
    new = Arrays(dtype, seed=B * 1000 + H)
    views = layout == "views"
    for valid in _valid_cases(B):
        tag = f"valid={None if valid is None else valid.ravel().tolist()}"
        h_prev = new.broadcast_row(B, H) if views else new(B, H)
        c_prev = new(B, H, sliced=views)
        dh, dc = new(B, H, sliced=views), new(B, H)

        ours, ref = _both("lstm_forward", new(B, 4 * H, sliced=views), new(B, 4 * H), h_prev,
                          c_prev, valid)
        _assert_tree(ours, ref, dtype, f"lstm_forward {tag}")
        ours_b = fused.pointwise_for("cpu", dtype).lstm_backward(dh, dc, ours[2], valid)
        ref_b = REFERENCE.lstm_backward(dh, dc, ref[2], valid)
        _assert_tree(ours_b, ref_b, dtype, f"lstm_backward {tag}")

        xg, hg = new(B, 3 * H, sliced=views), new(B, 3 * H)
        ours, ref = _both("gru_forward", xg, hg, h_prev, valid)
        _assert_tree(ours, ref, dtype, f"gru_forward {tag}")
        ours_b = fused.pointwise_for("cpu", dtype).gru_backward(dh, h_prev, ours[1], valid)
        ref_b = REFERENCE.gru_backward(dh, h_prev, ref[1], valid)
        _assert_tree(ours_b, ref_b, dtype, f"gru_backward {tag}")

        ours, gates = _both("gru_gates_forward", xg[:, :2 * H], hg[:, :2 * H], h_prev)
        _assert_tree(ours, gates, dtype, "gru_gates_forward")
        r, z, _ = gates
        ours, ref = _both("gru_candidate_forward", xg[:, 2 * H:], new(B, H, sliced=views),
                          z, h_prev, valid)
        _assert_tree(ours, ref, dtype, f"gru_candidate_forward {tag}")
        n = ref[1]
        ours, ref = _both("gru_candidate_backward", dh, z, n, valid)
        _assert_same(ours, ref, dtype, f"gru_candidate_backward {tag}")
        # the second half writes a column block of ∂x_g and adds into ∂h_{t−1}
        drh, dh_prev = new(B, H, sliced=views), new(B, H)
        outs = {}
        for impl, pw in (("fused", fused.pointwise_for("cpu", dtype)), ("ref", REFERENCE)):
            dxg = np.zeros((B, 3 * H), dtype)
            acc = dh_prev.copy()
            pw.gru_gates_backward(dh, drh, h_prev, r, z, n, valid, out=(dxg[:, :2 * H], acc))
            outs[impl] = (dxg, acc)
        _assert_tree(outs["fused"], outs["ref"], dtype, f"gru_gates_backward {tag}")
        assert not np.array_equal(outs["ref"][1], dh_prev)  # it did add

        for nl in ("tanh", "relu"):
            ours, ref = _both("rnn_forward", new(B, H, sliced=views), new(B, H), h_prev,
                              valid, nl)
            _assert_tree(ours, ref, dtype, f"rnn_forward {nl} {tag}")
            ours_b, ref_b = _both("rnn_backward", dh, ref[1], valid, nl)
            _assert_tree(ours_b, ref_b, dtype, f"rnn_backward {nl} {tag}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lstm_projection_step_without_carry(dtype):
    """LSTMP calls lstm_forward(xg, hg, None, c_prev, None): no h_prev, no mask."""
    new = Arrays(dtype, seed=7)
    ours, ref = _both("lstm_forward", new(3, 20), new(3, 20), None, new(3, 5), None)
    _assert_tree(ours, ref, dtype, "lstm_forward without h_prev")
    with pytest.raises(ValueError, match="h_prev"):
        fused.pointwise_for("cpu", dtype).lstm_forward(new(3, 20), new(3, 20), None,
                                                       new(3, 5), np.ones((3, 1), bool))


def test_bad_arguments_are_refused_before_launch():
    pw = fused.pointwise_for("cpu", "float32")
    a = np.zeros((2, 8), np.float32)
    with pytest.raises(TypeError, match="float32"):
        pw.rnn_forward(a.astype(np.float64), a, a, None, "tanh")
    with pytest.raises(ValueError, match="shape"):
        pw.lstm_forward(a, a, a[:, :3], a[:, :3], None)  # H=3 wants (2, 12) gates
    with pytest.raises(ValueError, match="valid"):
        pw.rnn_forward(a, a, a, np.ones((3, 1), bool), "tanh")
    with pytest.raises(ValueError, match="nonlinearity"):
        pw.rnn_forward(a, a, a, None, "sigmoid")


def test_launch_geometry_covers_every_element_once():
    """The grid every launch uses (GPU and CPU alike): B rows × ⌈H / block⌉ blocks."""
    for B, H in SIZES + [(4, 256), (2, 257), (64, 512)]:
        (gx, gy), (bx,) = fused._launch_dims(B, H)
        assert gx == B and bx % 32 == 0 and bx <= fused.BLOCK
        assert gy * bx >= H > (gy - 1) * bx


# ----------------------------------------------------------------------------- modules


def _torch_twins():
    """The torch-parity helpers (tests/twins.py); skips only the tests that use them."""
    return pytest.importorskip("twins")

MODULE_CONFIGS = [
    ("lstm", dict(num_layers=2, bidirectional=True), True),
    ("lstm", dict(num_layers=2, proj_size=2, batch_first=True), True),
    ("gru", dict(num_layers=2, bidirectional=True), True),
    ("rnn", dict(num_layers=2, nonlinearity="relu", bidirectional=True), True),
    ("rnn", dict(num_layers=1), False),
]


def _inputs(module, T, B, with_lengths, seed=1):
    rng = np.random.default_rng(seed)
    dt = module.dtype
    shape = (B, T, module.input_size) if module.batch_first else (T, B, module.input_size)
    LD = module.num_layers * module.num_directions
    h0 = 0.5 * rng.standard_normal((LD, B, module.spec.out_size)).astype(dt)
    hx = (h0, 0.5 * rng.standard_normal((LD, B, module.hidden_size)).astype(dt)) \
        if module.mode == "lstm" else h0
    lengths = [T, 2, T - 1, 1][:B] if with_lengths else None
    return rng.standard_normal(shape).astype(dt), hx, lengths


def _run(module, x, hx, lengths, seed=2):
    """Forward and backward with a fixed random ∂L/∂out, ∂L/∂state; numpy results."""
    out, state = module(x, hx, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    rng = np.random.default_rng(seed)
    dout = rng.standard_normal(out.shape).astype(module.dtype)
    dstates = tuple(rng.standard_normal(s.shape).astype(module.dtype) for s in states)
    dx, dh = module.backward(dout, dstates if module.mode == "lstm" else dstates[0])
    dh = dh if isinstance(dh, tuple) else (dh,)
    return dict(out=out, states=states, dx=dx, dh=dh, grads=dict(module.grads),
                dout=dout, dstates=dstates)


@pytest.mark.parametrize("kind,options,with_lengths", MODULE_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_module_matches_torch(kind, options, with_lengths, dtype):
    twins = _torch_twins()
    ours, theirs = twins.make_twins(kind, 3, 5, dtype=dtype, impl="fused", **options)
    assert ours.impl_in_use == "fused"
    x, hx, lengths = _inputs(ours, T=5, B=4, with_lengths=with_lengths)
    got = _run(ours, x, hx, lengths)
    dstate = got["dstates"] if kind == "lstm" else got["dstates"][0]
    t_out, t_states, t_dx, t_dh, t_grads = twins.run_torch(theirs, x, hx, got["dout"], dstate,
                                                           lengths)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(got["out"], t_out, **tol)
    for a, b in zip(got["states"], t_states, strict=True):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(got["dx"], t_dx, **tol)
    for a, b in zip(got["dh"], t_dh if isinstance(t_dh, tuple) else (t_dh,), strict=True):
        np.testing.assert_allclose(a, b, **tol)
    assert set(t_grads) == set(got["grads"])
    for name, g in t_grads.items():
        np.testing.assert_allclose(got["grads"][name], g, err_msg=name, **tol)


@pytest.mark.parametrize("kind,options", [
    ("gru", dict(num_layers=2, reset_after=False, bidirectional=True)),  # no torch twin
    ("lstm", dict(num_layers=3, dropout=0.3, residual="layers", init_state="learned")),
    ("gru", dict(num_layers=2, dropout=0.5, dropout_mode="variational")),
], ids=str)
@pytest.mark.parametrize("T,B", [(1, 1), (4, 3)])
def test_fused_module_matches_reference_module(kind, options, T, B):
    """Where torch has no twin: fused and reference modules, same seed, same numbers."""
    cls = {"lstm": rnncore.LSTM, "gru": rnncore.GRU}[kind]
    runs = []
    for impl in ("fused", "reference"):
        module = cls(3, 4, dtype="float64", seed=3, impl=impl, **options)
        x, hx, _ = _inputs(module, T, B, with_lengths=False)
        lengths = [T, 1, T - 1][:B] if T > 1 else None
        runs.append(_run(module, x, hx if options.get("init_state") is None else None, lengths))
    ours, ref = runs
    for key in ("out", "dx"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-12, atol=1e-12, err_msg=key)
    for a, b in zip(ours["states"] + ours["dh"], ref["states"] + ref["dh"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for name, g in ref["grads"].items():
        np.testing.assert_allclose(ours["grads"][name], g, rtol=1e-12, atol=1e-12,
                                   err_msg=name)




@pytest.mark.parametrize("kind,options", [
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=2)),
    ("gru", dict(num_layers=2, reset_after=False, bidirectional=True)),
    ("gru", dict(bidirectional=True)),
    ("rnn", dict(num_layers=2, nonlinearity="tanh")),
], ids=str)
def test_fused_module_gradcheck(kind, options):
    cls = {"lstm": rnncore.LSTM, "gru": rnncore.GRU, "rnn": rnncore.RNN}[kind]
    module = cls(3, 4, dtype="float64", seed=0, impl="fused", **options)
    x, hx, lengths = _inputs(module, T=4, B=3, with_lengths=True)
    report = gradcheck.check_module_gradients(module, x, hx, lengths=lengths)
    assert report.max_error < 1e-6, report.table()


# ----------------------------------------------------------------------------- selection
def test_auto_means_the_compiled_loop_on_cpu_and_fused_runs_when_asked():
    """auto: the compiled CPU loop where the cell has one, else the reference."""
    assert rnncore.LSTM(2, 3, impl="auto").impl_in_use == "compiled"
    assert rnncore.LSTM(2, 3, proj_size=2).impl_in_use == "reference"
    assert rnncore.GRU(2, 3, reset_after=False).impl_in_use == "reference"
    assert rnncore.LSTM(2, 3, impl="fused").impl_in_use == "fused"
    assert rnncore.LSTM(2, 3, impl="reference").impl_in_use == "reference"
    with pytest.raises(ValueError, match="no compiled CPU loop"):
        rnncore.GRU(2, 3, reset_after=False, impl="compiled")


def test_without_a_compiler_fused_refuses_and_auto_falls_back(monkeypatch, tmp_path):
    from rnncore.drivers import compiled_cpu

    fused.reset_caches()
    compiled_cpu.reset()
    try:
        with monkeypatch.context() as patch:
            patch.setenv("CXX", "no-such-compiler-rnncore")
            patch.setenv("RNNCORE_CACHE_DIR", str(tmp_path))  # no cached library either
            assert not fused.available("cpu")
            with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
                rnncore.GRU(2, 3, impl="fused")
            assert rnncore.GRU(2, 3, impl="auto").impl_in_use == "reference"
            with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
                rnncore.GRU(2, 3, impl="compiled")
    finally:
        fused.reset_caches()
        compiled_cpu.reset()
    assert fused.available("cpu") and compiled_cpu.available()


def test_host_library_is_cached_by_source_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNCORE_CACHE_DIR", str(tmp_path))
    first = fused.build_host_library()
    assert first.parent == tmp_path and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert fused.build_host_library() == first and first.stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- trust
def test_a_tampered_cached_library_is_rebuilt_not_loaded(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNCORE_CACHE_DIR", str(tmp_path / "cache"))
    lib = fused.build_host_library()
    lib.write_bytes(b"planted")  # same name, other content: its recorded hash no longer fits
    again = fused.build_host_library()
    assert again == lib and lib.read_bytes() != b"planted"


def test_a_cache_folder_others_can_write_is_not_used(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("RNNCORE_CACHE_DIR", str(shared))
    lib = fused.build_host_library()
    assert lib.parent != shared and not list(shared.glob("*.so"))
    assert (lib.parent.stat().st_mode & 0o077) == 0  # a private folder made for this process


def test_a_symlinked_library_is_not_trusted(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNCORE_CACHE_DIR", str(tmp_path / "cache"))
    lib = fused.build_host_library()
    elsewhere = tmp_path / "other.so"
    elsewhere.write_bytes(lib.read_bytes())
    lib.unlink()
    lib.symlink_to(elsewhere)
    assert fused.build_host_library() == lib and not lib.is_symlink()


def test_a_kernel_that_does_not_compile_fails_instead_of_skipping(monkeypatch, tmp_path):
    """A syntax error in a .cu file is a defect: available() raises, tests cannot skip."""
    broken = tmp_path / "kernels"
    broken.mkdir()
    for source in fused.kernels_dir().iterdir():
        if source.is_file():
            (broken / source.name).write_text(source.read_text())
    (broken / "lstm.cu").write_text((broken / "lstm.cu").read_text() + "\nthis is not C++;\n")
    monkeypatch.setattr(fused, "kernels_dir", lambda: broken)
    monkeypatch.setenv("RNNCORE_CACHE_DIR", str(tmp_path / "cache"))
    fused.reset_caches()
    try:
        with pytest.raises(fused.FusedBuildError, match="failed"):
            fused.available("cpu")
    finally:
        monkeypatch.undo()
        fused.reset_caches()
    assert fused.available("cpu")
