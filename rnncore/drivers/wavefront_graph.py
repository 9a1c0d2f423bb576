"""``impl="wavefront"``: a whole unidirectional stack as one captured graph per pass, layer
l's step t running beside layer l+1's step t−1.

The per-layer graph driver (``cuda_graph.py``) replays one layer direction at a time, so a
stack of L layers is L·T steps in a row, each too small to fill a GPU. The wavefront
(``rnncore/wavefront.py``: the schedule, and the step program ``StackRun`` that the NumPy
tests run in any order) puts the L items of an anti-diagonal side by side:

    forward:   for each wave w (items (l, t) with l + t = w):
                   fork: layer l's stream waits for the wave to start
                   item (l, t) on layer l's stream: x_g = b + u W_ihᵀ, the cell's step
                   join: the wave ends when every item of it has
    backward:  the same waves in the opposite order; then ∂W, ∂b as one GEMM each

Each layer has a stream and a cuBLAS handle bound to it (``rnncore/cublas.py``), and the
forks and joins are events, which stream capture turns into the graph's edges: one graph
for the forward, one for the backward, replayed with one host call each. Results equal the
same step program run layer by layer bit for bit (every item writes only its own step's
slices); against the layer-by-layer drivers they agree to rounding, since here the input
projection is a GEMM per step rather than one for all steps.

Entries are cached like the graph driver's (``GraphCache``: keyed by shapes, dtype, which of
lengths and dropout masks are present, and the parameters' addresses; bounded; emptied by
``invalidate``). An entry owns the ``StackRun`` whose buffers the graphs read and write;
each call copies its x, initial state, lengths and masks into them (and ∂out, ∂state_T
before the backward).

What the wavefront does not run goes to the per-layer driver it wraps (``layer``): a
bidirectional stack, ``residual="stack"``, the regularisers' step or weight masks, LSTMP,
and a backward asked to record every step, to intervene or to take every state's gradient
(that backward reads the per-layer caches, which point at the entry's buffers).

``waves`` abstracts the streams: ``StreamWaves`` captures on a GPU; ``SerialWaves`` (the
CPU) runs the items of each wave one after another at every replay, which exercises the
caching, the static buffers and the copies in and out with NumPy.
"""

from __future__ import annotations

from types import SimpleNamespace

from .. import backend
from ..backend import gemm, xp_of
from ..cublas import pointer
from ..stack import StackCache
from ..wavefront import StackRun, wavefront
from .cuda_graph import GRAPH_CACHE_SIZE, GraphCache, capture_graph
from .python_loop import LayerCache, StepOps


class WavefrontCache(StackCache):
    """A ``StackCache`` whose layers point at a wavefront entry's buffers; ``entry`` is the
    entry that made it (its backward replays that entry's graph)."""

    entry = None


def stack_key(spec, params, x, state0, valid, masks):
    """What a stack's captured graphs depend on: everything but the values of its inputs."""
    names = sorted(name for name, a in params.items() if a is not None)
    return (spec, str(x.dtype), tuple(x.shape), tuple(tuple(s.shape) for s in state0),
            valid is not None, tuple(None if m is None else tuple(m.shape) for m in masks),
            tuple((name, pointer(params[name])) for name in names))


# ----------------------------------------------------------------------------- waves
class SerialWaves:
    """The CPU stand-in: every layer on the one thread, items in wave order."""

    kind = "serial"

    def ops(self, cell, layers):
        return [StepOps(pw=cell.reference, gemm=gemm, buffers={}) for _ in range(layers)]

    def capture(self, waves, item):
        def replay():
            for wave in waves:
                for l, t in wave:
                    item(l, t)

        return replay


class StreamWaves:
    """Stream capture of the waves on a GPU (``capture_graph``): a stream and a cuBLAS
    handle per layer, a fork and a join per wave on a main stream."""

    kind = "cuda"

    def __init__(self, device, dtype):
        from .. import fused

        cupy = backend.import_cupy()
        self.cupy, self.device = cupy, device
        self.launcher = fused.launcher_for(device, dtype)
        with cupy.cuda.Device(device.index):
            self.main = cupy.cuda.Stream(non_blocking=True)
        self.streams, self.handles = [], []

    def ops(self, cell, layers):
        from .. import cublas

        with self.cupy.cuda.Device(self.device.index):
            while len(self.streams) < layers:  # a stream and a handle per layer, kept
                self.streams.append(self.cupy.cuda.Stream(non_blocking=True))
                self.handles.append(cublas.cuda_handle(self.streams[-1]))
        return [StepOps(pw=cell.fused_pointwise(self.launcher), gemm=h.gemm, buffers={})
                for h in self.handles[:layers]]

    def _run(self, waves, item):
        for wave in waves:
            start = self.main.record()
            for l, _ in wave:
                self.streams[l].wait_event(start)
            for l, t in wave:
                with self.streams[l]:
                    item(l, t)
            for l, _ in wave:
                self.main.wait_event(self.streams[l].record())

    def capture(self, waves, item):
        return capture_graph(self.cupy, self.main, lambda: self._run(waves, item))


