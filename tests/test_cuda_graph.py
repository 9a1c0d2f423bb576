"""The CUDA-graph driver and its cuBLAS handle, on the CPU.

* ``rnncore.cublas``: the argument checks, and the mapping of row-major GEMMs onto
  column-major cuBLAS calls, checked by a fake libcublas that computes what the real one
  would from the pointers, sizes and leading dimensions it is given.
* ``rnncore.drivers.cuda_graph`` with the CPU stand-in capture (``Immediate``: a replay
  reruns the captured body on the entry's static buffers): the same step sequence as the
  reference driver (which GEMMs and launches, in which order, with which shapes), the same
  bits, the cache keys, its size bound and its invalidation.
"""

import ctypes
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

import rnncore
from rnncore import backend, cells, cublas
from rnncore.drivers import PythonLoop, StepOps
from rnncore.drivers.cuda_graph import CudaGraph, GraphCache, Immediate, graph_key

REF = PythonLoop("reference")


# ----------------------------------------------------------------------------- fake cuBLAS
def _view(address, dtype, rows, cols, ld):
    """The column-major (rows, cols) matrix at ``address`` with leading dimension ld."""
    item = np.dtype(dtype).itemsize
    size = ld * (cols - 1) + rows
    buffer = (ctypes.c_char * (size * item)).from_address(address)
    flat = np.frombuffer(buffer, dtype=dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item, ld * item))


class FakeCublas:
    """Records every call; its ?gemm computes the BLAS contract from raw pointers."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail
        for name in cublas.SIGNATURES:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        def call(*args):
            self.calls.append((name, args))
            if name == self.fail:
                return 7  # CUBLAS_STATUS_INVALID_VALUE
            if name == "cublasCreate_v2":
                args[0]._obj.value = 1234
            if name.endswith("gemm_v2"):
                self._gemm(np.float32 if name == "cublasSgemm_v2" else np.float64, *args)
            return 0
        return call

    @staticmethod
    def _gemm(dtype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        a = _view(A, dtype, *((m, k) if transa == 0 else (k, m)), lda)
        b = _view(B, dtype, *((k, n) if transb == 0 else (n, k)), ldb)
        c = _view(C, dtype, m, n, ldc)
        alpha_ = _view(alpha, dtype, 1, 1, 1)[0, 0]
        beta_ = _view(beta, dtype, 1, 1, 1)[0, 0]
        opa = a if transa == 0 else a.T
        opb = b if transb == 0 else b.T
        c[...] = alpha_ * (opa @ opb) + (beta_ * c if beta_ else 0)


@pytest.fixture
def fake():
    lib = FakeCublas()
    workspace = np.zeros(64, np.uint8)
    return lib, cublas.Handle(stream=99, workspace=workspace, lib=lib)


def test_handle_sets_stream_and_workspace_before_any_gemm(fake):
    lib, handle = fake
    names = [name for name, _ in lib.calls]
    assert names == ["cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2"]
    assert lib.calls[1][1] == (1234, 99)
    assert lib.calls[2][1] == (1234, handle.workspace.ctypes.data, 64)
    handle.close()
    assert lib.calls[-1] == ("cublasDestroy_v2", (1234,))
    with pytest.raises(cublas.CublasError, match="destroyed"):
        handle.gemm(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_maps_row_major_onto_cublas(fake, dtype, transpose_b, beta):
    lib, handle = fake
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(dtype)
    b = rng.standard_normal((5, 4) if transpose_b else (4, 5)).astype(dtype)
    out = rng.standard_normal((3, 5)).astype(dtype)
    want = a @ (b.T if transpose_b else b) + beta * out
    handle.gemm(a, b, out, transpose_b=transpose_b, beta=beta)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    name, args = lib.calls[-1]
    assert name == ("cublasSgemm_v2" if dtype == np.float32 else "cublasDgemm_v2")
    assert args[1:6] == (int(transpose_b), 0, 5, 3, 4)


def test_gemm_reads_column_and_row_blocks_in_place(fake):
    """GRU's steps read dxg[:, :2H] and W_hh[2H:]: leading dimensions, no copies."""
    _, handle = fake
    rng = np.random.default_rng(1)
    big_a = rng.standard_normal((4, 10))
    w = rng.standard_normal((9, 3))
    big_out = np.zeros((4, 7))
    a, b, out = big_a[:, :6], w[:6], big_out[:, 2:5]
    handle.gemm(a, b, out)
    np.testing.assert_allclose(big_out[:, 2:5], big_a[:, :6] @ w[:6])
    assert not big_out[:, :2].any() and not big_out[:, 5:].any()  # nothing else written


