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
