"""The benchmark keeps running: ``python -m rnncore.bench --quick`` at toy sizes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_prints_every_row_with_positive_ratios(tmp_path):
    json_file = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "rnncore.bench", "--quick", "--json", str(json_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "| row | pass | rnncore ms | torch ms | torch/rnncore |" in table
    timing_lines = [line for line in table.splitlines()
                    if line.startswith("| ") and "forward" in line]
    labels = {"LSTM 1×16 (B 4, T 6)", "LSTM 3×16 (B 4, T 6)", "GRU 3×16 (B 4, T 6)",
              "LSTM 3×16, input 12 (B 4, T 6) (seed)"}
    for label in labels:
        passes = [line for line in timing_lines if line.startswith(f"| {label} |")]
        assert len(passes) == 2, (label, table)
        for line in passes:
            ratio = float(line.strip("| ").split("|")[-1])
            assert math.isfinite(ratio) and ratio > 0

    data = json.loads(json_file.read_text())
    assert {row["label"] for row in data["rows"]} == labels
    assert data["meta"]["threads"] >= 1 and data["meta"]["torch"]
    for row in data["rows"]:
        for by_impl in row["ratio"].values():
            assert all(math.isfinite(r) and r > 0 for r in by_impl.values())
        for errors in row["rel_error"].values():
            assert all(e < 1e-4 for e in errors.values()), errors
