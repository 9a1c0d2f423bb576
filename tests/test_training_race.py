"""scripts/training-race: both runs, alone, in the order asked for, summarised."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")


def test_race_runs_torch_first_when_asked(tmp_path):
    words = ("to be or not to be that is the question whether tis nobler in the mind "
             "to suffer the slings and arrows of outrageous fortune ").split()
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(words[i * 7 % len(words)] for i in range(30000)) + "\n")
    out = tmp_path / "race"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "training-race"), "--data", str(text),
         "--seconds", "1.5", "--first", "torch", "--out", str(out), "--",
         "--eval-chars", "1000", "--eval-every", "5", "--log-every", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["order"] == ["torch.nn", "rnncore"]
    # one after the other: torch's log finished before rnncore's run began writing
    torch_done = (out / "torch.log").stat().st_mtime
    assert torch_done <= (out / "rnncore-run" / "config.json").stat().st_mtime
    for name in ("rnncore", "torch.nn"):
        assert summary[name]["steps"] > 0 and summary[name]["steps_per_s"] > 0
        assert 0 < summary[name]["last_val_loss"] < 10
    assert "--first torch" in summary["command"]
    rows = (out / "summary.md").read_text().splitlines()
    assert rows[2].startswith("| rnncore |") and rows[3].startswith("| torch.nn |")


def test_race_too_short_to_log_a_step_says_so(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("abc def ghi " * 3000)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "training-race"), "--data", str(text),
         "--seconds", "0.01", "--out", str(tmp_path / "race"), "--", "--eval-chars", "500"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "training-race: rnncore logged no training step in 0.01 s (give it more --seconds "
        "or a smaller --log-every)"]


def test_race_refuses_an_unknown_order(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "training-race"), "--data", "x",
         "--first", "both"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'both'" in done.stderr
