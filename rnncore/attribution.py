"""Path attribution: each layer's input gradient split into parts that sum to it.

For layer k with input u_k, the stack's backward forms (``rnncore.stack``)

    ∂L/∂u_k = [∂y_k  if the layer has a residual skip]  +  Σ_d ∂X_g^{(k,d)} W_ih^{(k,d)}

where ∂y_k is the gradient at the layer's output (after the dropout mask) and d runs
over the directions. Each direction's ∂X_g[t] (the gradient of the gate pre-activations
at step t) is what the cell's hand-written ``backward_step`` makes of the total state
gradient reaching step t, (∂L/∂h_t, ∂L/∂c_t) for the LSTM. That step is linear in the
state gradient, so with two-state cells it splits exactly:

    ∂X_g[t] = step(∂L/∂h_t, 0) + step(0, ∂L/∂c_t)

- the *hidden path*: what reaches the input at step t through h_t (the loss at step t
  and every later step's dependence on h_t, via W_hh);
- the *cell path*: what reaches it through the carried cell state c_t only (c_t's
  gradient is ∂L/∂c_{t+1} ⊙ f_{t+1}: the constant error carousel).

So the parts of ∂L/∂u_k are ``skip``, and per direction ``fwd``/``rev`` (one-state cells)
or ``fwd/h``, ``fwd/c``, ``rev/h``, ``rev/c`` (two-state cells). They sum to the total up
to rounding (float64: ~1e-16 relative; tested to 1e-12). The attribution is per step of
*arrival* at the state, not per path through the whole unrolled graph: the cell-path part
at step t contains gradient that entered c at a later step through h.

    paths = attribute(module, x, dout)   # {k: {part name: (T, B, I_k) array, "total": …}}
    shares(paths)                         # {k: {part: ‖part‖ / ‖total‖}}

The parts are recomputed on the host from the states the backward recorded, with the
reference driver (the module's own driver is put back afterwards).
"""

from __future__ import annotations

import numpy as np

from . import backend
from .drivers.python_loop import PythonLoop, _at, time_order
from .stack import layer_params


class PathRecorder:
    """Keeps what the attribution needs during ``module.backward(dout, recorder=…)``:
    every step's state gradient, every layer's output gradient and input gradient."""

    def __init__(self):
        self.states = {}  # (k, d, t) -> tuple of host arrays
        self.outputs = {}  # k -> ∂y_k
        self.inputs = {}  # k -> ∂u_k

    def on_state_grad(self, k, d, t, dstate):
        self.states[(k, d, t)] = tuple(np.array(backend.to_numpy(a)) for a in dstate)

    def on_output_grad(self, k, dy):
        self.outputs[k] = np.array(backend.to_numpy(dy))

    def on_input_grad(self, k, du):
        self.inputs[k] = np.array(backend.to_numpy(du))


def _host(a):
    return None if a is None else np.asarray(backend.to_numpy(a))


def _direction_parts(cell, p, layer, kept, k, d, split):
    """[(suffix, ∂X_g (T, B, G·H))] for one layer direction: the whole ("") or the
    per-state split ("/h", "/c", … one per state)."""
    x, inputs, reverse, state0, saved, dims = layer
    T, B = x.shape[:2]
    order = time_order(T, reverse)
    saved = {n: _host(a) for n, a in saved.items()}
    inputs = {n: _host(a) for n, a in inputs.items()}
    state0 = tuple(_host(s) for s in state0)
    p = {n: _host(a) for n, a in p.items()}
    ops = PythonLoop("reference").ops(cell)
    widths = cell.state_widths(dims)
    n_parts = len(widths) if split else 1
    dxg = [np.zeros((T, B, p["w_ih"].shape[0]), saved["h"].dtype) for _ in range(n_parts)]
    grads = {n: np.empty((B, w), saved["h"].dtype)
             for n, w in cell.grad_widths(dims, p).items()}
    for kk in range(T):
        t = order[kk]
        prev = state0 if kk == 0 else cell.state_at(saved, order[kk - 1])
        full = kept[(k, d, t)]
        for i in range(n_parts):
            ds = full if not split else tuple(a if j == i else np.zeros_like(a)
                                               for j, a in enumerate(full))
            dprev = tuple(np.zeros((B, w), saved["h"].dtype) for w in widths)
            cell.backward_step(ops, p, ds, prev, _at(inputs, t), _at(saved, t), grads, dprev)
            dxg[i][t] = grads["dxg"]
    names = ("",) if not split else tuple("/" + s for s in cell.state)
    return list(zip(names, dxg))


def paths_from(module, rec: PathRecorder, split_states=True) -> dict:
    """The parts of every layer's input gradient from a ``PathRecorder`` filled by the
    module's last backward (run with the reference driver)."""
    cache = module.last_cache
    spec = module.spec
    split = split_states and len(module.cell.state) > 1
    out = {}
    for k in range(spec.num_layers):
        parts = {}
        if spec.layer_residual(k):
            parts["skip"] = rec.outputs[k]
        for d in range(spec.num_directions):
            p = layer_params(spec, module.params, k, d)
            w_ih = _host(p["w_ih"])
            for suffix, dxg in _direction_parts(module.cell, p, cache.layers[k][d],
                                                rec.states, k, d, split):
                T, B, _ = dxg.shape
                parts[("fwd", "rev")[d] + suffix] = (dxg.reshape(T * B, -1) @ w_ih
                                                     ).reshape(T, B, -1)
        if k in rec.inputs:
            parts["total"] = rec.inputs[k]
        out[k] = parts
    return out


def attribute(module, x, dout, hx=None, split_states=True) -> dict:
    """Forward and backward ``module`` (reference driver) with ∂L/∂out = ``dout`` and
    return {layer k: {part: array (T, B, I_k)}} with "total" = ∂L/∂u_k. The module's
    gradients are accumulated as by any backward."""
    driver = module.driver
    module.driver = PythonLoop("reference")
    try:
        module(x, hx)
        rec = PathRecorder()
        module.backward(dout, recorder=rec)
    finally:
        module.driver = driver
    return paths_from(module, rec, split_states)


def shares(paths) -> dict:
    """{k: {part: ‖part‖_F / ‖total‖_F}} (parts may cancel, so shares need not sum to 1)."""
    res = {}
    for k, parts in paths.items():
        total = np.linalg.norm(parts["total"])
        res[k] = {name: float(np.linalg.norm(a) / total) if total else float("nan")
                  for name, a in parts.items() if name != "total"}
    return res
