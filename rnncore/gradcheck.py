"""Gradient checks: the hand-written backward against central finite differences.

The loss is a fixed random weighted sum of everything the forward returns,

    L = Σ W_out ⊙ out + Σ W_h ⊙ h_n (+ Σ W_c ⊙ c_n),

so ∂L/∂out = W_out, ∂L/∂h_n = W_h, ∂L/∂c_n = W_c go into ``backward``, and for any
tensor θ (a parameter, the input, an initial state) the analytic ∂L/∂θ is compared with

    ∂L/∂θ_i ≈ (L(θ + ε e_i) − L(θ − ε e_i)) / 2ε               (every element), or
    ⟨∂L/∂θ, v⟩ ≈ (L(θ + ε v) − L(θ − ε v)) / 2ε                (random unit directions v)

for tensors larger than ``max_elements``. The error of a tensor is the relative norm
‖analytic − numeric‖ / max(‖analytic‖, ‖numeric‖). The module's random generator is
rewound before every forward pass, so dropout masks and random initial states stay frozen.

    report = check_module_gradients(rnncore.LSTM(3, 4, dtype="float64"), x)
    report.max_error  # < 1e-6
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field

import numpy as np

from . import backend


@dataclass
class GradcheckReport:
    """Relative error per checked tensor, and how each was checked."""

    errors: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    def worst(self) -> str:
        return max(self.errors, key=self.errors.get) if self.errors else ""

    def table(self) -> str:
        rows = [f"{'tensor':<28} {'method':<12} rel. error"]
        rows += [f"{name:<28} {self.methods[name]:<12} {err:.2e}"
                 for name, err in self.errors.items()]
        return "\n".join(rows)


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0.0 else float(np.linalg.norm(a - b) / scale)


def central_difference(loss, array, index, eps=1e-6) -> float:
    """(L(θ + ε e_i) − L(θ − ε e_i)) / 2ε, perturbing ``array[index]`` in place and restoring
    it; ``loss`` is a zero-argument function that reads the array."""
    keep = array[index].copy()
    array[index] = keep + eps
    up = loss()
    array[index] = keep - eps
    down = loss()
    array[index] = keep
    return (up - down) / (2 * eps)


def _outputs(module, result):
    """Flatten (out, h_n) or (out, (h_n, c_n)) into a list of arrays."""
    out, state = result
    return [out] + (list(state) if isinstance(state, tuple) else [state])


def check_module_gradients(module, x, hx=None, lengths=None, *, eps=1e-6, max_elements=64,
                           directions=3, seed=0) -> GradcheckReport:
    """Check ∂L/∂(every parameter), ∂L/∂x and ∂L/∂hx of ``module`` (float64) at x, hx."""
    if module.dtype != np.float64:
        raise ValueError("gradient checks need a float64 module (dtype='float64')")
    xp = module.xp
    rng = np.random.default_rng(seed)
    rng_state = module.rng.get_state()

    def forward():
        module.rng.set_state(rng_state)
        return _outputs(module, module(x, hx, lengths))

    outputs = forward()
    weights = [backend.to_device(rng.standard_normal(o.shape), module.device) for o in outputs]

    def loss() -> float:
        return float(sum(float((w * o).sum()) for w, o in zip(weights, forward())))

    module.zero_grad()
    forward()
    dstate = None
    if len(weights) > 1:
        dstate = tuple(weights[1:]) if len(weights) == 3 else weights[1]
    dx, dhx = module.backward(weights[0], dstate)

    tensors = dict(module.params)
    analytic = {name: module.grads[name] for name in tensors}
    tensors["input"], analytic["input"] = x, dx
    if hx is not None:
        states = hx if isinstance(hx, tuple) else (hx,)
        dstates = dhx if isinstance(dhx, tuple) else (dhx,)
        for name, s, ds in zip(("h0 (given)", "c0 (given)"), states, dstates):
            tensors[name], analytic[name] = s, ds

    report = GradcheckReport()
    for name, tensor in tensors.items():
        grad = backend.to_numpy(analytic[name])
        if tensor.size <= max_elements:
            numeric = np.empty(tensor.shape)
            for i in np.ndindex(tensor.shape):
                numeric[i] = central_difference(loss, tensor, i, eps)
            report.errors[name] = _relative_error(grad, numeric)
            report.methods[name] = "elementwise"
        else:
            keep = tensor.copy()
            numeric, projected = [], []
            for _ in range(directions):
                v = rng.standard_normal(tensor.shape)
                v /= np.linalg.norm(v)
                v_dev = backend.to_device(v, module.device)
                tensor[...] = keep + eps * v_dev
                up = loss()
                tensor[...] = keep - eps * v_dev
                down = loss()
                tensor[...] = keep
                numeric.append((up - down) / (2 * eps))
                projected.append(float((grad * v).sum()))
            report.errors[name] = _relative_error(projected, numeric)
            report.methods[name] = f"{directions} dirs"
    del xp
    module.rng.set_state(rng_state)
    return report


# --------------------------------------------------------------------------- the matrix
def matrix_cells() -> dict:
    """Case name -> (registered cell, options): every registered cell, and each cell that
    takes a projection once more with one (``lstm+proj``)."""
    from . import cells

    table = {}
    for cell in cells.cells():
        table[cell.name] = (cell.name, {})
        if cell.projection:
            table[cell.name + "+proj"] = (cell.name, {"proj_size": 2})
    return table


@dataclass(frozen=True)
class MatrixCase:
    cell: str
    num_layers: int
    bidirectional: bool
    residual: str | None
    dropout_mode: str = "standard"
    regularised: bool = False  # every recurrent regulariser the cell takes, on
    return_states: str = "last"

    def label(self) -> str:
        extra = " +regularisers" if self.regularised else ""
        extra += " states=all" if self.return_states == "all" else ""
        return (f"{self.cell} L{self.num_layers} {'bi' if self.bidirectional else 'uni'} "
                f"res={self.residual} drop={self.dropout_mode}{extra}")


REGULARISER_RATE = 0.3


def matrix_cases(quick=False, cells=None, regularised=False, return_states="last"):
    """Cell × layers 1–3 × uni/bi × residual none/layers/stack (dropout, lengths, learned h0);
    ``regularised``: with every recurrent regulariser the cell takes on (rate 0.3, masks
    frozen); ``return_states="all"``: every step's state returned and given a gradient."""
    cells = tuple(matrix_cells()) if cells is None else cells
    layers = (1, 3) if quick else (1, 2, 3)
    for cell, L, bi, res in itertools.product(cells, layers, (False, True),
                                              (None, "layers", "stack")):
        yield MatrixCase(cell, L, bi, res, "variational" if (L + bi) % 2 else "standard",
                         regularised, return_states)


