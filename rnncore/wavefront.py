"""Layer wavefront: layer l at step t alongside layer l+1 at step t−1.

A unidirectional stack of L layers over T steps is a grid of (layer, step) items. Item
(l, t) of the forward needs (l, t−1) (the recurrence) and (l−1, t) (its input), so all
items on one anti-diagonal l + t = w are independent of each other:

    wave 0: (0,0)
    wave 1: (0,1) (1,0)
    wave 2: (0,2) (1,1) (2,0)          ... L + T − 1 waves instead of L·T steps in a row

The backward runs the waves in the opposite order: item (l, t) needs (l, t+1) and
(l+1, t). A GPU runs a wave's items at once (forked streams in a captured graph, or one
batched GEMM per wave); that part needs a GPU and is not written yet. What is here is the
*schedule* and a *step program* that the NumPy (or CuPy) reference executes in any order:

    forward item (l, t):   u = x[t] (l = 0) or y_{l−1}[t]
                           x_g = b + u W_ihᵀ                      (a per-step input GEMM)
                           state_{l,t} = cell.forward_step(x_g, state_{l,t−1})
                           y_l[t] = mask_l[t] ⊙ (valid ⊙ (h_t (+ u, residual)))
    backward item (l, t):  G = ∂out[t] (l = L−1) or ∂u_{l+1}[t]
                           ∂y = mask ⊙ G (⊙ valid with the residual); ∂h = ∂y ⊙ valid
                           (+ ∂h_T at t = T−1) + R_l[t]
                           cell.backward_step(∂h, ∂rest_l[t+1]) → ∂z_t, R_l[t−1], ∂rest_l[t]
                           ∂u_l[t] = ∂z_t W_ih (+ ∂y, residual)
    after all waves:       ∂W_ih, ∂b, ∂W_hh… as the reference driver (one GEMM each)

Every item writes only its own step's slices (R_l[t−1], the gradient reaching h_{l,t−1}
through the recurrence, is a buffer of its own, not added into another item's), so the
items of a wave touch disjoint memory and their order within the wave cannot change a bit.
``run`` executes any schedule; the tests run the wavefront schedule, the layer-by-layer
schedule and shuffled waves on NaN-poisoned buffers and require identical bits, and compare
with ``stack_forward`` / ``stack_backward`` (to rounding: the input GEMM is per step here).
Every matrix product of an item goes through its layer's ``ops.gemm``, so that a GPU can
give each layer a stream (and a cuBLAS handle bound to it) and capture the waves
(``rnncore/drivers/wavefront_graph.py``).

Supported: unidirectional stacks, lengths masks, dropout masks between layers,
``residual="layers"``. A bidirectional layer needs all of its input before its reverse
direction starts, so it has no wavefront; ``residual="stack"`` is not written.
"""

from __future__ import annotations

import numpy as np

from .backend import gemm, sum_outer, xp_of
from .drivers.python_loop import StepOps, _at, _states_before_each_step
from .stack import layer_params


def wavefront(L, T):
    """The forward waves: wave w holds every (l, t) with l + t = w, layers in order."""
    return [[(l, w - l) for l in range(L) if 0 <= w - l < T] for w in range(L + T - 1)]


def layer_by_layer(L, T):
    """The sequential order (all of layer 0, then layer 1, …), one item per wave."""
    return [[(l, t)] for l in range(L) for t in range(T)]


def check_forward_schedule(waves, L, T):
    """Raise ValueError unless ``waves`` runs every item once, each after what it needs."""
    done = {}
    for w, wave in enumerate(waves):
        for l, t in wave:
            if (l, t) in done:
                raise ValueError(f"item {(l, t)} runs twice")
            for need in ((l, t - 1), (l - 1, t)):
                if min(need) >= 0 and done.get(need, w) >= w:
                    raise ValueError(f"item {(l, t)} in wave {w} runs before {need}")
        for item in wave:
            done[item] = w
    if len(done) != L * T:
        raise ValueError(f"{L * T - len(done)} items never run")


def _supported(spec):
    if spec.num_directions != 1:
        raise ValueError("a bidirectional stack has no layer wavefront")
    if spec.residual not in (None, "layers"):
        raise ValueError(f"the wavefront does not run residual={spec.residual!r}")


