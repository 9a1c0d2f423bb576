"""Depth: layers and directions, residual paths, dropout between layers, final states.

For layer k with input u_k (u_0 = x) and directions d ∈ {forward, reverse}:

    y_k = [RNN_k^fwd(u_k) ; RNN_k^rev(u_k)]               (concatenated features)
    y_k ← y_k + u_k       residual="layers", where the widths of y_k and u_k match
    u_{k+1} = m_k ⊙ y_k   dropout mask m_k (inverted, 1/(1−p) or 0) for k < L−1, training
    out = y_{L−1} (+ x, or + x W_resᵀ + b_res when widths differ, for residual="stack")

The recurrent regularisers arrive as masks the module drew, one dict per layer direction:
``step_masks[k·D + d]`` {input name: (T, B, W)} joins the per-step ``inputs`` the driver
hands the cell (zoneout, recurrent dropout: ``rnncore.cells.regularise``), and
``weight_masks[k·D + d]`` {parameter key: mask} multiplies those parameters for the whole
pass (weight-drop, DropConnect on W_hh): forward and backward use W ⊙ M, and
∂L/∂W = M ⊙ ∂L/∂(W ⊙ M). Nothing here names a cell or a regulariser.

Padded steps (``valid`` false) give zeros at every layer's output, residual included.
Backward runs the same path in reverse: the residual adds its gradient to the layer's
input gradient, the mask multiplies the gradient, and the directions' input gradients add.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

from .backend import sum_outer, xp_of
from .cells.base import Dims


@dataclass(frozen=True)
class StackSpec:
    """The shape of a stack; ``cell`` is a cell declaration (``rnncore.cells``)."""

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

    def dims(self, k: int) -> Dims:
        return Dims(self.layer_input_size(k), self.hidden_size, self.proj_size)

    def state_widths(self) -> tuple:
        """The width of each state tensor of the cell (h first)."""
        return self.cell.state_widths(self.dims(0))

    def suffix(self, k: int, d: int) -> str:
        return f"_l{k}" + ("_reverse" if d == 1 else "")

    def layer_residual(self, k: int) -> bool:
        width = self.out_size * self.num_directions
        return self.residual == "layers" and self.layer_input_size(k) == width

    def stack_residual_projected(self) -> bool:
        return self.residual == "stack" and self.input_size != self.out_size * self.num_directions


def parameter_shapes(spec: StackSpec) -> dict:
    """PyTorch's parameter names and shapes, in torch.nn's order, with the init rule of
    each: {name: (shape, rule)}."""
    rules = {p.key: p.init for p in spec.cell.params}
    torch = {p.key: p.torch for p in spec.cell.params}
    shapes = {}
    for k in range(spec.num_layers):
        for d in range(spec.num_directions):
            s = spec.suffix(k, d)
            for key, shape in spec.cell.param_shapes(spec.dims(k), spec.bias).items():
                shapes[torch[key] + s] = (shape, rules[key])
    if spec.stack_residual_projected():
        width = spec.out_size * spec.num_directions
        shapes["residual_weight"] = ((width, spec.input_size), "residual")
        shapes["residual_bias"] = ((width,), "residual")
    return shapes


def parameter_count(spec: StackSpec) -> int:
    """How many values ``parameter_shapes`` would hold, in closed form (layers above the
    first are all alike), so a huge spec can be sized without listing it."""
    def size(k):
        shapes = spec.cell.param_shapes(spec.dims(k), spec.bias).values()
        return sum(math.prod(shape) for shape in shapes)

    upper = size(1) if spec.num_layers > 1 else 0
    count = spec.num_directions * (size(0) + (spec.num_layers - 1) * upper)
    if spec.stack_residual_projected():
        width = spec.out_size * spec.num_directions
        count += width * spec.input_size + width
    return count


def layer_params(spec: StackSpec, params: dict, k: int, d: int) -> dict:
    """The short-keyed view (w_ih, w_hh, …) of layer k, direction d."""
    s = spec.suffix(k, d)
    return {p.key: params.get(p.torch + s) for p in spec.cell.params}


class StackCache(NamedTuple):
    x: object  # the input where the backward reads it (a projected stack residual), else an
    #            empty (T, B, 0) array: the layers keep what they need of it
    valid: object
    layers: list  # [k][d] LayerCache (rnncore.drivers)
    masks: list  # [k] dropout mask or None
    step_masks: list | None = None  # [k·D + d] {step input name: (T, B, W) mask}
    weight_masks: list | None = None  # [k·D + d] {parameter key: mask}


def masked_params(spec: StackSpec, params: dict, k: int, d: int, weight_masks) -> dict:
    """``layer_params`` with the weight-drop masks of layer k, direction d applied."""
    p = layer_params(spec, params, k, d)
    if weight_masks is not None:
        for key, mask in weight_masks[k * spec.num_directions + d].items():
            p[key] = p[key] * mask
    return p


def all_states(spec: StackSpec, cache: StackCache) -> tuple:
    """Every layer direction's state after every step, a tuple in the cell's state order,
    each (L·D, T, B, width): what ``return_states="all"`` returns."""
    xp = xp_of(cache.x)
    return tuple(xp.stack([layer.saved[name] for caches in cache.layers for layer in caches])
                 for name in spec.cell.state)


def stack_forward(spec: StackSpec, driver, params, x, state0, valid=None, masks=None,
                  step_masks=None, weight_masks=None):
    """x (T, B, I); state0 a tuple in the cell's state order, each (L·D, B, width);
    valid (T, B, 1) or None; the regularisers' masks as in the module docstring.
    Returns (out (T, B, D·H_out), state_n tuple, cache). A driver that runs whole stacks
    (``runs_stack``: the wavefront, rnncore/drivers/wavefront_graph.py) takes the stacks
    it runs; the others go layer by layer through ``driver.forward``.
    """
    runs_stack = getattr(driver, "runs_stack", None)
    if runs_stack is not None and runs_stack(spec, step_masks, weight_masks):
        return driver.stack_forward(spec, params, x, state0, valid, masks)
    xp = xp_of(x)
    masks = masks or [None] * spec.num_layers
    u = x
    layers, finals = [], []
    protects = getattr(driver, "protects_cache", False)  # and may skip copies between layers
    for k in range(spec.num_layers):
        outs, caches, states = [], [], []
        internal = {"input_is_internal": k > 0, "output_is_internal": k < spec.num_layers - 1} \
            if protects else {}
        for d in range(spec.num_directions):
            idx = k * spec.num_directions + d
            p = masked_params(spec, params, k, d, weight_masks)
            inputs = {"valid": valid, **(step_masks[idx] if step_masks else {})}
            out_d, state_d, cache_d = driver.forward(
                spec.cell, p, u, tuple(s[idx] for s in state0), inputs, reverse=d == 1,
                **internal)
            outs.append(out_d)
            caches.append(cache_d)
            states.append(state_d)
        y = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)
        if spec.layer_residual(k):
            y = y + u if valid is None else (y + u) * valid
        if masks[k] is not None:
            y = y * masks[k]
        layers.append(caches)
        finals.extend(states)
        u = y
    out = u
    if spec.residual == "stack":
        skip = x
        if spec.stack_residual_projected():
            skip = x @ params["residual_weight"].T + params["residual_bias"]
        out = out + skip if valid is None else (out + skip) * valid
    state_n = tuple(xp.stack([s[i] for s in finals]) for i in range(len(spec.cell.state)))
    kept_x = x if spec.stack_residual_projected() else xp.empty(x.shape[:2] + (0,), x.dtype)
    return out, state_n, StackCache(kept_x, valid, layers, masks, step_masks, weight_masks)


def stack_backward(spec: StackSpec, driver, params, cache, dout, dstate_n, recorder=None,
                   input_grad=True, interventions=None, dstates_all=None, accumulate_into=None):
    """Backward through depth and time.

    ``dout`` (T, B, D·H_out), ``dstate_n`` a tuple like the state, each (L·D, B, width).
    Returns (∂x, ∂state_0 tuple, grads keyed by PyTorch names); ∂x is None, and the work
    that only it needs is skipped, when not ``input_grad``.
    ``recorder`` (optional) receives on_state_grad(k, d, t, dstate) for every step (dstate a
    tuple in the cell's state order) and on_input_grad(k, ∂u_k) for every layer: the
    gradient-flow instrumentation; a recorder with on_output_grad(k, ∂y_k) also gets the
    gradient at each layer's output (``rnncore.attribution``).
    gradient-flow instrumentation. ``dstates_all`` (optional) is the gradient reaching
    every step's state, a tuple like the state, each (L·D, T, B, width) (``all_states``).
    ``accumulate_into`` (optional, {PyTorch name: array}): gradient totals that a driver
    able to (``accumulates_grads``) adds its weight gradients into directly; those names
    are then left out of the returned grads (the caller's sum without a temporary).
    """
    if getattr(cache, "entry", None) is not None and recorder is None \
            and interventions is None and dstates_all is None:
        return driver.stack_backward(spec, params, cache, dout, dstate_n, input_grad)
    x, valid, layers, masks, _, weight_masks = cache
    xp = xp_of(dout)
    grads = {}
    torch = {p.key: p.torch for p in spec.cell.params}
    H = spec.out_size
    dx_skip = None
    if spec.residual == "stack":
        if valid is not None:
            dout = dout * valid
        dx_skip = dout
        if spec.stack_residual_projected():
            grads["residual_weight"] = sum_outer(dout, x)
            grads["residual_bias"] = dout.sum(axis=(0, 1))
            dx_skip = dout @ params["residual_weight"] if input_grad else None
    dstate0 = tuple(xp.empty_like(d) for d in dstate_n)
    if weight_masks is not None or not getattr(driver, "accumulates_grads", False):
        accumulate_into = None  # masked weights' gradients are scaled after the driver's
    dy = dout
    for k in range(spec.num_layers - 1, -1, -1):
        if masks[k] is not None:
            dy = dy * masks[k]
        if spec.layer_residual(k) and valid is not None:
            dy = dy * valid
        du = dy if spec.layer_residual(k) else None
        if recorder is not None and hasattr(recorder, "on_output_grad"):
            recorder.on_output_grad(k, dy)  # ∂L/∂y_k as the layer's cells receive it
        for d in range(spec.num_directions):
            idx = k * spec.num_directions + d
            record = None
            if recorder is not None:
                def record(t, ds, k=k, d=d):
                    recorder.on_state_grad(k, d, t, ds)
            need_dx = input_grad or k > 0
            extra = {} if interventions is None else {"interventions": interventions}
            backward_options = {}
            if dstates_all is not None:
                backward_options["dstates_all"] = tuple(ds[idx] for ds in dstates_all)
            s = spec.suffix(k, d)
            if accumulate_into is not None:
                backward_options["accumulate_into"] = {
                    key: accumulate_into.get(name + s) for key, name in torch.items()}
            dx_d, dstate0_d, g = driver.backward(
                spec.cell,
                masked_params(spec, params, k, d, weight_masks),
                layers[k][d],
                dy[..., d * H : (d + 1) * H],
                tuple(ds[idx] for ds in dstate_n),
                record,
                need_dx,
                **extra,
                **backward_options,
            )
            if weight_masks is not None:
                for key, mask in weight_masks[idx].items():
                    g[key] = g[key] * mask
            for total, part in zip(dstate0, dstate0_d):
                total[idx] = part
            for key, value in g.items():
                name = torch.get(key, "") + s
                if value is not None and params.get(name) is not None:
                    grads[name] = value
            if need_dx:
                du = dx_d if du is None else du + dx_d
        if recorder is not None and du is not None:
            recorder.on_input_grad(k, du)
        dy = du
    if not input_grad:
        return None, dstate0, grads
    dx = dy if dx_skip is None else dy + dx_skip
    return dx, dstate0, grads
