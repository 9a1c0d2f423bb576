"""Temporal Jacobians of the recurrence, through the engine's own single-step backward.

For one layer direction with its input held fixed, the carried state after step t is
s_t = (h_t) or (h_t, c_t) (LSTM), and s_t = F_t(s_{t−1}). This module measures

    J(ℓ) = ∂s_T / ∂s_{T−ℓ}        for every lag ℓ = 0 … T (ℓ = T: the initial state),

where T is the last step in the direction's processing order (for the reverse direction
"later" means earlier in time). Each example of the batch has its own J(ℓ) (the batch
rows do not interact), an S × S matrix with S the summed state width.

How it is computed: no autodiff. The cell's hand-written ``backward_step`` is linear in
the state gradient it is handed, so feeding it a unit vector e_j at s_T and walking the
steps back gives row j of every J(ℓ) at once (a vector–Jacobian product per step). The
S rows are run together by tiling the batch S times (in chunks, to bound the memory),
so a probe costs about S/B backward passes of the layer direction. The result is the
dense, exact (to rounding) Jacobian, assembled from the engine's own backward.

From J(ℓ):

- ``sigma``: the largest singular value of a block, by power iteration on JᵀJ (the
  matrices are small; ``power_sigma``), for the blocks
  ``"h"`` = ∂h_T/∂h_{T−ℓ} (the hidden path, c_{T−ℓ} held fixed), ``"c"`` = ∂c_T/∂c_{T−ℓ}
  (the LSTM's cell path, h_{T−ℓ} held fixed), ``"state"`` = the whole ∂s_T/∂s_{T−ℓ};
- ``frobenius``: ‖block‖_F;
- ``effective_memory(threshold)``: the first lag at which the batch-mean σ falls below
  ``threshold`` (J(0) = I has σ = 1, so the threshold is relative to lag 0); T + 1
  when it never does.

``python -m rnncore.gradflow probe …`` prints the table and writes a PNG of σ against lag
per layer (see ``rnncore.gradflow``). The test (tests/test_jacobian.py) compares J with a
dense central-difference Jacobian of the cell's forward steps (float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend
from .drivers.python_loop import PythonLoop, _at, time_order

DEFAULT_THRESHOLD = 1e-2


def _host(a):
    return np.asarray(backend.to_numpy(a))


def state_jacobians(cell, p, cache, max_bytes=64 << 20) -> np.ndarray:
    """J (T+1, B, S, S): J[ℓ, b] = ∂s_T/∂s_{T−ℓ} for example b (rows: the components of
    s_T, columns: those of s_{T−ℓ}; states concatenated in the cell's state order).

    ``cache`` is the layer direction's ``LayerCache`` from the reference driver; ``p`` its
    short-keyed parameters. Runs on the host in the cache's dtype.
    """
    x, inputs, reverse, state0, saved, dims = cache
    T, B = x.shape[:2]
    widths = cell.state_widths(dims)
    S = sum(widths)
    offsets = np.cumsum((0,) + tuple(widths))
    order = time_order(T, reverse)
    dtype = _host(saved["h"]).dtype
    p = {k: None if v is None else _host(v) for k, v in p.items()}
    saved = {k: _host(v) for k, v in saved.items() if v is not None}  # None: not kept
    state0 = tuple(_host(s) for s in state0)
    inputs = {k: None if v is None else _host(v) for k, v in inputs.items()}
    ops = PythonLoop("reference").ops(cell)
    J = np.zeros((T + 1, B, S, S), dtype)
    J[0] = np.eye(S, dtype=dtype)
    per_row = B * sum(saved[k].shape[-1] for k in saved) * 8 * 4 + 1
    chunk = max(1, min(S, max_bytes // per_row))
    grad_widths = cell.grad_widths(dims, p)
    for start in range(0, S, chunk):
        rows = list(range(start, min(S, start + chunk)))
        R = len(rows)

        def tile(a, R=R):
            return None if a is None else np.tile(a, (R,) + (1,) * (a.ndim - 1))

        # ds[i] (R·B, width_i): row r·B + b is the gradient of s_T[rows[r]] of example b
        ds = [np.zeros((R * B, w), dtype) for w in widths]
        for r, j in enumerate(rows):
            i = int(np.searchsorted(offsets, j, side="right") - 1)
            ds[i][r * B:(r + 1) * B, j - offsets[i]] = 1.0
        grads = {name: np.empty((R * B, w), dtype) for name, w in grad_widths.items()}
        for k in range(T - 1, -1, -1):
            t = order[k]
            prev = state0 if k == 0 else cell.state_at(saved, order[k - 1])
            prev = tuple(tile(s) for s in prev)
            step_saved = {name: tile(a) for name, a in _at(saved, t).items()}
            step_inputs = {name: tile(a) for name, a in _at(inputs, t).items()}
            dprev = [np.zeros((R * B, w), dtype) for w in widths]
            cell.backward_step(ops, p, tuple(ds), prev, step_inputs, step_saved, grads,
                               tuple(dprev))
            lag = T - k
            for i in range(len(widths)):
                block = dprev[i].reshape(R, B, widths[i]).transpose(1, 0, 2)
                J[lag, :, start:start + R, offsets[i]:offsets[i + 1]] = block
            ds = dprev
    return J


def power_sigma(A, iters=3000, tol=1e-14, seed=0) -> np.ndarray:
    """The largest singular value of each matrix of A (…, m, n) by power iteration on
    AᵀA (a fixed-seed random start; stops when the estimate changes by < tol relative)."""
    A = np.asarray(A, dtype=np.float64)
    lead = A.shape[:-2]
    A = A.reshape((-1,) + A.shape[-2:])
    v = np.random.default_rng(seed).standard_normal((A.shape[0], A.shape[-1]))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    sigma = np.zeros(A.shape[0])
    for _ in range(iters):
        u = np.einsum("nij,nj->ni", A, v)
        w = np.einsum("nij,ni->nj", A, u)
        new = np.sqrt(np.linalg.norm(w, axis=-1))
        norm = np.linalg.norm(w, axis=-1, keepdims=True)
        v = np.where(norm > 0, w / np.where(norm > 0, norm, 1.0), v)
        done = np.all(np.abs(new - sigma) <= tol * np.maximum(new, 1e-300))
        sigma = new
        if done:
            break
    return sigma.reshape(lead)


@dataclass
class LayerJacobian:
    """The temporal Jacobians of one layer direction."""

    k: int
    d: int
    widths: tuple
    J: np.ndarray  # (T+1, B, S, S)

    def block(self, name):
        """(T+1, B, ·, ·): "h" ∂h_T/∂h_{T−ℓ}, "c" ∂c_T/∂c_{T−ℓ}, "state" the whole."""
        if name == "state":
            return self.J
        i = {"h": 0, "c": 1}[name]
        if i >= len(self.widths):
            raise ValueError(f"this cell has no {name!r} state")
        lo = sum(self.widths[:i])
        hi = lo + self.widths[i]
        return self.J[:, :, lo:hi, lo:hi]

    def blocks(self):
        return ("h", "c", "state") if len(self.widths) > 1 else ("h",)

    def sigma(self, name="h") -> np.ndarray:
        """(T+1, B) largest singular value per lag and example (power iteration)."""
        memo = self.__dict__.setdefault("_sigma", {})
        if name not in memo:
            memo[name] = power_sigma(self.block(name))
        return memo[name]

    def frobenius(self, name="h") -> np.ndarray:
        """(T+1, B) Frobenius norm per lag and example."""
        return np.sqrt((self.block(name).astype(np.float64) ** 2).sum(axis=(-2, -1)))

    def effective_memory(self, name="h", threshold=DEFAULT_THRESHOLD) -> int:
        """The first lag whose batch-mean σ is below ``threshold`` (T+1 if none is)."""
        curve = self.sigma(name).mean(axis=1)
        below = np.nonzero(curve < threshold)[0]
        return int(below[0]) if below.size else len(curve)


def module_jacobians(module, x, hx=None, max_bytes=64 << 20) -> list:
    """Forward ``module`` on x (T, B, I) with the reference driver and return the
    ``LayerJacobian`` of every layer direction (layer-major). The module's own driver is
    put back afterwards; its gradients are not touched."""
    from .stack import layer_params

    driver = module.driver
    module.driver = PythonLoop("reference")
    try:
        module(x, hx)
    finally:
        module.driver = driver
    cache = module.last_cache
    out = []
    for k in range(module.num_layers):
        for d in range(module.num_directions):
            layer = cache.layers[k][d]
            p = layer_params(module.spec, module.params, k, d)
            widths = module.cell.state_widths(layer.dims)
            out.append(LayerJacobian(k, d, tuple(widths),
                                     state_jacobians(module.cell, p, layer, max_bytes)))
    return out


def format_table(results, threshold=DEFAULT_THRESHOLD, lags=(1, 2, 5, 10, 20, 50)) -> str:
    """One row per layer direction and block: batch-mean σ at some lags and the
    effective memory."""
    T = results[0].J.shape[0] - 1
    lags = [lag for lag in lags if lag <= T]
    head = f"{'layer':>5} {'dir':>3} {'block':6} " + " ".join(
        f"{'s@' + str(lag):>9}" for lag in lags) + f" {'memory':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        for name in r.blocks():
            s = r.sigma(name).mean(axis=1)
            lines.append(f"{r.k:>5} {'fr'[r.d]:>3} {name:6} "
                         + " ".join(f"{s[lag]:9.2e}" for lag in lags)
                         + f" {r.effective_memory(name, threshold):>7}")
    return "\n".join(lines)


def plot(results, path, title="", threshold=DEFAULT_THRESHOLD):
    """σ(∂h_T/∂h_{T−ℓ}) (solid) and σ(∂c_T/∂c_{T−ℓ}) (dashed) against lag, per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, r in enumerate(results):
        color = f"C{i % 10}"
        label = f"layer {r.k + 1}" + (" rev" if r.d else "")
        for name, style in (("h", "-"), ("c", "--")):
            if name in r.blocks():
                s = r.sigma(name).mean(axis=1)
                ax.plot(np.arange(len(s)), np.maximum(s, 1e-300), style, color=color,
                        label=f"{label} {'dh_T/dh_k' if name == 'h' else 'dc_T/dc_k'}")
    ax.axhline(threshold, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("lag T - k")
    ax.set_ylabel("largest singular value")
    ax.set_title(title or "temporal Jacobian", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)



# --------------------------------------------------------------------------- the CLI
def parse_args(argv):
    import argparse

    from . import cells, cli
    from .init import INITS

    ap = cli.Parser(prog="python -m rnncore.gradflow probe",
                    description="temporal Jacobian probe: the largest singular value of "
                                "dh_T/dh_k (and the LSTM's dc_T/dc_k) against the lag T-k, "
                                "per layer, and the effective memory",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="lstm", choices=cells.names())
    ap.add_argument("--layers", type=cli.at_least(1, 16), default=2)
    ap.add_argument("--hidden", type=cli.at_least(1, 256), default=None,
                    help="hidden width, also the input width (default 32; quick 8)")
    ap.add_argument("--T", type=cli.at_least(1, 2000), default=None,
                    help="sequence length (default 100; quick 20)")
    ap.add_argument("--batch", type=cli.at_least(1, 64), default=None,
                    help="batch (default 4; quick 2)")
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--init", default="pytorch", choices=INITS)
    ap.add_argument("--forget-bias", type=float, default=0.0)
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help="effective memory: the first lag whose mean sigma is below this")
    ap.add_argument("--seed", type=cli.at_least(0, 2**63 - 3), default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--out", default="gradflow_out", help="directory for the PNG")
    args = ap.parse_args(argv)
    sizes = {"hidden": 8, "T": 20, "batch": 2} if args.quick else \
        {"hidden": 32, "T": 100, "batch": 4}
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cli.make_out_dir(ap, "--out", args.out)
    return args


def main(argv=None):
    import os

    from .modules import Recurrent

    args = parse_args(argv)
    module = Recurrent(args.cell, args.hidden, args.hidden, num_layers=args.layers,
                       bidirectional=args.bidirectional, init=args.init,
                       forget_bias=args.forget_bias, dtype="float64", seed=args.seed)
    x = np.random.default_rng(args.seed + 1).standard_normal(
        (args.T, args.batch, args.hidden))
    results = module_jacobians(module, x)
    print(f"temporal Jacobian at initialisation: {args.cell} L={args.layers} H={args.hidden} "
          f"T={args.T} B={args.batch} init={args.init} forget_bias={args.forget_bias} "
          f"seed={args.seed} (float64)")
    print("s@l = batch-mean largest singular value of the block at lag l; memory = first "
          f"lag with s < {args.threshold:g}; blocks: h = dh_T/dh_k, c = dc_T/dc_k, "
          "state = the whole carried state")
    print(format_table(results, args.threshold))
    path = os.path.join(args.out, "jacobian_probe.png")
    plot(results, path, f"{args.cell} L={args.layers} H={args.hidden}, seed {args.seed}",
         args.threshold)
    print(f"wrote {path}")
    return results
