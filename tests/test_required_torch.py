"""RNNCORE_REQUIRE_TORCH=1 turns a missing torch into a failed run, not silent skips."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run_pytest(tmp_path, require):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "torch.py").write_text(
        "raise ModuleNotFoundError('torch blocked for this test', name='torch')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)]),
           "RNNCORE_REQUIRE_TORCH": "1" if require else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_optim_torch.py")],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_missing_torch_fails_when_required(tmp_path):
    result = run_pytest(tmp_path, require=True)
    assert result.returncode != 0
    assert "RNNCORE_REQUIRE_TORCH=1 but torch cannot be imported" in result.stderr + result.stdout


def test_missing_torch_skips_when_not_required(tmp_path):
    result = run_pytest(tmp_path, require=False)
    assert result.returncode in (0, 5) and "skipped" in result.stdout  # 5: nothing ran
