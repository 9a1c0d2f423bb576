"""scripts/numba-element-step: the LSTM's compiled element steps, run alone through their
own exports, equal a float64 NumPy reference (so what the script times against numba is
the step the loops run), and without numba the script stops with one line."""

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnncore import fused

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "numba-element-step"


def _script():
    loader = importlib.machinery.SourceFileLoader("numba_element_step", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@pytest.mark.skipif(not fused.available("cpu"),
                    reason="no C++ compiler: the CPU loops cannot be built")
@pytest.mark.parametrize("hidden, batch", [(40, 16), (24, 20), (128, 32)])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_the_compiled_element_steps_equal_the_numpy_reference(direction, hidden, batch):
    script = _script()
    error = script.check(script.compiled_steps, direction, hidden, batch)
    assert error < 1e-5


@pytest.mark.parametrize("direction, output", [("forward", "h"), ("backward", "dz")])
def test_the_check_fails_on_a_wrong_step(direction, output):
    """The reference's own step, then one value of an output off by 1 % of the output's
    largest: the check sees it (its threshold is 1e-5)."""
    script = _script()

    def wrong(direction, buf):
        results = script.reference_steps(direction, buf)
        for name in ("gates", "h", "c") if direction == "forward" else ("dz",):
            a = results[name]
            buf[name][...] = a[:, :buf[name].shape[1]] if name == "dz" else a
        flat = buf[output].reshape(-1)
        flat[7] += 0.01 * abs(flat).max()
        return results.get("dc0")

    assert script.check(wrong, direction, 16, 16) == pytest.approx(0.01, rel=1e-3)


def _run(*args):
    """The script in a fresh interpreter where `import numba` fails."""
    code = ("import runpy, sys; sys.modules['numba'] = None; "
            f"sys.argv = {[str(SCRIPT), *args]!r}; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_without_numba_the_script_stops_with_one_line():
    done = _run()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "numba-element-step: numba is not installed (pip install numba); rnncore itself "
        "does not need it"]


def test_a_bad_round_count_is_one_line():
    done = _run("--rounds", "0")
    assert done.returncode == 1
    assert done.stderr.strip() == "numba-element-step: --rounds must be at least 1, not 0"
