"""Build the notebooks from their Python sources, and optionally execute them.

Each notebook is written as a plain Python file in ``notebooks/src/`` with cell markers,
so that it diffs and lints like any other source:

    # %% [markdown]
    # # A title
    # Some prose, each line behind "# ".

    # %%
    print("a code cell")

Lines before the first marker (a lint directive, say) stay out of the notebook.

    python notebooks/build.py               # write notebooks/NN_name.ipynb, no outputs
    python notebooks/build.py --execute     # ... and run each one, storing its outputs
    python notebooks/build.py --execute 03  # only the notebooks whose name contains "03"
    python notebooks/build.py --check       # fail if a committed notebook's cells differ

Execution runs a Jupyter kernel (nbclient) in ``notebooks/`` with the repository root on
PYTHONPATH, so ``import rnncore`` and ``import nbhelpers`` work without installing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = HERE / "src"
MARKER = re.compile(r"^# %%(?:\s+\[(markdown|md)\])?\s*$")
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def sources(selectors=()) -> list[Path]:
    """The notebook sources, sorted by name, filtered by substring when any are given."""
    paths = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if selectors:
        paths = [p for p in paths if any(s in p.stem for s in selectors)]
    return paths


def target(source: Path) -> Path:
    return HERE / (source.stem + ".ipynb")


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _uncomment(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    if line.strip() == "#":
        return ""
    raise ValueError(f"markdown line must start with '# ': {line!r}")


def parse(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] for each cell, kind "markdown" or "code"."""
    cells, kind, lines = [], None, []

    def flush():
        body = _trim(lines)
        if kind is not None and body:
            if kind == "markdown":
                body = [_uncomment(line) for line in body]
            cells.append((kind, "\n".join(body)))

    for line in text.splitlines():
        match = MARKER.match(line)
        if match:
            flush()
            kind, lines = ("markdown" if match.group(1) else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def build(source: Path) -> nbformat.NotebookNode:
    """The notebook (no outputs) described by one source file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in parse(source.read_text(encoding="utf-8")):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(text))
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"{source.stem[:2]}-{i:03d}"
    return nb


def kernel_env() -> None:
    """The kernel's environment (inherited from this process).

    The repository root goes on PYTHONPATH. BLAS runs single-threaded unless the caller
    says otherwise: the notebooks' matrices are small, and on a small, shared machine
    (CI's two cores) a multi-threaded BLAS spends far longer synchronising threads than
    computing (here ten to fifty times longer under load).
    """
    parts = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel in notebooks/; raises CellExecutionError on error."""
    from nbclient import NotebookClient

    kernel_env()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    return nb


def check(paths) -> list[str]:
    """Names of the committed notebooks whose cells differ from their sources."""
    stale = []
    for source in paths:
        path = target(source)
        if not path.exists():
            stale.append(f"{path.name} (missing)")
            continue
        committed = nbformat.read(path, as_version=4)
        fresh = build(source)
        pairs = [(c.cell_type, c.source) for c in committed.cells]
        if pairs != [(c.cell_type, c.source) for c in fresh.cells]:
            stale.append(path.name)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("select", nargs="*", help="build only notebooks whose name contains this")
    parser.add_argument("--execute", action="store_true", help="run and store outputs")
    parser.add_argument("--check", action="store_true",
                        help="only compare committed notebooks with their sources")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sources(args.select)
    if not paths:
        print("no notebook sources match", args.select, file=sys.stderr)
        return 1
    if args.check:
        stale = check(paths)
        for name in stale:
            print(f"out of date: {name} (run python notebooks/build.py --execute)")
        return 1 if stale else 0
    for source in paths:
        nb = build(source)
        start = time.perf_counter()
        if args.execute:
            execute(nb, args.timeout)
        path = target(source)
        nbformat.write(nb, path)
        took = f" executed in {time.perf_counter() - start:.1f} s" if args.execute else ""
        size = path.stat().st_size / 1024
        print(f"{path.relative_to(ROOT)}: {len(nb.cells)} cells, {size:.0f} KiB{took}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
