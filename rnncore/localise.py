"""Divergence localiser: where, exactly, do the fused kernels, the reference and finite
differences part ways? (``python -m rnncore.gradcheck --localise``)

One float64 module and input, one fixed random loss L = Σ ⟨W, out⟩ + Σ ⟨V, s_T⟩. The
same parameters run twice through the stack: with the reference pointwise functions and
with the fused kernels (on the CPU: their emulation, ``rnncore.fused``). Through a thin
proxy of the cell, every step of both runs is logged:

- forward: the step's saved buffers (the LSTM's activated gates, c_t, h_t, …);
- backward: the state gradient reaching the step, ∂L/∂s_t, and the gate pre-activation
  gradient ∂z_t (``grads["dxg"]``) the step writes.

The two logs are compared in execution order (forward: layer by layer, each direction's
steps in its processing order; backward: top layer first, steps in backward order) and
the first entry whose elements differ by more than ``tol`` relative to the entry's
scale is reported as (pass, layer, direction, step, buffer, gate, unit, batch row). A
forward divergence is reported first (the backward reads what the forward saved).

At the place found (or, when the two agree, at a few random places) central finite
differences decide which one is right: ∂L/∂z_t[b, j] is measured by adding ±ε to that
pre-activation inside the forward step (the hoisted input projection of step t), and
∂L/∂s_t[b, j] by adding ±ε to the state the step returns. The reference is trusted only
where finite differences agree with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import drivers, fused
from .drivers.python_loop import time_order
from .stack import stack_backward, stack_forward

TOL = 1e-8


class _Proxy:
    """Forwards everything to ``cell``; logs each step and can perturb one."""

    def __init__(self, cell, owners):
        self._cell = cell
        self._owners = owners  # id(p["w_ih"]) -> (k, d)
        self.fwd, self.bwd = [], []
        self.where = None  # the current (k, d, t) of the backward (set by the recorder)
        self.step = {}  # (k, d) -> forward step counter
        self.perturb = None  # ("z" | state index, k, d, t, b, j, eps)

    def __getattr__(self, name):
        return getattr(self._cell, name)

    def forward_step(self, ops, p, xg, state_prev, inputs, saved):
        k, d = self._owners[id(p["w_ih"])]
        n = self.step.get((k, d), 0)
        self.step[(k, d)] = n + 1
        t = self._orders[(k, d)][n]
        pert = self.perturb
        if pert is not None and pert[0] == "z" and pert[1:4] == (k, d, t):
            xg = xg.copy()
            xg[pert[4], pert[5]] += pert[6]
        state = self._cell.forward_step(ops, p, xg, state_prev, inputs, saved)
        if pert is not None and pert[0] != "z" and pert[1:4] == (k, d, t):
            # the state the step returns is (a view of) the saved buffer: the output
            # and the next step both see the perturbation
            state[pert[0]][pert[4], pert[5]] += pert[6]
        self.fwd.append(((k, d, t), {name: np.array(a) for name, a in saved.items()}))
        return state

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        k, d, t = self.where
        logged = {f"d{s}": np.array(a) for s, a in zip(self._cell.state, dstate)}
        self._cell.backward_step(ops, p, dstate, state_prev, inputs, saved, grads,
                                 dstate_prev)
        logged["dz"] = np.array(grads["dxg"])
        self.bwd.append(((k, d, t), logged))


class _Where:
    def __init__(self, proxy):
        self.proxy = proxy

    def on_state_grad(self, k, d, t, dstate):
        self.proxy.where = (k, d, t)

    def on_input_grad(self, k, du):
        pass


@dataclass
class Divergence:
    """The first place two runs differ (None fields where they do not apply)."""

    stage: str  # "forward" or "backward"
    layer: int
    direction: int
    step: int
    buffer: str  # the saved buffer (forward) or "dz", "dh", "dc" (backward)
    gate: str | None
    unit: int
    row: int
    reference: float
    fused: float
    error: float
    fd: float | None = None  # the central difference at that place (dz, dh, dc)
    verdict: str = ""

    def __str__(self):
        where = (f"{self.stage}: layer {self.layer}, direction "
                 f"{'forward' if self.direction == 0 else 'reverse'}, step {self.step}, "
                 f"{self.buffer}" + (f" gate {self.gate}" if self.gate else "")
                 + f" unit {self.unit}, batch row {self.row}")
        vals = f"reference {self.reference:.10g}, fused {self.fused:.10g}"
        fd = "" if self.fd is None else f", finite differences {self.fd:.10g}"
        return f"{where}: {vals}{fd} (relative error {self.error:.2e}){self.verdict}"


@dataclass
class LocaliseReport:
    divergence: Divergence | None
    checked: int  # how many logged entries were compared
    spot: list = field(default_factory=list)  # (place, reference, fd) spot checks

    def __str__(self):
        if self.divergence is None:
            lines = [f"fused and reference agree at all {self.checked} logged step buffers"]
        else:
            lines = [f"first divergence: {self.divergence}"]
        for place, ref, fdv in self.spot:
            lines.append(f"  finite differences at {place}: reference {ref:.10g}, "
                         f"fd {fdv:.10g}")
        return "\n".join(lines)


def _gate_of(cell, name, width_idx, width, H):
    """The gate a column of a buffer belongs to ("gates", "dz", "hg": G·H wide)."""
    G = cell.num_gates
    if G and width == G * H and name in ("gates", "dz", "hg", "xg"):
        return cell.gates[width_idx // H], width_idx % H
    return None, width_idx


class _Run:
    """The module's stack run with a logging proxy, reference or fused pointwise."""

    def __init__(self, module, driver, x, state0, dout, dstate_n):
        self.module, self.driver = module, driver
        self.x, self.state0, self.dout, self.dstate_n = x, state0, dout, dstate_n
        spec = module.spec
        owners = {}
        orders = {}
        T = x.shape[0]
        from .stack import layer_params

        for k in range(spec.num_layers):
            for d in range(spec.num_directions):
                owners[id(layer_params(spec, module.params, k, d)["w_ih"])] = (k, d)
                orders[(k, d)] = time_order(T, d == 1)
        self.owners, self.orders = owners, orders

    def proxy(self):
        p = _Proxy(self.module.cell, self.owners)
        p._orders = self.orders
        return p

    def loss(self, perturb=None):
        proxy = self.proxy()
        proxy.perturb = perturb
        spec = dataclasses.replace(self.module.spec, cell=proxy)
        out, state_n, _ = stack_forward(spec, self.driver, self.module.params, self.x,
                                        self.state0)
        return float((out * self.dout).sum()
                     + sum((s * w).sum() for s, w in zip(state_n, self.dstate_n)))

    def logs(self):
        proxy = self.proxy()
        spec = dataclasses.replace(self.module.spec, cell=proxy)
        out, state_n, cache = stack_forward(spec, self.driver, self.module.params, self.x,
                                            self.state0)
        stack_backward(spec, self.driver, self.module.params, cache, self.dout,
                       self.dstate_n, _Where(proxy))
        return proxy.fwd, proxy.bwd


