"""What the notebooks share: one figure style, and a way to show rnncore's own source."""

import inspect
import textwrap

import matplotlib
import matplotlib.pyplot as plt
from IPython.display import Markdown, display


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


def show_source(obj, start=None, stop=None):
    """Display an object's source (optionally only the lines from ``start`` up to ``stop``).

    ``start`` / ``stop`` are substrings: the excerpt begins at the first line containing
    ``start`` and ends before the first later line containing ``stop``.
    """
    lines = inspect.getsource(obj).splitlines()
    if start is not None:
        lines = lines[next(i for i, line in enumerate(lines) if start in line):]
    if stop is not None:
        lines = lines[:next(i for i, line in enumerate(lines) if i and stop in line)]
    where = f"{inspect.getmodule(obj).__name__}.{getattr(obj, '__qualname__', '')}".rstrip(".")
    code = textwrap.dedent("\n".join(lines))
    display(Markdown(f"`{where}`\n```python\n{code}\n```"))


def show_text(text, language=""):
    """Display text (a CUDA source, say) as a highlighted block."""
    display(Markdown(f"```{language}\n{text.rstrip()}\n```"))


def heatmap(ax, data, title="", xlabel="", ylabel="", log=True, colorbar=True, **kwargs):
    """Image of a 2-D array, rows top to bottom, optionally on a log10 colour scale."""
    import numpy as np

    values = np.log10(np.maximum(data, 1e-30)) if log else data
    image = ax.imshow(values, aspect="auto", interpolation="nearest", **kwargs)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        plt.colorbar(image, ax=ax, label="log10" if log else None, fraction=0.05, pad=0.02)
    return image
