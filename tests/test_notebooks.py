"""The notebooks execute top to bottom, and the committed ones match their sources.

Each notebook is built from ``notebooks/src/NN_name.py`` and run in a fresh Jupyter
kernel (nbclient); any cell that raises fails its test. ``make notebooks`` (that is,
``python notebooks/build.py --execute``) stores the outputs in ``notebooks/NN_name.ipynb``.
"""

import importlib.util
import time
from pathlib import Path

# the test extra installs these: missing, the notebooks' tests fail rather than skip
import ipykernel  # noqa: F401  (the kernel nbclient starts)
import matplotlib  # noqa: F401
import nbclient  # noqa: F401
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 300  # seconds; each notebook is meant to take well under a minute


def _load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
SOURCES = build.sources()


def test_there_are_notebooks():
    assert len(SOURCES) >= 2, "expected notebook sources in notebooks/src/"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes(source):
    nb = build.build(source)
    start = time.perf_counter()
    build.execute(nb, timeout=CELL_TIMEOUT)  # raises CellExecutionError on any error
    took = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{source.stem}: a cell reported an error"
    print(f"{source.stem}: {took:.1f} s")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_matches_source(source):
    stale = build.check([source])
    assert not stale, f"{stale}: run `python notebooks/build.py --execute {source.stem[:2]}`"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_has_outputs_and_is_small(source):
    path = build.target(source)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} is not executed"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert path.stat().st_size < 1_000_000, f"{path.name} is over 1 MB"
