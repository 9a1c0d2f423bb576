"""--gradflow-every: the ledger records without changing training."""

import numpy as np
from test_train import TINY, run_train, train_records


def test_ledger_leaves_losses_bitwise_and_writes_figure(tmp_path, capsys):
    base = ["--corpus", "words", "--steps", "6", "--eval-every", "6", "--log-every", "1",
            "--layers", "2", *TINY]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_train([*base, "--out", a], capsys)[0] == 0
    assert run_train([*base, "--out", b, "--gradflow-every", "2"], capsys)[0] == 0
    la = [r["loss"] for r in train_records(a)]
    lb = [r["loss"] for r in train_records(b)]
    assert len(la) == 6 and la == lb
    assert [r["grad_norm"] for r in train_records(a)] == [r["grad_norm"] for r in train_records(b)]
    assert not (a / "gradflow.npz").exists()
    ledger = np.load(b / "gradflow.npz")
    assert list(ledger["steps"]) == [0, 2, 4]
    assert ledger["h"].shape == (3, 2, 16) and np.all(ledger["h"] > 0)
    assert ledger["saturation"].shape == (3, 2)
    assert (b / "gradflow.png").stat().st_size > 0


def test_ledger_with_compiled_driver(tmp_path, capsys):
    tiny = [a for a in TINY if a not in ("--impl", "reference")]
    base = ["--corpus", "words", "--steps", "4", "--eval-every", "4", "--log-every", "1",
            *tiny]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_train([*base, "--out", a], capsys)[0] == 0
    assert run_train([*base, "--out", b, "--gradflow-every", "1"], capsys)[0] == 0
    assert [r["loss"] for r in train_records(a)] == [r["loss"] for r in train_records(b)]
    assert np.load(b / "gradflow.npz")["h"].shape[0] == 4


def test_intervention_flags_reach_the_module(tmp_path, capsys):
    out = tmp_path / "c"
    code, err = run_train(["--corpus", "words", "--steps", "2", "--eval-every", "2",
                           "--h-detach", "0.25", "--gate-clip", "1.0", "--truncate", "4",
                           "--out", out, *TINY], capsys)
    assert code == 0, err
    assert np.isfinite([r["loss"] for r in train_records(out)]).all()
    code, err = run_train(["--corpus", "words", "--steps", "2", "--cell", "gru",
                           "--h-detach", "0.5", "--out", tmp_path / "d", *TINY], capsys)
    assert code != 0 and "h_detach" in err