@pytest.mark.parametrize("args,kwargs,error,match", [
    (((2, 3), (3, 4), (2, 5)), {}, ValueError, "shapes do not match"),
    (((2, 3), (4, 2), (2, 4)), {"transpose_b": True}, ValueError, "shapes do not match"),
    (((2, 3), (3, 4), (2, 4)), {"beta": 0.5}, ValueError, "beta 0 or 1"),
])
def test_gemm_refuses_bad_arguments(fake, args, kwargs, error, match):
    lib, handle = fake
    before = len(lib.calls)
    with pytest.raises(error, match=match):
        handle.gemm(*(np.ones(s) for s in args), **kwargs)
    assert len(lib.calls) == before  # refused before the library was called


def test_gemm_refuses_layouts_it_would_have_to_copy(fake):
    lib, handle = fake
    ones = np.ones((4, 4))
    with pytest.raises(TypeError, match="one dtype"):
        handle.gemm(ones.astype(np.float32), ones, ones)
    with pytest.raises(TypeError, match="float32 or float64"):
        handle.gemm(*(np.ones((2, 2), np.int64) for _ in range(3)))
    with pytest.raises(ValueError, match="unit stride"):
        handle.gemm(ones[:, ::2], np.ones((2, 4)), ones)
    with pytest.raises(ValueError, match="must not overlap"):
        handle.gemm(np.broadcast_to(np.ones(4), (4, 4)), ones, ones)
    with pytest.raises(ValueError, match="2-D"):
        handle.gemm(np.ones((2, 2, 2)), ones, ones)
    assert [n for n, _ in lib.calls if n.endswith("gemm_v2")] == []


def test_a_failed_call_names_the_function_and_status():
    with pytest.raises(cublas.CublasError, match="cublasSetStream_v2 failed: "
                                                 "CUBLAS_STATUS_INVALID_VALUE"):
        cublas.Handle(stream=1, workspace=None, lib=FakeCublas(fail="cublasSetStream_v2"))


def test_declare_sets_the_c_signatures():
    lib = cublas.declare(FakeCublas())
    assert lib.cublasDgemm_v2.argtypes == cublas.SIGNATURES["cublasDgemm_v2"]
    assert len(cublas.SIGNATURES["cublasSgemm_v2"]) == 14


# ----------------------------------------------------------------------------- step sequence
def _describe(value):
    """Shapes of the arrays in a (nested) argument tuple; other values as they are."""
    if isinstance(value, tuple):
        return tuple(_describe(v) for v in value)
    return ("array",) + value.shape if hasattr(value, "shape") else value


class Recorder:
    """A gemm and pointwise namespaces that log each call's kind, name and shapes."""

    def __init__(self):
        self.log = []

    def gemm(self, a, b, out, *, transpose_b=False, beta=0.0):
        self.log.append(("gemm", a.shape, b.shape, out.shape, transpose_b, beta))
        return backend.gemm(a, b, out, transpose_b=transpose_b, beta=beta)

    def pointwise(self, cell):
        def wrap(name, f):
            def call(*args, **kwargs):
                shapes = _describe(args) + _describe(kwargs.get("out"))
                self.log.append(("pointwise", name, shapes))
                return f(*args, **kwargs)
            return call
        return SimpleNamespace(**{n: wrap(n, f) for n, f in vars(cell.reference).items()})


class RecordingLoop(PythonLoop):
    def __init__(self, recorder):
        super().__init__("reference")
        self.recorder = recorder

    def ops(self, cell):
        return StepOps(pw=self.recorder.pointwise(cell), gemm=self.recorder.gemm, buffers={})


def _graph(recorder=None, maxsize=8):
    if recorder is None:
        return CudaGraph(lambda cell: cell.reference, backend.gemm, Immediate(), REF, maxsize)
    return CudaGraph(recorder.pointwise, recorder.gemm, Immediate(), REF, maxsize)


def _layer(cell_name, rng, I=3, H=4):
    cell = cells.get(cell_name)
    shapes = cell.param_shapes(cells.Dims(I, H), True)
    return cell, {k: rng.standard_normal(s) * 0.5 for k, s in shapes.items()}


def _problem(cell, rng, T=5, B=3, I=3, H=4, masked=True):
    x = rng.standard_normal((T, B, I))
    state0 = tuple(rng.standard_normal((B, w)) for w in cell.state_widths(cells.Dims(I, H)))
    valid = (np.arange(T)[:, None] < np.array([T, 2, 4][:B])[None, :])[..., None] \
        if masked else None
    dout = rng.standard_normal((T, B, H))
    dstate = tuple(rng.standard_normal(s.shape) for s in state0)
    return x, state0, {"valid": valid}, dout, dstate


