"""The CUDA-graph driver: capture a layer direction's time loop once, replay it after.

Per call, a layer direction issues 2 + T·(GEMMs + launches per step) operations from the
host; at ~15 µs each that, not the GPU, sets the speed at the sizes rnncore is used at.
A CUDA graph records the T-step loop once and replays it with one host call.

What is captured and what is not:

    forward    outside: X_g = X W_ihᵀ + b (one big GEMM, CuPy), copy state_0 and the
                        lengths mask into the entry's static buffers, prefill saved buffers
               graph:   ``forward_steps``: T × (recurrent GEMM on our cuBLAS handle +
                        pointwise kernel launches), into the entry's static saved buffers
               outside: out = h ⊙ valid, copies of state_T
    backward   outside: ∂h = ∂out ⊙ valid, ∂h[last] += ∂h_T, ∂state_T into static buffers
               graph:   ``backward_steps``: T × (pointwise launch + GEMM into ∂h_{t−1})
               outside: ∂W = Σ ∂zᵀ h, ∂W_ih, ∂b, ∂X (one GEMM each, CuPy)

``forward_steps`` and ``backward_steps`` below are the reference driver's loops
(``PythonLoop.forward`` / ``backward``, which the notebooks quote in place) with the setup
and the hoisted GEMMs taken out; tests/test_cuda_graph.py checks that they issue the same
GEMMs and pointwise calls, in the same order, with the same shapes, and give the same bits.
The big GEMMs stay outside the graph: they are few, not launch-bound, and CuPy's cuBLAS
calls cannot be captured.

Entries. A graph reads and writes fixed addresses, so each entry owns every buffer its
graph touches (static inputs, saved buffers, gradient buffers, scratch, a private memory
pool for whatever a step allocates during capture) for as long as it exists. An entry is
keyed by ``graph_key``: the cell, dtype, shapes, direction, which per-step inputs are
present (the lengths *pattern*: the mask's values are data, copied in each call), and the
addresses of the layer direction's parameters (read in place, so an optimizer's in-place
update needs no recapture; a new array — ``load_state_dict`` — is a new key). The cache
keeps at most ``GRAPH_CACHE_SIZE`` entries (least recently used out first), and
``invalidate()`` empties it (the modules call it from ``load_state_dict`` and ``to()``;
the dtype is part of the key). The backward graph lives in its forward entry.

A ``LayerCache`` of this driver points at its entry's static buffers: it is valid until
the same layer direction runs forward again with the same key (the module keeps only the
last forward's cache, so ``backward`` always reads the right one).

Anything else — a backward asked to ``record`` every step, a cell whose step GEMMs are not
all on ``ops.gemm`` (LSTMP's projection) — runs on the ``fallback`` driver.

``capture`` abstracts the graph: ``CudaCapture`` records on a private stream into a
``cupy.cuda.graph.Graph`` and launches it on the current stream; ``Immediate`` (the CPU)
runs the body again at every replay, which exercises all of the above — keys, static
buffers, copies in and out — with NumPy.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

from .. import backend
from ..backend import gemm, xp_of
from ..cells.base import Dims
from ..cublas import pointer
from .python_loop import LayerCache, StepOps, _at, _states_before_each_step, time_order

GRAPH_CACHE_SIZE = 64  # entries (layer direction × shape × lengths pattern); an entry holds
# about the memory of one forward's saved buffers, like the reference driver's caches.


def forward_steps(cell, ops, p, xg, state0, inputs, saved, reverse):
    """``PythonLoop.forward``'s time loop alone: every step of ``cell`` from ``state0`` into
    the preallocated ``saved`` buffers. Nothing here allocates or reads data on the host."""
    state = state0
    for t in time_order(xg.shape[0], reverse):
        state = cell.forward_step(ops, p, xg[t], state, _at(inputs, t), _at(saved, t))
    return state


def backward_steps(cell, ops, p, state0, inputs, saved, grads, dh, dh0, rest, reverse):
    """``PythonLoop.backward``'s time loop alone. ``dh`` (T, B, H) holds ∂L/∂out (+ ∂L/∂h_T
    at the last step) and accumulates; ``dh0`` receives ∂L/∂h_0 (added to); ``rest`` holds
    a [current, next] pair of buffers per other state gradient, swapped after every step."""
    order = time_order(dh.shape[0], reverse)
    for k in range(len(order) - 1, -1, -1):
        t = order[k]
        state_prev = state0 if k == 0 else cell.state_at(saved, order[k - 1])
        dstate_t = (dh[t],) + tuple(pair[0] for pair in rest)
        dstate_prev = (dh0 if k == 0 else dh[order[k - 1]],) + tuple(pair[1] for pair in rest)
        cell.backward_step(ops, p, dstate_t, state_prev, _at(inputs, t), _at(saved, t),
                           _at(grads, t), dstate_prev)
        for pair in rest:
            pair.reverse()


def graph_key(cell, p, x, state0, inputs, reverse):
    """What a captured graph depends on: everything but the values of its inputs."""
    params = tuple(sorted((name, pointer(a)) for name, a in p.items() if a is not None))
    present = tuple(sorted(name for name, a in inputs.items() if a is not None))
    return (cell.name, str(x.dtype), tuple(x.shape), tuple(tuple(s.shape) for s in state0),
            bool(reverse), present, params)


class GraphCache:
    """At most ``maxsize`` entries, least recently used evicted first."""

    def __init__(self, maxsize=GRAPH_CACHE_SIZE):
        if maxsize < 1:
            raise ValueError(f"the graph cache needs room for one entry, got {maxsize}")
        self.maxsize = maxsize
        self.entries = OrderedDict()
        self.captures = 0  # how many graphs were captured (the tests count them)

    def get(self, key):
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key, entry):
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.maxsize:
            self.entries.popitem(last=False)

    def clear(self):
        self.entries.clear()

    def __len__(self):
        return len(self.entries)


# ----------------------------------------------------------------------------- captures
class Immediate:
    """The CPU stand-in for a graph: ``capture(body)`` returns ``body``; a replay runs it."""

    kind = "immediate"

    def capture(self, body):
        return body


def capture_graph(cupy, stream, run):
    """``run()``, which issues work on ``stream`` (the current stream while it runs) and
    streams forked from it, run once eagerly and then captured into a CUDA graph; returns
    ``replay()``, which launches the graph on the current stream.

    The capture allocates from a memory pool of its own, kept alive with the graph and used
    by nothing else afterwards: a temporary that a step frees during capture is an address
    the graph keeps writing at every replay, so no later allocation may take it (relaxed
    capture mode lets a step allocate at all). The eager run comes first so that whatever a
    library initialises lazily on a first call (kernels loaded on first launch, say) happens
    outside the capture; every buffer the graph reads is rewritten before each replay, so
    that run's values do not matter.
    """
    current = cupy.cuda.get_current_stream()
    stream.wait_event(current.record())  # the static inputs are written
    pool = cupy.cuda.MemoryPool()
    mode = getattr(cupy.cuda.runtime, "streamCaptureModeRelaxed", None)
    with cupy.cuda.using_allocator(pool.malloc), stream:
        run()  # the eager run
        if mode is None:
            stream.begin_capture()
        else:
            stream.begin_capture(mode)
        try:
            run()
        finally:
            graph = stream.end_capture()
    current.wait_event(stream.record())

    def replay():
        graph.launch(cupy.cuda.get_current_stream())

    replay.graph, replay.pool = graph, pool
    return replay


class CudaCapture:
    """Stream capture into a CUDA graph on a private stream (``capture_graph``)."""

    kind = "cuda"

    def __init__(self, device):
        cupy = backend.import_cupy()
        self.cupy = cupy
        self.device = device
        with cupy.cuda.Device(device.index):
            self.stream = cupy.cuda.Stream(non_blocking=True)

    def capture(self, body):
        return capture_graph(self.cupy, self.stream, body)


# ----------------------------------------------------------------------------- the driver
class CudaGraph:
    """Captures each layer direction's step loop once per key; replays it afterwards."""

    name = "graph"

    def __init__(self, pointwise, step_gemm, capture, fallback, maxsize=GRAPH_CACHE_SIZE):
        self.pointwise = pointwise  # the cell pointwise provider: cell -> namespace
        self.step_gemm = step_gemm  # gemm for the steps: our own cuBLAS handle on a GPU
        self.capturer = capture
        self.fallback = fallback
        self.cache = GraphCache(maxsize)

    def invalidate(self):
        """Forget every captured graph and its buffers (parameters replaced or moved)."""
        self.cache.clear()

    def runs(self, cell, p) -> bool:
        """Whether calls with these parameters are captured (else the fallback runs)."""
        return p.get("w_hr") is None

    def _ops(self, cell):
        return StepOps(pw=self.pointwise(cell), gemm=self.step_gemm, buffers={})

    # ----------------------------------------------------------------- forward
    def forward(self, cell, p, x, state0, inputs, reverse=False):
        if not self.runs(cell, p):
            return self.fallback.forward(cell, p, x, state0, inputs, reverse)
        key = graph_key(cell, p, x, state0, inputs, reverse)
        entry = self.cache.get(key)
        if entry is None:
            entry = self._capture_forward(cell, p, x, state0, inputs, reverse)
            self.cache.put(key, entry)
        T, B, _ = x.shape
        # outside the graph: the hoisted input GEMM and the static inputs
        bias = cell.input_bias(p)  # each call: an optimizer updates the biases in place
        entry.xg[...] = 0 if bias is None else bias
        gemm(x.reshape(T * B, -1), p["w_ih"], entry.xg.reshape(T * B, -1), transpose_b=True,
             beta=1.0)
        for static, given in zip(entry.state0, state0):
            static[...] = given
        for name, static in entry.inputs.items():
            if static is not None:
                static[...] = inputs[name]
        for name, value in cell.prefill(p).items():
            entry.saved[name][...] = 0 if value is None else value
        entry.replay_forward()
        valid = entry.inputs.get("valid")
        out = entry.saved["h"] * valid if valid is not None else entry.saved["h"].copy()
        state_T = tuple(s.copy() for s in entry.state_T)
        cache = LayerCache(x, entry.inputs, reverse, entry.state0, entry.saved, entry.dims)
        return out, state_T, cache

    def _capture_forward(self, cell, p, x, state0, inputs, reverse):
        xp = xp_of(x)
        T, B, I = x.shape
        dims = Dims(I, p["w_hh"].shape[0] // cell.num_gates,
                    0 if p.get("w_hr") is None else p["w_hr"].shape[0])
        e = SimpleNamespace(dims=dims, reverse=reverse, cell=cell, p=p, backward=None)
        e.xg = xp.empty((T, B, p["w_ih"].shape[0]), x.dtype)
        e.state0 = tuple(xp.empty_like(s) for s in state0)
        e.inputs = {name: None if a is None else xp.empty_like(a) for name, a in inputs.items()}
        e.saved = {name: xp.empty((T, B, width), x.dtype)
                   for name, width in cell.saved_widths(dims, p).items()}
        for name, value in cell.prefill(p).items():  # before capture too: see forward()
            e.saved[name][...] = 0 if value is None else value
        e.ops = self._ops(cell)

        def body():
            forward_steps(cell, e.ops, p, e.xg, e.state0, e.inputs, e.saved, reverse)

        # a graph holds raw addresses: the entry keeps the body, and with it every buffer
        # the body reaches, for as long as the graph exists
        e.body = body
        e.replay_forward = self.capturer.capture(body)
        self.cache.captures += 1
        e.state_T = cell.state_at(e.saved, time_order(T, reverse)[-1])
        return e

    # ----------------------------------------------------------------- backward
    def backward(self, cell, p, cache, dout, dstate, record=None, need_dx=True,
                 interventions=None, dstates_all=None):
        x, inputs, reverse, state0, saved, dims = cache
        if record is not None or interventions is not None or dstates_all is not None \
                or not self.runs(cell, p):
            return self.fallback.backward(cell, p, cache, dout, dstate, record, need_dx,
                                          interventions, dstates_all)
        key = graph_key(cell, p, x, state0, inputs, reverse)
        entry = self.cache.get(key)
        if entry is None or entry.saved is not saved:  # evicted or invalidated since
            return self.fallback.backward(cell, p, cache, dout, dstate, record, need_dx,
                                          interventions, dstates_all)
        if entry.backward is None:
            entry.backward = self._capture_backward(entry, dout, dstate)
        g = entry.backward
        T = x.shape[0]
        valid = entry.inputs.get("valid")
        # outside the graph: ∂L/∂out (masked), ∂L/∂state_T into the static buffers
        if valid is not None:
            xp_of(dout).multiply(dout, valid, out=g.dh)
        else:
            g.dh[...] = dout
        g.dh[time_order(T, reverse)[-1]] += dstate[0]
        g.dh0[...] = 0
        for static, given in zip(g.rest_in, dstate[1:]):
            static[...] = given
        g.replay()
        dxg = g.grads["dxg"]
        db = dxg.sum(axis=(0, 1))
        grads = cell.weight_grads(p, saved, g.grads,
                                  _states_before_each_step(saved["h"], state0, reverse), db)
        grads["w_ih"] = backend.sum_outer(dxg, x)
        grads["b_ih"] = db
        dx = (dxg.reshape(T * x.shape[1], -1) @ p["w_ih"]).reshape(x.shape[:2] + (-1,)) \
            if need_dx else None
        return dx, (g.dh0.copy(),) + tuple(r.copy() for r in g.rest_out), grads

    def _capture_backward(self, e, dout, dstate):
        xp = xp_of(dout)
        T, B = dout.shape[:2]
        g = SimpleNamespace()
        g.dh = xp.empty(dout.shape, dout.dtype)
        g.dh0 = xp.zeros(dstate[0].shape, dout.dtype)
        pairs = [(xp.empty_like(d), xp.empty_like(d)) for d in dstate[1:]]
        g.grads = {name: xp.empty((T, B, width), dout.dtype)
                   for name, width in e.cell.grad_widths(e.dims, e.p).items()}
        # backward_steps swaps each pair after every step: after T steps, pair[T % 2]
        g.pairs = pairs  # both buffers of each pair, whichever T's parity leaves the result in
        g.rest_in = [pair[0] for pair in pairs]
        g.rest_out = [pair[T % 2] for pair in pairs]
        g.ops = self._ops(e.cell)

        def body():
            rest = [list(pair) for pair in pairs]  # the same buffers at every (re)play
            backward_steps(e.cell, g.ops, e.p, e.state0, e.inputs, e.saved, g.grads, g.dh,
                           g.dh0, rest, e.reverse)

        g.body = body  # see _capture_forward
        g.replay = self.capturer.capture(body)
        self.cache.captures += 1
        return g


def for_device(device, dtype, fallback, maxsize=GRAPH_CACHE_SIZE):
    """The graph driver of ``device``: real graphs on CUDA, the stand-in on the CPU."""
    device = backend.parse_device(device)
    if device.kind == "cuda":
        from .. import cublas, fused

        launcher = fused.launcher_for(device, dtype)
        capture = CudaCapture(device)
        handle = cublas.cuda_handle(capture.stream)
        driver = CudaGraph(lambda cell: cell.fused_pointwise(launcher), handle.gemm, capture,
                           fallback, maxsize)
        driver.handle = handle  # alive as long as the driver (its graphs use it)
        return driver
    return CudaGraph(lambda cell: cell.reference, gemm, Immediate(), fallback, maxsize)
