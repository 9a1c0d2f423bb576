"""Depth: layers and directions, residual paths, dropout between layers, final states.

For layer k with input u_k (u_0 = x) and directions d ∈ {forward, reverse}:

    y_k = [RNN_k^fwd(u_k) ; RNN_k^rev(u_k)]               (concatenated features)
    y_k ← y_k + u_k       residual="layers", where the widths of y_k and u_k match
    u_{k+1} = m_k ⊙ y_k   dropout mask m_k (inverted, 1/(1−p) or 0) for k < L−1, training
    out = y_{L−1} (+ x, or + x W_resᵀ + b_res when widths differ, for residual="stack")

Padded steps (``valid`` false) give zeros at every layer's output, residual included.
Backward runs the same path in reverse: the residual adds its gradient to the layer's
input gradient, the mask multiplies the gradient, and the directions' input gradients add.
"""

from dataclasses import dataclass
from typing import NamedTuple

from .backend import sum_outer, xp_of
from .layer import layer_backward, layer_forward


@dataclass(frozen=True)
class StackSpec:
    """The shape of a stack; ``cell`` is an LSTMCell, GRUCell or RNNCell instance."""

    cell: object
    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    proj_size: int = 0
    residual: str | None = None
    bias: bool = True

    @property
    def out_size(self) -> int:
        """Width of each direction's h (the projection's, for LSTMP)."""
        return self.proj_size or self.hidden_size

    def layer_input_size(self, k: int) -> int:
        return self.input_size if k == 0 else self.out_size * self.num_directions

    def suffix(self, k: int, d: int) -> str:
        return f"_l{k}" + ("_reverse" if d == 1 else "")

    def layer_residual(self, k: int) -> bool:
        width = self.out_size * self.num_directions
        return self.residual == "layers" and self.layer_input_size(k) == width

    def stack_residual_projected(self) -> bool:
        return self.residual == "stack" and self.input_size != self.out_size * self.num_directions


KEYS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
TORCH_PREFIX = {
    "w_ih": "weight_ih",
    "w_hh": "weight_hh",
    "b_ih": "bias_ih",
    "b_hh": "bias_hh",
    "w_hr": "weight_hr",
}


def parameter_shapes(spec: StackSpec) -> dict:
    """PyTorch's parameter names and shapes, in torch.nn's order."""
    G, H, P = spec.cell.num_gates, spec.hidden_size, spec.proj_size
    shapes = {}
    for k in range(spec.num_layers):
        for d in range(spec.num_directions):
            s = spec.suffix(k, d)
            shapes["weight_ih" + s] = (G * H, spec.layer_input_size(k))
            shapes["weight_hh" + s] = (G * H, spec.out_size)
            if spec.bias:
                shapes["bias_ih" + s] = (G * H,)
                shapes["bias_hh" + s] = (G * H,)
            if P:
                shapes["weight_hr" + s] = (P, H)
    if spec.stack_residual_projected():
        shapes["residual_weight"] = (spec.out_size * spec.num_directions, spec.input_size)
        shapes["residual_bias"] = (spec.out_size * spec.num_directions,)
    return shapes


def layer_params(spec: StackSpec, params: dict, k: int, d: int) -> dict:
    """The short-keyed view (w_ih, w_hh, …) of layer k, direction d."""
    s = spec.suffix(k, d)
    return {key: params.get(TORCH_PREFIX[key] + s) for key in KEYS}


class StackCache(NamedTuple):
    x: object
    valid: object
    layers: list  # [k][d] LayerCache
    masks: list  # [k] dropout mask or None


def _state_at(spec, h0, c0, idx):
    return (h0[idx], c0[idx]) if spec.cell.has_cell_state else h0[idx]