def _both_passes(driver, cell, p, problem, reverse):
    x, state0, inputs, dout, dstate = problem
    out, state, cache = driver.forward(cell, p, x, state0, inputs, reverse)
    dx, dstate0, grads = driver.backward(cell, p, cache, dout, dstate)
    return [out, *state, dx, *dstate0] + [grads[k] for k in sorted(grads)
                                          if grads[k] is not None]


CELLS = ["lstm", "gru", "gru_reset_before", "rnn_tanh", "lnlstm"]


@pytest.mark.parametrize("cell_name", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_graph_runs_the_reference_step_sequence_bit_for_bit(cell_name, reverse):
    rng = np.random.default_rng(len(cell_name) + reverse)
    cell, p = _layer(cell_name, rng)
    problem = _problem(cell, rng)
    ref_log, graph_log = Recorder(), Recorder()
    want = _both_passes(RecordingLoop(ref_log), cell, p, problem, reverse)
    got = _both_passes(_graph(graph_log), cell, p, problem, reverse)
    assert graph_log.log == ref_log.log
    assert any(entry[0] == "gemm" for entry in ref_log.log)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_replays_use_the_new_inputs_and_capture_once():
    """Second and third calls on fresh data: no recapture, results still the reference's
    (a value frozen at capture instead of copied into a static buffer would show here)."""
    rng = np.random.default_rng(5)
    cell, p = _layer("lstm", rng)
    graph = _graph()
    for _ in range(3):
        problem = _problem(cell, rng)
        got = _both_passes(graph, cell, p, problem, False)
        want = _both_passes(REF, cell, p, problem, False)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    assert graph.cache.captures == 2 and len(graph.cache) == 1  # one forward, one backward
    p["w_hh"] *= 0.5  # in place, as the optimizers update: the graph reads it in place
    p["b_hh"] += 0.25  # the biases too (they join the input GEMM outside the graph)
    problem = _problem(cell, rng)
    for a, b in zip(_both_passes(graph, cell, p, problem, False),
                    _both_passes(REF, cell, p, problem, False), strict=True):
        np.testing.assert_array_equal(a, b)
    assert graph.cache.captures == 2


class WeakCapture(Immediate):
    """Like a CUDA graph, keeps nothing the body reaches alive: a graph holds raw
    addresses, so a buffer only the body's closure referred to (the second ∂c buffer of
    an LSTM, when T is even) would be freed and reused while the graph still writes it."""

    def capture(self, body):
        ref = weakref.ref(body)

        def replay():
            body = ref()
            assert body is not None, "the captured body (and its buffers) was freed"
            body()

        return replay


@pytest.mark.parametrize("T", [4, 5])
def test_entries_keep_alive_every_buffer_their_graphs_use(T):
    rng = np.random.default_rng(11)
    cell, p = _layer("lstm", rng)
    graph = CudaGraph(lambda c: c.reference, backend.gemm, WeakCapture(), REF, 8)
    for _ in range(2):
        problem = _problem(cell, rng, T=T)
        for a, b in zip(_both_passes(graph, cell, p, problem, False),
                        _both_passes(REF, cell, p, problem, False), strict=True):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- cache
def test_keys_separate_shapes_directions_lengths_patterns_and_parameters():
    rng = np.random.default_rng(6)
    cell, p = _layer("gru", rng)
    x, state0, inputs, _, _ = _problem(cell, rng)
    key = graph_key(cell, p, x, state0, inputs, False)
    assert key == graph_key(cell, dict(p), x.copy(), state0, {"valid": inputs["valid"] * 0},
                            False)  # values are data, not part of the key
    assert key != graph_key(cell, p, x, state0, inputs, True)
    assert key != graph_key(cell, p, x, state0, {"valid": None}, False)
    assert key != graph_key(cell, p, x[:4], state0, inputs, False)
    assert key != graph_key(cell, p, x.astype(np.float32), state0, inputs, False)
    assert key != graph_key(cell, {**p, "w_hh": p["w_hh"].copy()}, x, state0, inputs, False)
    assert key != graph_key(cells.get("rnn_tanh"), p, x, state0, inputs, False)


def test_the_cache_is_bounded_least_recently_used_first():
    cache = GraphCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert list(cache.entries) == ["a", "c"]
    with pytest.raises(ValueError):
        GraphCache(0)


def test_the_driver_respects_its_bound_and_survives_eviction():
    rng = np.random.default_rng(7)
    cell, p = _layer("lstm", rng)
    graph = _graph(maxsize=2)
    caches = []
    for T in (3, 4, 5):
        problem = _problem(cell, rng, T=T)
        caches.append((problem, graph.forward(cell, p, *problem[:3], False)[2]))
    assert len(graph.cache) == 2 and graph.cache.captures == 3
    problem, evicted = caches[0]  # its entry is gone: the backward runs on the fallback
    got = graph.backward(cell, p, evicted, *problem[3:])
    want = REF.backward(cell, p, REF.forward(cell, p, *problem[:3], False)[2], *problem[3:])
    np.testing.assert_array_equal(got[0], want[0])


def test_lstmp_and_record_run_on_the_fallback():
    rng = np.random.default_rng(8)
    cell = cells.get("lstm")
    shapes = cell.param_shapes(cells.Dims(3, 4, 2), True)
    p = {k: rng.standard_normal(s) for k, s in shapes.items()}
    graph = _graph()
    assert not graph.runs(cell, p)
    x = rng.standard_normal((4, 2, 3))
    out, _, _ = graph.forward(cell, p, x, (np.zeros((2, 2)), np.zeros((2, 4))), {"valid": None})
    assert out.shape == (4, 2, 2) and len(graph.cache) == 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_graph_module_equals_reference_module(kind):
    """impl='graph' through the front door (stand-in on the CPU), 2 layers, both
    directions, lengths, two calls; the gradient-flow record falls back."""
    cls = {"lstm": rnncore.LSTM, "gru": rnncore.GRU}[kind]
    kw = dict(num_layers=2, bidirectional=True, dtype="float64", seed=2)
    ref, graph = cls(3, 5, impl="reference", **kw), cls(3, 5, impl="graph", **kw)
    assert graph.impl_in_use == "graph"
    rng = np.random.default_rng(9)
    for _ in range(2):
        x = rng.standard_normal((6, 3, 3))
        results = []
        for m in (ref, graph):
            m.zero_grad()
            out, state = m(x, lengths=[6, 4, 1])
            dx, dstate = m.backward(np.sin(out))
            results.append([out, dx] + [m.grads[k] for k in sorted(m.grads)])
        for a, b in zip(*results, strict=True):
            np.testing.assert_array_equal(a, b)
    assert len(graph.driver.cache) == 4  # 2 layers × 2 directions, one lengths pattern


def test_load_state_dict_and_to_invalidate_the_graphs():
    m = rnncore.LSTM(3, 4, impl="graph", dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    m(x)
    assert len(m.driver.cache) == 1
    m.load_state_dict(m.state_dict())
    assert len(m.driver.cache) == 0
    m(x)
    old = m.driver
    m.to("cpu")
    assert len(old.cache) == 0 and m.driver is not old


class FakeCupy:
    """Enough of CuPy's stream and graph API to record what ``capture_graph`` asks for."""

    def __init__(self):
        self.log = []
        log = self.log

        class Stream:
            def __init__(self, name):
                self.name = name

            def record(self):
                log.append(("record", self.name))
                return self.name

            def wait_event(self, event):
                log.append(("wait", self.name, event))

            def begin_capture(self, mode=None):
                log.append(("begin", self.name, mode))

            def end_capture(self):
                log.append(("end", self.name))
                return SimpleNamespace(launch=lambda s: log.append(("launch", s.name)))

            def __enter__(self):
                log.append(("enter", self.name))

            def __exit__(self, *exc):
                log.append(("exit", self.name))

        from contextlib import nullcontext

        self.main, null = Stream("capture"), Stream("null")
        self.cuda = SimpleNamespace(
            get_current_stream=lambda: null, MemoryPool=lambda: SimpleNamespace(malloc=None),
            using_allocator=lambda malloc: nullcontext(),
            runtime=SimpleNamespace(streamCaptureModeRelaxed=2))


def test_capture_runs_the_body_eagerly_then_captures_it_between_two_joins():
    from rnncore.drivers.cuda_graph import capture_graph

    cupy = FakeCupy()
    replay = capture_graph(cupy, cupy.main, lambda: cupy.log.append("body"))
    assert cupy.log == [("record", "null"), ("wait", "capture", "null"), ("enter", "capture"),
                        "body", ("begin", "capture", 2), "body", ("end", "capture"),
                        ("exit", "capture"), ("record", "capture"), ("wait", "null", "capture")]
    replay()
    assert cupy.log[-1] == ("launch", "null")