# ----------------------------------------------------------------------------- the driver
class StackGraph:
    """Runs a unidirectional stack as captured waves; a per-layer driver otherwise."""

    name = "wavefront"

    def __init__(self, layer, waves, maxsize=GRAPH_CACHE_SIZE):
        self.layer = layer  # the per-layer driver: what the wavefront does not run
        self.waves = waves
        self.cache = GraphCache(maxsize)

    def invalidate(self):
        self.cache.clear()
        hook = getattr(self.layer, "invalidate", None)
        if hook is not None:
            hook()

    # the per-layer boundary, for what the wavefront does not run
    def forward(self, cell, p, x, state0, inputs, reverse=False):
        return self.layer.forward(cell, p, x, state0, inputs, reverse)

    def backward(self, cell, p, cache, dout, dstate, record=None, need_dx=True,
                 interventions=None, dstates_all=None):
        return self.layer.backward(cell, p, cache, dout, dstate, record, need_dx,
                                   interventions, dstates_all)

    def runs_stack(self, spec, step_masks=None, weight_masks=None) -> bool:
        """Whether a stack forward with these options runs as waves."""
        return (spec.num_directions == 1 and spec.residual in (None, "layers")
                and not spec.proj_size and not step_masks and not weight_masks
                and bool(spec.cell.kernels))

    # ----------------------------------------------------------------- forward
    def stack_forward(self, spec, params, x, state0, valid=None, masks=None):
        masks = list(masks or [None] * spec.num_layers)
        key = stack_key(spec, params, x, state0, valid, masks)
        e = self.cache.get(key)
        if e is None:
            e = self._capture_forward(spec, params, x, state0, valid, masks)
            self.cache.put(key, e)
        run = e.run
        run.x[...] = x
        for static, given in zip(run.state0, state0):
            static[...] = given
        if valid is not None:
            run.valid[...] = valid
        for static, given in zip(run.masks, masks):
            if static is not None:
                static[...] = given
        for l in range(spec.num_layers):  # each call: an optimizer updates them in place
            if run.bias[l] is not None:
                run.bias[l][...] = spec.cell.input_bias(run.p[l])
            for name, value in spec.cell.prefill(run.p[l]).items():
                run.saved[l][name][...] = 0 if value is None else value
        e.replay_forward()
        out, state_n = run.forward_result()
        layers = [[LayerCache(run.x if l == 0 else run.y[l - 1], {"valid": run.valid}, False,
                              tuple(s[l] for s in run.state0), run.saved[l], run.dims[l])]
                  for l in range(spec.num_layers)]
        cache = WavefrontCache(run.x, run.valid, layers, run.masks, None, None)
        cache.entry = e
        return out.copy(), state_n, cache

    def _capture_forward(self, spec, params, x, state0, valid, masks):
        xp = xp_of(x)
        run = StackRun(spec, params, xp.empty_like(x), tuple(xp.empty_like(s) for s in state0),
                       None if valid is None else xp.empty_like(valid),
                       [None if m is None else xp.empty_like(m) for m in masks],
                       ops=self.waves.ops(spec.cell, spec.num_layers))
        run.bias = [None if b is None else xp.array(b, copy=True) for b in run.bias]
        e = SimpleNamespace(run=run, spec=spec, backward=None,
                            schedule=wavefront(spec.num_layers, x.shape[0]))
        e.replay_forward = self.waves.capture(e.schedule, run.forward_item)
        self.cache.captures += 1
        return e

    # ----------------------------------------------------------------- backward
    def stack_backward(self, spec, params, cache, dout, dstate_n, input_grad=True):
        e = cache.entry
        run = e.run
        if e.backward is None:  # the buffers, once; a graph for each value of input_grad
            xp = xp_of(dout)
            run.start_backward(xp.empty_like(dout), tuple(xp.empty_like(d) for d in dstate_n))
            e.backward = {}
        run.need_dx = bool(input_grad)  # without it the first layer's ∂x GEMMs are left out
        replay = e.backward.get(run.need_dx)
        if replay is None:
            # the forward's waves in the opposite order (a wave's items are independent)
            replay = e.backward[run.need_dx] = self.waves.capture(e.schedule[::-1],
                                                                  run.backward_item)
            self.cache.captures += 1
        run.dout[...] = dout
        for static, given in zip(run.dstate_n, dstate_n):
            static[...] = given
        replay()
        dx, dstate0, grads = run.backward_result()
        return (None if dx is None else dx.copy()), dstate0, grads


def for_device(device, dtype, layer, maxsize=GRAPH_CACHE_SIZE):
    """The wavefront driver of ``device`` around the per-layer driver ``layer``."""
    device = backend.parse_device(device)
    waves = StreamWaves(device, dtype) if device.kind == "cuda" else SerialWaves()
    return StackGraph(layer, waves, maxsize)


__all__ = ["SerialWaves", "StackGraph", "StreamWaves", "WavefrontCache", "for_device",
           "stack_key"]
