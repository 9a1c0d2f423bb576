"""What the notebooks share: one figure style, showing rnncore's own source, timers.

Runs without IPython too (``show_*`` then print), so a notebook's source file also runs
as a plain script, e.g. on a GPU machine that has no Jupyter.
"""

import inspect
import statistics
import textwrap

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np


def _show_markdown(text):
    try:
        from IPython.display import Markdown, display
    except ImportError:
        print(text)
        return
    display(Markdown(text))


def setup():
    """Small, light figures (inline PNG at 80 dpi) so the committed notebooks stay small."""
    plt.rcParams.update({
        "figure.dpi": 80,
        "savefig.dpi": 80,
        "figure.figsize": (6.4, 3.2),
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "image.cmap": "viridis",
    })
    matplotlib.set_loglevel("warning")


def _excerpt(lines, start=None, stop=None):
    """The lines from the first containing ``start`` up to (not including) the first later
    line containing ``stop``."""
    if start is not None:
        found = [i for i, line in enumerate(lines) if start in line]
        if not found:
            raise ValueError(f"no line contains {start!r}: has the source changed?")
        lines = lines[found[0]:]
    if stop is not None:
        found = [i for i, line in enumerate(lines) if i and stop in line]
        lines = lines[:found[0]] if found else lines
    return lines


def show_source(obj, start=None, stop=None):
    """Display an object's source, or the excerpt from ``start`` up to ``stop``.

    ``start`` / ``stop`` are substrings: the excerpt begins at the first line containing
    ``start`` and ends before the first later line containing ``stop``.
    """
    lines = _excerpt(inspect.getsource(obj).splitlines(), start, stop)
    where = f"{inspect.getmodule(obj).__name__}.{getattr(obj, '__qualname__', '')}".rstrip(".")
    code = textwrap.dedent("\n".join(lines))
    _show_markdown(f"`{where}`\n```python\n{code}\n```")


def show_file(path, start=None, stop=None, language="cuda"):
    """Display a source file (or the excerpt from ``start`` up to ``stop``) as a block."""
    from pathlib import Path

    path = Path(path)
    lines = _excerpt(path.read_text().splitlines(), start, stop)
    _show_markdown(f"`{path.parent.name}/{path.name}`\n```{language}\n"
                   + "\n".join(lines).rstrip() + "\n```")


def integer_ticks(ax, axis="x"):
    """Whole-number ticks on a time (or step, or layer) axis: no "2.5" time steps."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(matplotlib.ticker.MaxNLocator(nbins="auto", integer=True))


def legend_beside(ax, **kwargs):
    """The legend to the right of the axes, outside them, where it cannot cover data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                     **{"fontsize": 8, **kwargs})


def heatmap(ax, data, title="", xlabel="", ylabel="", log=True, colorbar=True, **kwargs):
    """Image of a 2-D array, rows top to bottom, optionally on a log10 colour scale."""
    values = np.log10(np.maximum(data, 1e-30)) if log else data
    image = ax.imshow(values, aspect="auto", interpolation="nearest", **kwargs)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    integer_ticks(ax, "x")
    if colorbar:
        plt.colorbar(image, ax=ax, label="log10" if log else None, fraction=0.05, pad=0.02)
    return image


# ----------------------------------------------------------------------------- timing
def synchronizer(device):
    """A function that waits for the device's queued work (nothing to wait for on a CPU)."""
    if str(device).startswith("cuda"):
        import cupy

        return cupy.cuda.Device().synchronize
    return lambda: None


def median_ms(fns, device, repeats=15, warmup=2):
    """Median milliseconds per call of each function in ``fns`` (a dict).

    The calls alternate between the functions (rnncore.bench's interleaved timer), and the
    clock is read only after the device has finished, so queued GPU work is counted.
    """
    from rnncore import bench

    samples = bench.time_interleaved(fns, synchronizer(device), repeats, warmup)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def measure_pointwise(device, B, sizes, dtype="float32", repeats=15):
    """One LSTM step's element-wise part, forward then backward: reference vs fused kernel.

    Returns [{"H", "reference", "fused"}], times in ms per step.
    """
    from rnncore import backend, fused
    from rnncore.cells import REFERENCE

    kernels = fused.pointwise_for(device, dtype)
    rng = np.random.default_rng(0)
    rows = []
    for H in sizes:
        def draw(*shape):
            return backend.to_device(rng.standard_normal(shape).astype(dtype), device)

        inputs = (draw(B, 4 * H), draw(B, 4 * H), draw(B, H), draw(B, H))  # xg, hg, h, c
        grads = (draw(B, H), draw(B, H))                                   # ∂h, ∂c

        def step(impl, inputs=inputs, grads=grads):
            def run():
                _, _, cache = impl.lstm_forward(*inputs, None)
                return impl.lstm_backward(*grads, cache, None)
            return run

        times = median_ms({"reference": step(REFERENCE), "fused": step(kernels)}, device,
                          repeats)
        rows.append({"H": H, **times})
    return rows


def measure_modules(device, configs, dtype="float32", repeats=7, torch_baseline=True):
    """Forward + backward of whole LSTM stacks: reference vs fused (vs torch.nn if present).

    ``configs`` holds (layers, hidden, batch, steps); times in ms per forward + backward.
    """
    import rnncore
    from rnncore import backend

    rows = []
    for layers, H, B, T in configs:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(dtype)
        dout = rng.standard_normal((T, B, H)).astype(dtype)
        fns = {}
        weights = None
        for impl in ("reference", "fused"):
            module = rnncore.LSTM(H, H, num_layers=layers, dtype=dtype, device=device,
                                  impl=impl, seed=0)
            weights = weights or {k: backend.to_numpy(v) for k, v in module.params.items()}
            module.load_state_dict(weights)
            x_d, dout_d = backend.to_device(x, device), backend.to_device(dout, device)

            def run(module=module, x_d=x_d, dout_d=dout_d):
                module(x_d)
                return module.backward(dout_d)
            fns[impl] = run
        if torch_baseline:
            fns.update(_torch_lstm(weights, x, dout, layers, device))
        rows.append({"layers": layers, "H": H, "B": B, "T": T,
                     **median_ms(fns, device, repeats, warmup=1)})
    return rows


def _torch_lstm(weights, x, dout, layers, device):
    """{name: forward + backward of torch.nn.LSTM with these weights}, or {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    T, B, H = x.shape
    module = torch.nn.LSTM(H, H, num_layers=layers).to(device)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    x_t = torch.from_numpy(x).to(device).requires_grad_()
    dout_t = torch.from_numpy(dout).to(device)

    def run():
        module(x_t)[0].backward(dout_t)
        if device != "cpu":
            torch.cuda.synchronize()
    return {"torch (cuDNN)" if device != "cpu" else "torch": run}
