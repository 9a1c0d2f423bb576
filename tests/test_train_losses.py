"""Moving the data, evaluation and checkpoint code out of train.py changed no number:
short runs give the training and validation losses recorded before (tests/data)."""

import json
from pathlib import Path

import pytest

from rnncore import train

RECORDED = json.loads((Path(__file__).parent / "data" / "train_losses.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDED["cases"]))
def test_losses_equal_the_recorded_ones_bitwise(tmp_path, capsys, name):
    case = RECORDED["cases"][name]
    out = tmp_path / "run"
    assert train.main([*case["args"], *RECORDED["tiny"], "--out", str(out)]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    got_train = [[r["step"], r["loss"].hex()] for r in records if r["kind"] == "train"]
    got_eval = [[r["step"], r["val_loss"].hex()] for r in records if r["kind"] == "eval"]
    assert got_train == case["train"]
    assert got_eval == case["eval"]


def test_notebook_imports_still_work():
    from rnncore.sample import generate, load_model  # noqa: F401
    from rnncore.train import Streams, Vocab, evaluate, split_text  # noqa: F401
