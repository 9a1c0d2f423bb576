"""Gradient flow through time and depth: an instrument for the engine's own backward pass.

The engine's ``module.backward(dout, recorder=rec)`` calls the recorder inside the manual
BPTT loop (the driver's ``backward`` / ``rnncore.stack.stack_backward``), so what is
measured is the gradient the engine really computes, not a second implementation:

    rec.on_state_grad(k, d, t, ∂L/∂s_t)   for layer k, direction d, step t
    rec.on_input_grad(k, ∂L/∂u_k)          for the input u_k of layer k (u_0 = x)

Here s_t is the carried state after step t: h_t (RNN, GRU) or the pair (h_t, c_t) (LSTM),
and ∂L/∂s_t is the *total* gradient arriving at it, from the output at t and from step
t+1. For the LSTM the pair is (∂L/∂h_t, ∂L/∂c_t) with h_t and c_t taken as the two
independent halves of the carried state (the ∂h ⊙ o ⊙ tanh'(c) term is added inside step
t's backward, not here), which is exactly what a perturbation of the carried c_t sees.

Norms are Frobenius norms over the batch and the features: ‖A‖ = (Σ_bj A_bj²)^½.

What this module adds around that hook:

- ``GradFlowRecorder``: the norms above, arranged as arrays (layer, direction, time).
- ``weight_grad_norms``: ‖∂L/∂W‖ for each parameter after a backward pass.
- ``gate_saturation``: the fraction of sigmoid gate values below 0.05 or above 0.95 in the
  last forward pass (LSTM i, f, o; GRU r, z), where σ'(a) = σ(1 − σ) < 0.0475 passes less
  than a fifth of the gradient the unsaturated gate (σ' = 0.25) would.
- ``probe``: one forward and backward with a fixed random linear loss
  L = Σ_t ⟨g_t, y_t⟩ (g_t ~ N(0, 1/(B·width)) at the last step only, or at every step),
  returning all of the above.
- ``python -m rnncore.gradflow probe …``: the temporal Jacobian probe
  (``rnncore.jacobian``): σ_max(∂h_T/∂h_k), the LSTM's ∂c_T/∂c_k, effective memory.
- ``python -m rnncore.gradflow``: a sweep over the registered cells, depths, residual
  paths, initialisers and initial states; prints a table and writes two PNGs (layer ×
  time heatmaps of log₁₀‖∂L/∂h_t‖, and the gradient reaching layer 1 against depth).

Recording is off unless a recorder is passed: with ``recorder=None`` the backward pass
runs exactly the same arithmetic (tested bitwise).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import backend, cells
from .modules import Recurrent

SATURATION_LOW, SATURATION_HIGH = 0.05, 0.95


def _norm(a) -> float:
    """Frobenius norm of any array, as a host float."""
    return float(backend.xp_of(a).sqrt((a * a).sum()))


class GradFlowRecorder:
    """Collects ‖∂L/∂h_t‖, ‖∂L/∂c_t‖ and ‖∂L/∂u_k‖ during ``module.backward``.

    ``keep=True`` also keeps a host copy of every state gradient (for tests and custom
    analyses): ``kept[(k, d, t)]`` is the tuple (∂L/∂h_t, …) in the cell's state order.
    """

    def __init__(self, keep: bool = False):
        self.keep = keep
        self.h: dict = {}  # (k, d, t) -> ‖∂L/∂h_t‖
        self.c: dict = {}  # (k, d, t) -> ‖∂L/∂c_t‖ (cells with a second state, the LSTM's c)
        self.inputs: dict = {}  # k -> ‖∂L/∂u_k‖
        self.kept: dict = {}

    # the two hooks the engine calls
    def on_state_grad(self, k, d, t, dstate):
        self.h[(k, d, t)] = _norm(dstate[0])
        if len(dstate) > 1:
            self.c[(k, d, t)] = _norm(dstate[1])
        if self.keep:
            self.kept[(k, d, t)] = tuple(backend.to_numpy(a).copy() for a in dstate)

    def on_input_grad(self, k, du):
        self.inputs[k] = _norm(du)

    # arranged results
    def _grid(self, table) -> np.ndarray:
        if not table:
            return np.zeros((0, 0, 0))
        L, D, T = (1 + max(key[i] for key in table) for i in range(3))
        grid = np.full((L, D, T), np.nan)
        for (k, d, t), value in table.items():
            grid[k, d, t] = value
        return grid

    def h_norms(self) -> np.ndarray:
        """‖∂L/∂h_t‖ as an array (layers, directions, time)."""
        return self._grid(self.h)

    def c_norms(self) -> np.ndarray:
        """‖∂L/∂c_t‖ as an array (layers, directions, time); empty for one-state cells."""
        return self._grid(self.c)

    def input_norms(self) -> np.ndarray:
        """‖∂L/∂u_k‖ for k = 0..L−1 (u_0 is the stack's input)."""
        return np.array([self.inputs[k] for k in sorted(self.inputs)])

    def layer_norms(self) -> np.ndarray:
        """The gradient at layer k's states, (Σ_{d,t} ‖∂L/∂h_t^{(k,d)}‖²)^½, per layer."""
        return np.sqrt(np.nansum(self.h_norms() ** 2, axis=(1, 2)))


def last_cache(module):
    """The ``StackCache`` of the module's last forward pass."""
    if module.last_cache is None:
        raise RuntimeError("no forward pass has been run on this module yet")
    return module.last_cache


def weight_grad_norms(grads: dict) -> dict:
    """‖∂L/∂W‖ for every entry of a gradients dict (e.g. ``module.grads``)."""
    return {name: _norm(g) for name, g in grads.items()}


def sigmoid_gates(module, k, d):
    """The activated sigmoid gates of layer k, direction d in the last forward pass.

    Returns an array (T, B, n·H), the cell's ``gate_views`` side by side: LSTM [i, f, o],
    GRU [r, z], RNN none (width 0).
    """
    layer = last_cache(module).layers[k][d]  # a LayerCache: the per-step buffers by name
    views = module.cell.gate_views(layer.saved, layer.dims)
    if not views:
        T, B = layer.x.shape[:2]
        return module.xp.zeros((T, B, 0))
    return module.xp.concatenate(list(views.values()), axis=-1)


def gate_saturation(module, low=SATURATION_LOW, high=SATURATION_HIGH) -> np.ndarray:
    """Fraction of sigmoid gate values < low or > high, per (layer, direction).

    NaN for the Elman RNN, which has no sigmoid gates.
    """
    out = np.full((module.num_layers, module.num_directions), np.nan)
    for k in range(module.num_layers):
        for d in range(module.num_directions):
            gates = sigmoid_gates(module, k, d)
            if gates.size:
                out[k, d] = float(((gates < low) | (gates > high)).mean())
    return out


@dataclass
class Probe:
    """Everything one instrumented forward/backward pass measured."""

    h: np.ndarray  # (L, D, T) ‖∂L/∂h_t‖
    c: np.ndarray  # (L, D, T) ‖∂L/∂c_t‖ (LSTM) or empty
    inputs: np.ndarray  # (L,) ‖∂L/∂u_k‖
    layers: np.ndarray  # (L,) gradient at each layer's states
    weights: dict = field(default_factory=dict)  # name -> ‖∂L/∂W‖
    saturation: np.ndarray = None  # (L, D) fraction of saturated sigmoid gates

    @property
    def time_ratio(self) -> float:
        """‖∂L/∂h_0‖ / ‖∂L/∂h_{T−1}‖ in the top layer, forward direction."""
        top = self.h[-1, 0]
        return float(top[0] / top[-1])

    @property
    def depth_ratio(self) -> float:
        """Gradient at the top layer's states over that at the bottom layer's."""
        return float(self.layers[-1] / self.layers[0])


def loss_direction(shape, loss, rng, dtype, device="cpu"):
    """∂L/∂y for L = Σ_t ⟨g_t, y_t⟩: g_t ~ N(0, 1/(B·width)) at the last step or all steps."""
    if loss not in ("last", "all"):
        raise ValueError(f"loss must be 'last' or 'all', got {loss!r}")
    T, B, W = shape
    g = rng.standard_normal(shape) / math.sqrt(B * W)
    if loss == "last":
        g[:-1] = 0.0
    return backend.to_device(g.astype(dtype), device)


def probe(module, x, hx=None, loss="last", seed=0) -> Probe:
    """Run one forward and one instrumented backward pass of ``module`` on x (T, B, I).

    The module's gradients are zeroed first and hold ∂L/∂W afterwards.
    """
    module.zero_grad()
    out = module(x, hx)[0]
    dout = loss_direction(out.shape, loss, np.random.default_rng(seed), module.dtype,
                          module.device)
    rec = GradFlowRecorder()
    module.backward(dout, recorder=rec)
    return Probe(rec.h_norms(), rec.c_norms(), rec.input_norms(), rec.layer_norms(),
                 weight_grad_norms(module.grads), gate_saturation(module))


# --------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class Config:
    cell: str
    depth: int
    residual: str
    init: str
    init_state: str

    @property
    def label(self) -> str:
        extra = "" if (self.init, self.init_state) == ("pytorch", "zeros") \
            else f" {self.init}/{self.init_state}"
        return f"{self.cell} L={self.depth} {self.residual}{extra}"


def make_module(config: Config, hidden, dtype, seed):
    """The module for a config; its input width equals ``hidden`` so every layer can be
    residual (``residual="layers"`` needs matching widths)."""
    residual = None if config.residual == "none" else config.residual
    return Recurrent(config.cell, hidden, hidden, num_layers=config.depth, residual=residual,
                     init=config.init, init_state=config.init_state, dtype=dtype, seed=seed)


def run_config(config: Config, T, batch, hidden, seed, loss="last", dtype="float64") -> Probe:
    """Probe one configuration on standard-normal inputs; deterministic given ``seed``."""
    module = make_module(config, hidden, dtype, seed)
    x = np.random.default_rng(seed + 1).standard_normal((T, batch, hidden)).astype(dtype)
    return probe(module, x, loss=loss, seed=seed + 2)


def sweep(configs, T, batch, hidden, seed, loss="last"):
    return [(c, run_config(c, T, batch, hidden, seed, loss)) for c in configs]


def format_table(results) -> str:
    head = (f"{'cell':9} {'L':>2} {'residual':8} {'init':10} {'state':7} "
            f"{'|dh_T| top':>10} {'t-ratio':>9} {'top/bot':>9} {'|dL/dx|':>9} {'sat':>5}")
    lines = [head, "-" * len(head)]
    for c, p in results:
        sat = np.nanmean(p.saturation) if np.isfinite(p.saturation).any() else float("nan")
        lines.append(f"{c.cell:9} {c.depth:>2} {c.residual:8} {c.init:10} {c.init_state:7} "
                     f"{p.h[-1, 0, -1]:10.3e} {p.time_ratio:9.2e} {p.depth_ratio:9.2e} "
                     f"{p.inputs[0]:9.2e} {sat:5.2f}")
    return "\n".join(lines)


def plot_heatmaps(results, path, title=""):
    """One layer × time image of log₁₀‖∂L/∂h_t‖ (forward direction) per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    logs = [np.log10(np.maximum(p.h[:, 0, :], 1e-300)) for _, p in results]
    finite = np.concatenate([g[np.isfinite(g)].ravel() for g in logs])
    vmin, vmax = max(finite.min(), finite.max() - 12), finite.max()
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 1, 1.6 * rows + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (c, _), g in zip(axes.ravel(), results, logs):
        L, T = g.shape
        im = ax.imshow(g, aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap="viridis",
                       interpolation="nearest", extent=(-0.5, T - 0.5, 0.5, L + 0.5))
        ax.set_title(c.label, fontsize=7)
        ax.set_yticks(range(1, L + 1) if L <= 4 else [1, L])
        ax.set_xlabel("t", fontsize=6, labelpad=0)
        ax.set_ylabel("layer", fontsize=6, labelpad=0)
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="log10 |dL/dh_t|", shrink=0.6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def plot_depth(results, path, title=""):
    """Gradient at layer 1's states against depth, plain (solid) vs residual (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    groups = {}
    for c, p in results:
        groups.setdefault((c.cell, c.residual, c.init, c.init_state), []).append(
            (c.depth, p.layers[0]))
    colors = {}
    for (cell, residual, init, state), points in sorted(groups.items()):
        points.sort()
        key = (cell, init, state)
        color = colors.setdefault(key, f"C{len(colors)}")
        label = cell if (init, state) == ("pytorch", "zeros") else f"{cell} {init}/{state}"
        ax.plot(*zip(*points), marker="o", color=color,
                linestyle="--" if residual != "none" else "-",
                label=f"{label} ({'residual' if residual != 'none' else 'plain'})")
    ax.set_yscale("log")
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("gradient reaching layer 1")
    ax.legend(fontsize=6)
    ax.set_title(title or "gradient at the bottom layer's states", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# the sizes of the full sweep and of --quick; a size flag given on the command line wins
# over both (``--quick --hidden 64`` is the quick sweep at H = 64)
FULL = {"T": 50, "batch": 16, "hidden": 64, "depths": [1, 2, 4, 8]}
QUICK = {"T": 12, "batch": 4, "hidden": 16, "depths": [1, 2, 4]}


def sweep_bytes(configs, T, batch, hidden) -> int:
    """A generous estimate of the memory one configuration of the sweep needs (float64):
    the input, every layer's saved per-step buffers and its parameters and gradients."""
    worst = 0
    for c in configs:
        G = cells.get(c.cell).num_gates
        per_layer = T * batch * hidden * (G + 6) + 2 * G * hidden * (2 * hidden + 2)
        worst = max(worst, c.depth * per_layer + 3 * T * batch * hidden)
    return 8 * worst


def parse_args(argv):
    if list(argv or [])[:1] == ["probe"]:  # the temporal Jacobian probe's own parser
        from . import jacobian

        return jacobian.parse_args(list(argv)[1:])
    from . import cli
    from .init import INIT_STATES, INITS

    ap = cli.Parser(prog="python -m rnncore.gradflow", description=__doc__.split("\n")[0],
                    epilog="--quick picks small sizes (T=12, batch 4, hidden 16, depths up to "
                           "4); --T, --batch, --hidden and --depths given explicitly win over "
                           "it.", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="all", type=cli.choice_list(cells.names, "all"),
                    help="comma list of registered cells, or all (default): "
                         + ",".join(cells.names()))
    ap.add_argument("--depths", default=None, type=cli.int_list(1, 64),
                    help="comma list of stack depths (default 1,2,4,8; quick 1,2,4)")
    ap.add_argument("--residual", default="none,layers",
                    type=cli.choice_list(("none", "layers", "stack")),
                    help="comma list of none,layers,stack (default none,layers)")
    ap.add_argument("--init", default="pytorch", type=cli.choice_list(INITS),
                    help=f"comma list of {','.join(INITS)}")
    ap.add_argument("--init-state", default="zeros", type=cli.choice_list(INIT_STATES),
                    help=f"comma list of {','.join(INIT_STATES)}")
    ap.add_argument("--T", type=cli.at_least(1), default=None,
                    help="sequence length (default 50; quick 12)")
    ap.add_argument("--batch", type=cli.at_least(1), default=None,
                    help="batch size (default 16; quick 4)")
    ap.add_argument("--hidden", type=cli.at_least(1), default=None,
                    help="hidden width, also the input width (default 64; quick 16)")
    ap.add_argument("--loss", choices=("last", "all"), default="last",
                    help="random linear loss on the last step only, or on every step")
    ap.add_argument("--seed", type=cli.at_least(0, 2**63 - 3), default=0)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes: runs in seconds (explicit size flags win)")
    ap.add_argument("--out", default="gradflow_out", help="directory for the PNGs")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, list) else value)
    args.configs = [Config(*v) for v in itertools.product(
        args.cells, args.depths, args.residual, args.init, args.init_state)]
    from .runconfig import gib, memory_limit

    need, limit = sweep_bytes(args.configs, args.T, args.batch, args.hidden), memory_limit()
    if need > limit:
        ap.error(f"--T {args.T} --batch {args.batch} --hidden {args.hidden} --depths "
                 f"{max(args.depths)} needs about {gib(need)}, more than the {gib(limit)} "
                 "allowed (RNNCORE_MEMORY_LIMIT sets the bound)")
    cli.make_out_dir(ap, "--out", args.out)  # last: nothing is created for a bad command
    return args


def main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["probe"]:  # the temporal Jacobian probe (rnncore.jacobian)
        from . import jacobian

        return jacobian.main(argv[1:])
    args = parse_args(argv)
    results = sweep(args.configs, args.T, args.batch, args.hidden, args.seed, args.loss)
    print(f"gradient flow at initialisation: T={args.T} B={args.batch} H={args.hidden} "
          f"loss={args.loss} seed={args.seed} (float64)")
    print("t-ratio = |dL/dh_0|/|dL/dh_T| (top layer); top/bot = gradient at top layer's "
          "states / bottom layer's; sat = saturated sigmoid gates")
    print(format_table(results))
    heat = os.path.join(args.out, "gradflow_heatmaps.png")
    depth = os.path.join(args.out, "gradflow_depth.png")
    plot_heatmaps(results, heat, f"log10 |dL/dh_t|, loss at {args.loss} step(s), "
                  f"seed {args.seed}")
    plot_depth(results, depth)
    print(f"wrote {heat} and {depth}")
    return results


if __name__ == "__main__":
    main()