def _first(cell, H, ref_log, fused_log, tol, stage):
    checked = 0
    for (place, ref), (place2, fus) in zip(ref_log, fused_log):
        assert place == place2
        for name in ref:
            a, b = ref[name], fus.get(name)
            if any(v is None or v.dtype == object for v in (a, b)):
                continue  # a buffer one side does not keep (the reference LSTM's h_g)
            checked += 1
            scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
            err = np.abs(a - b) / scale
            if err.max() > tol:
                row, col = np.unravel_index(int(np.argmax(err)), err.shape)
                gate, unit = _gate_of(cell, name, col, a.shape[-1], H)
                return Divergence(stage, *place, name, gate, int(unit), int(row),
                                  float(a[row, col]), float(b[row, col]),
                                  float(err.max())), checked
    return None, checked


def _fd(run, kind, place, row, col, eps=1e-6):
    k, d, t = place
    up = run.loss((kind, k, d, t, row, col, eps))
    down = run.loss((kind, k, d, t, row, col, -eps))
    return (up - down) / (2 * eps)


def localise(module, x, hx=None, seed=0, tol=TOL, spot_checks=3) -> LocaliseReport:
    """Run the reference and the fused pointwise functions on ``module`` (float64) and x
    (T, B, I); return the first divergence, judged by finite differences."""
    if module.dtype != np.float64:
        raise ValueError("localise needs a float64 module")
    if not module.cell.kernels:
        raise ValueError(f"the {module.cell.name} cell has no fused kernels to compare")
    rng = np.random.default_rng(seed)
    xp = module.xp
    x = xp.asarray(x, dtype=np.float64)
    T, B, _ = x.shape
    LD = module.num_layers * module.num_directions
    widths = module.spec.state_widths()
    state0 = tuple(xp.zeros((LD, B, w)) for w in widths) if hx is None else hx
    out_w = module.spec.out_size * module.num_directions
    dout = xp.asarray(rng.standard_normal((T, B, out_w)))
    dstate_n = tuple(xp.asarray(rng.standard_normal((LD, B, w))) for w in widths)
    ref = _Run(module, drivers.PythonLoop("reference"), x, state0, dout, dstate_n)
    fus = _Run(module, drivers.PythonLoop("fused", fused.launcher_for(module.device,
                                                                      module.dtype)),
               x, state0, dout, dstate_n)
    rf, rb = ref.logs()
    ff, fb = fus.logs()
    H = module.hidden_size
    div, n1 = _first(module.cell, H, rf, ff, tol, "forward")
    n2 = 0
    if div is None:
        div, n2 = _first(module.cell, H, rb, fb, tol, "backward")
    report = LocaliseReport(div, n1 + n2)
    if div is not None and div.stage == "backward":
        kind = "z" if div.buffer == "dz" else module.cell.state.index(div.buffer[1:])
        col = div.unit if div.gate is None else \
            module.cell.gates.index(div.gate) * H + div.unit
        div.fd = _fd(ref, kind, (div.layer, div.direction, div.step), div.row, col)
        scale = max(abs(div.reference), abs(div.fused), abs(div.fd), 1e-12)
        ref_ok = abs(div.reference - div.fd) <= 1e-5 * scale
        fus_ok = abs(div.fused - div.fd) <= 1e-5 * scale
        div.verdict = (" -> the fused kernel is wrong here" if ref_ok and not fus_ok else
                       " -> the reference is wrong here" if fus_ok and not ref_ok else
                       " -> neither matches finite differences")
    elif div is not None:
        div.verdict = " (forward: the two compute different values; no derivative involved)"
    else:
        for _ in range(spot_checks):
            i = int(rng.integers(len(rb)))
            place, logged = rb[i]
            row = int(rng.integers(B))
            col = int(rng.integers(logged["dz"].shape[-1]))
            report.spot.append(((place, "dz", row, col), float(logged["dz"][row, col]),
                                _fd(ref, "z", place, row, col)))
    return report
