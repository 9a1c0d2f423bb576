import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def torch_problem():
    """Why torch cannot be used here, or None. Torch-parity tests skip without torch."""
    try:
        importlib.import_module("torch")
    except Exception as err:  # ImportError, or a broken install raising anything else
        return f"{type(err).__name__}: {err}"
    return None


def pytest_configure(config):
    # In CI (the Makefile's test target sets RNNCORE_REQUIRE_TORCH=1, `make install`
    # installs torch) a missing torch fails the run instead of skipping its tests.
    if os.environ.get("RNNCORE_REQUIRE_TORCH") == "1":
        problem = torch_problem()
        if problem is not None:
            raise pytest.UsageError(
                f"RNNCORE_REQUIRE_TORCH=1 but torch cannot be imported ({problem}); the "
                "torch-parity tests would skip. Install torch or unset the variable.")


def gpu_requested(config) -> bool:
    """True when the -m expression selects tests marked gpu (``-m gpu``, ``-m "gpu or
    slow"``, …); the default ``-m 'not gpu'`` of pyproject.toml does not."""
    expression = config.getoption("markexpr", "") or ""
    if not expression:
        return False
    from _pytest.mark.expression import Expression

    return bool(Expression.compile(expression).evaluate(lambda name: name == "gpu"))


def gpu_problem():
    """Why the GPU tests cannot run here (CuPy missing or broken, no GPU), or None."""
    from rnncore import backend

    try:
        backend.import_cupy()
    except Exception as err:  # RuntimeError from rnncore, or a broken CuPy raising anything
        cause = err.__cause__ or err.__context__
        return f"{err}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
    return None


def pytest_collection_modifyitems(config, items):
    """Note, once, why the GPU tests cannot run when they are asked for (``-m gpu``)."""
    config._rnncore_gpu_problem = None
    if gpu_requested(config) and any(i.get_closest_marker("gpu") for i in items):
        config._rnncore_gpu_problem = gpu_problem()


def pytest_runtest_setup(item):
    """When the GPU tests are asked for (``-m gpu``) and cannot run, every one of them
    fails with the reason instead of skipping: a GPU check that did not run is not a pass.
    Without ``-m gpu`` (``make test``) they are deselected as before."""
    problem = getattr(item.config, "_rnncore_gpu_problem", None)
    if problem and item.get_closest_marker("gpu") is not None:
        pytest.fail(f"-m gpu asked for the GPU tests, but they cannot run: {problem}",
                    pytrace=False)