def regulariser_options(cell_name, options=None) -> dict:
    """{option: rate} of every recurrent regulariser the registered cell takes."""
    from . import cells

    proj = (options or {}).get("proj_size", 0)
    return {name: REGULARISER_RATE for name in cells.get(cell_name).regularisers(proj)}


def build_case(case: MatrixCase, hidden=3, input_size=3, seed=0, impl="reference"):
    """The module for a matrix case, float64, dropout on, learned initial states."""
    from .modules import Recurrent

    name, options = matrix_cells()[case.cell]
    if case.regularised:
        options = {**options, **regulariser_options(name, options)}
    if case.return_states != "last":
        options = {**options, "return_states": case.return_states}
    module = Recurrent(name, input_size, hidden, num_layers=case.num_layers,
                       bidirectional=case.bidirectional, dropout=0.3, residual=case.residual,
                       dropout_mode=case.dropout_mode, init_state="learned", dtype="float64",
                       seed=seed, impl=impl, **options)
    # learned initial states start random: a zero state hides errors in the terms it
    # multiplies, and is a degenerate point of a normalisation (its curvature there
    # swamps central differences)
    rng = np.random.default_rng(seed + 1)
    for state in module.cell.state:
        values = module.params[state + "0"]
        values[...] = 0.5 * rng.standard_normal(values.shape)
    return module


def run_case(case: MatrixCase, T=4, B=3, seed=0, impl="reference",
             **check_options) -> GradcheckReport:
    """Gradient-check one matrix case with lengths given (one sequence shorter than T)."""
    module = build_case(case, seed=seed, impl=impl)
    x = np.random.default_rng(seed).standard_normal((T, B, module.input_size))
    lengths = [T, max(1, T - 2), T - 1][:B]
    return check_module_gradients(module, x, lengths=lengths, seed=seed, **check_options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="layers 1 and 3 only")
    choices = matrix_cells()
    parser.add_argument("--cells", default=",".join(choices),
                        help=f"comma-separated subset of {', '.join(choices)}")
    parser.add_argument("--impl", default="reference", choices=("reference", "fused"),
                        help="the pointwise functions to check (fused: the kernels)")
    parser.add_argument("--localise", action="store_true",
                        help="run the fused kernels (CPU emulation), the reference and "
                             "finite differences on one module and report the first "
                             "(layer, direction, step, gate, unit) where they disagree "
                             "(rnncore.localise); --cells picks the cell (first given)")
    parser.add_argument("--T", type=int, default=6, help="--localise: steps")
    parser.add_argument("--layers", type=int, default=2, help="--localise: layers")
    args = parser.parse_args(argv)
    if args.localise:
        return _localise_main(args, parser)
    cells = tuple(args.cells.split(","))
    unknown = [c for c in cells if c not in choices]
    if unknown:
        parser.error(f"unknown cell(s) {unknown}; choose from {list(choices)}")
    worst = 0.0
    print(f"{'case':<48} {'max rel. error':>14}  worst tensor")
    for case in matrix_cases(args.quick, cells):
        report = run_case(case, impl=args.impl)
        worst = max(worst, report.max_error)
        print(f"{case.label():<48} {report.max_error:>14.2e}  {report.worst()}")
    print(f"\nworst over the matrix: {worst:.2e} ({'PASS' if worst < 1e-6 else 'FAIL'} at 1e-6)")
    return 0 if worst < 1e-6 else 1


def _localise_main(args, parser):
    from . import cells as registry
    from .localise import localise
    from .modules import Recurrent

    name = args.cells.split(",")[0] if args.cells != ",".join(matrix_cells()) else "lstm"
    if name not in registry.names() or not registry.get(name).kernels:
        parser.error(f"--localise needs a cell with fused kernels, got {name!r}")
    module = Recurrent(name, 3, 4, num_layers=args.layers, bidirectional=True,
                       dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((args.T, 2, 3))
    report = localise(module, x)
    print(f"localise: {name}, {args.layers} layers, bidirectional, T={args.T}, B=2, H=4 "
          "(float64; fused = the kernels' CPU emulation off a GPU)")
    print(report)
    return 0 if report.divergence is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