class StackRun:
    """Buffers of one stack forward + backward, and the step program over them.

    ``ops`` (optional): one ``StepOps`` per layer (pointwise functions and the GEMM its
    items use); by default the reference pointwise functions and ``backend.gemm``. The
    arrays given (x, state0, valid, masks) are read in place at every run: a caller that
    replays the program copies new values into them.
    """

    def __init__(self, spec, params, x, state0, valid=None, masks=None, ops=None):
        _supported(spec)
        self.spec, self.params, self.x, self.state0 = spec, params, x, state0
        self.valid, self.masks = valid, masks or [None] * spec.num_layers
        self.cell = spec.cell
        self.ops = ops or [StepOps(pw=self.cell.reference, gemm=gemm, buffers={})
                           for _ in range(spec.num_layers)]
        xp = xp_of(x)
        T, B, _ = x.shape
        L = spec.num_layers
        self.p = [layer_params(spec, params, l, 0) for l in range(L)]
        self.dims = [spec.dims(l) for l in range(L)]
        nan = np.nan

        def poisoned(shape):  # a value read before it is written shows up as NaN
            return xp.full(shape, nan, x.dtype)

        self.xg = [poisoned((T, B, self.p[l]["w_ih"].shape[0])) for l in range(L)]
        self.saved = []
        for l in range(L):
            prefill = self.cell.prefill(self.p[l])
            saved = {}
            for name, width in self.cell.saved_widths(self.dims[l], self.p[l]).items():
                saved[name] = poisoned((T, B, width))
                if name in prefill:
                    saved[name][...] = 0 if prefill[name] is None else prefill[name]
            self.saved.append(saved)
        self.y = [poisoned((T, B, spec.out_size)) for _ in range(L)]
        self.bias = [self.cell.input_bias(self.p[l]) for l in range(L)]

    def _mask(self, l, t):
        m = self.masks[l]
        return None if m is None else m[0 if m.shape[0] == 1 else t]

    def _valid(self, t):
        return None if self.valid is None else self.valid[t]

    # ----------------------------------------------------------------- forward
    def forward_item(self, l, t):
        cell, p, spec = self.cell, self.p[l], self.spec
        u = self.x[t] if l == 0 else self.y[l - 1][t]
        xg = self.xg[l][t]
        bias = self.bias[l]
        xg[...] = 0 if bias is None else bias
        self.ops[l].gemm(u, p["w_ih"], xg, transpose_b=True, beta=1.0)
        state_prev = tuple(s[l] for s in self.state0) if t == 0 else \
            cell.state_at(self.saved[l], t - 1)
        inputs = {"valid": self._valid(t)}
        cell.forward_step(self.ops[l], p, xg, state_prev, inputs, _at(self.saved[l], t))
        y = self.saved[l]["h"][t]
        valid = self._valid(t)
        y = y * valid if valid is not None else y.copy()
        if spec.layer_residual(l):
            y = y + u if valid is None else (y + u) * valid
        mask = self._mask(l, t)
        self.y[l][t] = y if mask is None else y * mask

    def forward(self, waves):
        """Run the forward items in ``waves`` order; (out, state_n) like stack_forward."""
        for wave in waves:
            for l, t in wave:
                self.forward_item(l, t)
        return self.forward_result()

    def forward_result(self):
        """(out, state_n) of the last forward: the top layer's output and every layer's
        final state, stacked (L, B, ·)."""
        xp = xp_of(self.x)
        T = self.x.shape[0]
        finals = [self.cell.state_at(self.saved[l], T - 1) for l in range(self.spec.num_layers)]
        state_n = tuple(xp.stack([f[i] for f in finals]) for i in range(len(self.cell.state)))
        return self.y[-1], state_n

    # ----------------------------------------------------------------- backward
    def start_backward(self, dout, dstate_n, need_dx=True):
        """The backward's buffers (NaN-poisoned) for ∂L/∂out ``dout`` and ∂L/∂state_T
        ``dstate_n``, which the items read in place (a replay copies new values in);
        ∂x (the first layer's ∂u) only when ``need_dx``."""
        self.need_dx = need_dx
        xp = xp_of(dout)
        T, B, _ = dout.shape
        L = self.spec.num_layers
        self.dout, self.dstate_n = dout, dstate_n

        def poisoned(shape):
            return xp.full(shape, np.nan, dout.dtype)

        H = self.spec.out_size
        widths = self.spec.state_widths()
        # rec_l[t]: the gradient reaching h_{l,t} through the recurrence (from step t+1);
        # rest_l[t+1]: the other state gradients reaching state_{l,t} (slot T: ∂state_T,
        # slot 0: ∂state_0)
        self.rec = [poisoned((T, B, H)) for _ in range(L)]
        self.rest = [[poisoned((T + 1, B, w)) for w in widths[1:]] for _ in range(L)]
        self.dh0 = [poisoned((B, H)) for _ in range(L)]
        self.dy = [poisoned((T, B, H)) for _ in range(L)]
        self.du = [poisoned((T, B, self.spec.layer_input_size(l))) for l in range(L)]
        self.grads = [{name: poisoned((T, B, width)) for name, width in
                       self.cell.grad_widths(self.dims[l], self.p[l]).items()} for l in range(L)]

    def backward_item(self, l, t):
        cell, p, spec = self.cell, self.p[l], self.spec
        T = self.x.shape[0]
        if t == T - 1:  # ∂L/∂ the other states after the last step, from dstate_n
            for i, buf in enumerate(self.rest[l]):
                buf[T] = self.dstate_n[i + 1][l]
        G = self.dout[t] if l == spec.num_layers - 1 else self.du[l + 1][t]
        valid = self._valid(t)
        mask = self._mask(l, t)
        dy = G if mask is None else G * mask
        if spec.layer_residual(l) and valid is not None:
            dy = dy * valid
        self.dy[l][t] = dy
        dh = dy * valid if valid is not None else dy.copy()
        if t == T - 1:
            dh += self.dstate_n[0][l]
        if t < T - 1:
            dh += self.rec[l][t]  # written by item (l, t+1)
        rec_prev = self.dh0[l] if t == 0 else self.rec[l][t - 1]
        rec_prev[...] = 0
        state_prev = tuple(s[l] for s in self.state0) if t == 0 else \
            cell.state_at(self.saved[l], t - 1)
        dstate = (dh,) + tuple(buf[t + 1] for buf in self.rest[l])
        dstate_prev = (rec_prev,) + tuple(buf[t] for buf in self.rest[l])
        cell.backward_step(self.ops[l], p, dstate, state_prev, {"valid": valid},
                           _at(self.saved[l], t), _at(self.grads[l], t), dstate_prev)
        if l == 0 and not self.need_dx:
            return  # ∂x is not asked for: the first layer's ∂u has no reader
        du = self.du[l][t]
        self.ops[l].gemm(self.grads[l]["dxg"][t], p["w_ih"], du)  # ∂u = ∂z W_ih
        if spec.layer_residual(l):
            du += dy

    def backward(self, waves):
        """Run the backward items in the *reverse* of ``waves`` (a forward schedule);
        returns (∂x, ∂state_0, grads by torch name) like stack_backward."""
        for wave in reversed(waves):
            for l, t in reversed(wave):
                self.backward_item(l, t)
        return self.backward_result()

    def backward_result(self):
        """(∂x, ∂state_0, grads by torch name) of the last backward; the weight gradients
        are one GEMM each over all steps (outside the items)."""
        xp = xp_of(self.dout)
        spec, cell = self.spec, self.cell
        torch = {p.key: p.torch for p in cell.params}
        grads = {}
        for l in range(spec.num_layers):
            p, saved, g = self.p[l], self.saved[l], self.grads[l]
            u = self.x if l == 0 else self.y[l - 1]
            dxg = g["dxg"]
            db = dxg.sum(axis=(0, 1))
            state0 = tuple(s[l] for s in self.state0)
            out = cell.weight_grads(p, saved, g, _states_before_each_step(saved["h"], state0,
                                                                          False), db)
            out["w_ih"] = sum_outer(dxg, u)
            out["b_ih"] = db
            for key, value in out.items():
                name = torch.get(key, "") + spec.suffix(l, 0)
                if value is not None and self.params.get(name) is not None:
                    grads[name] = value
        dstate0 = (xp.stack(self.dh0),) + tuple(
            xp.stack([self.rest[l][i][0] for l in range(spec.num_layers)])
            for i in range(len(cell.state) - 1))
        return (self.du[0] if self.need_dx else None), dstate0, grads