def stack_forward(spec: StackSpec, params, x, h0, c0, valid=None, masks=None):
    """x (T, B, I), h0 (L·D, B, H_out), c0 (L·D, B, H) or None, valid (T, B, 1) or None.

    Returns (out (T, B, D·H_out), h_n, c_n or None, cache).
    """
    xp = xp_of(x)
    masks = masks or [None] * spec.num_layers
    u = x
    layers, finals = [], []
    for k in range(spec.num_layers):
        outs, caches, states = [], [], []
        for d in range(spec.num_directions):
            idx = k * spec.num_directions + d
            p = layer_params(spec, params, k, d)
            out_d, state_d, cache_d = layer_forward(
                spec.cell, p, u, _state_at(spec, h0, c0, idx), valid, reverse=d == 1
            )
            outs.append(out_d)
            caches.append(cache_d)
            states.append(state_d)
        y = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)
        if spec.layer_residual(k):
            y = y + u if valid is None else (y + u) * valid
        if masks[k] is not None:
            y = y * masks[k]
        layers.append(caches)
        finals.append(states)
        u = y
    out = u
    if spec.residual == "stack":
        skip = x
        if spec.stack_residual_projected():
            skip = x @ params["residual_weight"].T + params["residual_bias"]
        out = out + skip if valid is None else (out + skip) * valid
    flat = [s for states in finals for s in states]
    if spec.cell.has_cell_state:
        h_n = xp.stack([s[0] for s in flat])
        c_n = xp.stack([s[1] for s in flat])
    else:
        h_n, c_n = xp.stack(flat), None
    return out, h_n, c_n, StackCache(x, valid, layers, masks)


def stack_backward(spec: StackSpec, params, cache, dout, dh_n, dc_n=None, recorder=None):
    """Backward through depth and time.

    ``dout`` (T, B, D·H_out), ``dh_n`` (L·D, B, H_out), ``dc_n`` (L·D, B, H) or None.
    Returns (∂x, ∂h0, ∂c0 or None, grads keyed by PyTorch names).
    ``recorder`` (optional) receives on_state_grad(k, d, t, dstate) for every step and
    on_input_grad(k, ∂u_k) for every layer: the gradient-flow instrumentation.
    """
    x, valid, layers, masks = cache
    xp = xp_of(dout)
    grads = {}
    H = spec.out_size
    dx_skip = None
    if spec.residual == "stack":
        if valid is not None:
            dout = dout * valid
        dx_skip = dout
        if spec.stack_residual_projected():
            grads["residual_weight"] = sum_outer(dout, x)
            grads["residual_bias"] = dout.sum(axis=(0, 1))
            dx_skip = dout @ params["residual_weight"]
    dh0 = xp.empty_like(dh_n)
    dc0 = None if dc_n is None else xp.empty_like(dc_n)
    dy = dout
    for k in range(spec.num_layers - 1, -1, -1):
        if masks[k] is not None:
            dy = dy * masks[k]
        if spec.layer_residual(k) and valid is not None:
            dy = dy * valid
        du = dy if spec.layer_residual(k) else None
        for d in range(spec.num_directions):
            idx = k * spec.num_directions + d
            dstate = (dh_n[idx], dc_n[idx]) if spec.cell.has_cell_state else dh_n[idx]
            record = None
            if recorder is not None:
                def record(t, ds, k=k, d=d):
                    recorder.on_state_grad(k, d, t, ds)
            dx_d, dstate0, g = layer_backward(
                spec.cell,
                layer_params(spec, params, k, d),
                layers[k][d],
                dy[..., d * H : (d + 1) * H],
                dstate,
                record,
            )
            if spec.cell.has_cell_state:
                dh0[idx], dc0[idx] = dstate0
            else:
                dh0[idx] = dstate0
            s = spec.suffix(k, d)
            for key, value in g.items():
                if value is not None and params.get(TORCH_PREFIX[key] + s) is not None:
                    grads[TORCH_PREFIX[key] + s] = value
            du = dx_d if du is None else du + dx_d
        if recorder is not None:
            recorder.on_input_grad(k, du)
        dy = du
    dx = dy if dx_skip is None else dy + dx_skip
    return dx, dh0, dc0, grads
