"""The character language model and its training entry point, end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rnncore import corpora, runcheckpoint, train
from rnncore.charlm import CharLM, cross_entropy_backward, cross_entropy_forward
from rnncore.evaluation import evaluate
from rnncore.gradcheck import central_difference
from rnncore.sample import main as sample_main
from rnncore.textdata import Streams, Vocab

TINY = ["--hidden", "24", "--embed", "8", "--batch-size", "8", "--seq-len", "16",
        "--quiet", "--no-plot", "--impl", "reference"]


def run_train(args, capsys=None):
    """rnncore.train.main(args) → (exit code, stderr); argparse exits become codes too."""
    try:
        code = train.main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def train_records(run_dir, kind="train"):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["kind"] == kind]


# ----------------------------------------------------------------------------- gradients


def test_cross_entropy_gradient_float64():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((12, 7))
    y = rng.integers(0, 7, 12)
    loss, cache = cross_entropy_forward(z, y)
    manual = -np.mean(np.log(np.exp(z) / np.exp(z).sum(1, keepdims=True))[np.arange(12), y])
    assert float(loss) == pytest.approx(manual, rel=1e-12)
    dz = cross_entropy_backward(cache)
    for index in [(0, 0), (3, 4), (11, 6), (5, int(y[5]))]:
        num = central_difference(lambda: float(cross_entropy_forward(z, y)[0]), z, index)
        assert dz[index] == pytest.approx(num, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("cell,options", [("lstm", {"proj_size": 3}), ("gru", {}),
                                          ("rnn_tanh", {"residual": "layers"})])
def test_charlm_gradients_float64(cell, options):
    """Head, loss, embedding and the stack under them: backward equals finite differences."""
    rng = np.random.default_rng(1)
    V, T, B = 6, 5, 3
    model = CharLM(V, embed_size=4, hidden_size=5, num_layers=2, cell=cell, dtype="float64",
                   seed=3, impl="reference", **options)
    ids = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    state = model.initial_state(B)
    state = tuple(s + 0.1 for s in state) if isinstance(state, tuple) else state + 0.1
    model.zero_grad()
    model.loss(ids, targets, state)
    model.backward()
    grads = model.grads
    params = model.params
    for name, p in params.items():
        for index in [tuple(rng.integers(0, n) for n in p.shape) for _ in range(3)]:
            num = central_difference(lambda: float(model.loss(ids, targets, state)[0]), p, index)
            assert grads[name][index] == pytest.approx(num, rel=1e-5, abs=1e-9), (name, index)


def test_bidirectional_is_refused(capsys):
    code, err = run_train(["--bidirectional", *TINY], capsys)
    assert code == 2
    assert "bidirectional" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- learning
def test_tiny_model_learns_words_quickly(tmp_path, capsys):
    """A few seconds of training take the loss far below the uniform baseline."""
    out = tmp_path / "run"
    code, _ = run_train(["--corpus", "words", "--steps", "150", "--eval-every", "150",
                         "--lr", "0.01", "--warmup", "10", "--out", out, *TINY], capsys)
    assert code == 0
    evals = train_records(out, "eval")
    uniform = math.log2(23)  # 21 letters, space, newline and full stop: 23 characters
    assert evals[-1]["val_bpc"] < 0.5 * uniform
    # the recorded numbers against independently computed ones: the validation loss of the
    # saved model on the held-out tail, the corpus's entropy rate, and their difference
    model, vocab, _, _ = runcheckpoint.load_model(out / "last.npz")
    corpus = corpora.load_corpus("words", seed=0)
    ids = Vocab(vocab).encode(corpus.text)
    val_ids = ids[len(ids) - int(len(ids) * 0.1):]  # the default --val-fraction 0.1
    B, T = 8, 16  # TINY's --batch-size and --seq-len; --eval-chars 100000 by default
    val_loss = evaluate(model, Streams(val_ids, B, T, "cpu"), 100_000 // (B * T))
    floor = corpus.floor_bpc
    assert evals[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert evals[-1]["floor_bpc"] == pytest.approx(floor, rel=1e-12)
    assert evals[-1]["gap_bpc"] == pytest.approx(val_loss / math.log(2) - floor, rel=1e-5)
    assert (out / "last.npz").is_file() and (out / "best.npz").is_file()


class StopAfter:
    """A stand-in for the Ctrl-C flag that asks the loop to stop after ``n`` steps."""

    n = 0

    def __init__(self):
        self.polls = 0

    def __call__(self, signum, frame):  # installed as the SIGINT handler
        pass

    @property
    def requested(self):
        self.polls += 1
        return self.polls >= self.n


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_resume_equals_uninterrupted(tmp_path, capsys, monkeypatch, fmt):
    args = ["--steps", "24", "--eval-every", "10", "--log-every", "1", "--dropout", "0.3",
            "--init-state", "normal", "--optimizer", "adamw", "--weight-decay", "0.01",
            "--format", fmt, *TINY]
    assert run_train([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    monkeypatch.setattr(train, "StopFlag", type("Stop", (StopAfter,), {"n": 13}))
    code, err = run_train([*args, "--out", tmp_path / "split"], capsys)
    assert code == 130 and "resume" in err
    assert train_records(tmp_path / "split")[-1]["step"] == 13
    monkeypatch.undo()
    assert run_train(["--resume", tmp_path / "split"], capsys)[0] == 0
    whole = [(r["step"], r["loss"]) for r in train_records(tmp_path / "whole")]
    split = [(r["step"], r["loss"]) for r in train_records(tmp_path / "split")]
    assert split == whole


# ----------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled") / "run"
    assert train.main(["--corpus", "words", "--steps", "30", "--eval-every", "30",
                       "--out", str(out), *TINY]) == 0
    return out / "last.npz"


def sample_text(capsys, *args):
    assert sample_main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_sampling_is_reproducible(trained, capsys):
    first = sample_text(capsys, trained, "--prime", "da", "--length", "80", "--seed", "5",
                        "--top-k", "5", "--top-p", "0.9")
    again = sample_text(capsys, trained, "--prime", "da", "--length", "80", "--seed", "5",
                        "--top-k", "5", "--top-p", "0.9")
    other = sample_text(capsys, trained, "--prime", "da", "--length", "80", "--seed", "6",
                        "--temperature", "1.5")
    assert first == again and first.startswith("da") and len(first) == 83
    assert other != first
    greedy = {sample_text(capsys, trained, "--temperature", "0", "--seed", s, "--length", 40)
              for s in (1, 2)}
    assert len(greedy) == 1


def test_sample_rejects_unknown_prime_characters(trained, capsys):
    assert sample_main([str(trained), "--prime", "XYZ"]) == 2
    err = capsys.readouterr().err
    assert "prime" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- bad input
@pytest.fixture()
def existing_run(tmp_path, capsys):
    """A run directory with checkpoints whose bytes the failures below must not change."""
    out = tmp_path / "existing"
    assert run_train(["--steps", "4", "--eval-every", "2", "--out", out, *TINY], capsys)[0] == 0
    return out, {p.name: p.read_bytes() for p in out.glob("*.npz")}


def _assert_untouched(existing):
    out, before = existing
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == before


def _bad_inputs(tmp_path, out):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n" * 5)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 ".encode("latin-1") * 2000)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"this is not a zip file at all")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((out / "last.npz").read_bytes()[:300])
    trunc_st = tmp_path / "truncated.safetensors"
    trunc_st.write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00{")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, payload=np.array([{"not": "weights"}], dtype=object))
    fresh = tmp_path / "fresh"
    return [
        (["--data", empty, "--out", out], "empty"),
        (["--data", short, "--out", out], "fewer than one window"),
        (["--data", latin, "--out", out], "latin1.txt"),
        (["--data", latin, "--encoding", "nope", "--out", out], "nope"),
        (["--corpus", "klingon", "--out", out], "klingon"),
        (["--cell", "transformer", "--out", out], "transformer"),
        (["--out", out], "already holds"),
        (["--resume", corrupt], "corrupt.npz"),
        (["--resume", truncated], "truncated.npz"),
        (["--resume", trunc_st], "truncated.safetensors"),
        (["--resume", tmp_path / "missing.npz"], "missing.npz"),
        (["--resume", out, "--hidden", "64"], "incompatible"),
        (["--resume", out, "--data", short], "short.txt"),
        (["--lr", "nan", "--out", fresh], "--lr must be a finite number"),
        (["--clip", "-1", "--out", fresh], "--clip must be >= 0"),
        (["--resume", pickled], "pickled objects"),
    ]


def test_bad_inputs_give_one_line_errors(tmp_path, capsys, existing_run):
    out = existing_run[0]
    for args, needle in _bad_inputs(tmp_path, out):
        flags = [] if "--resume" in args else TINY
        code, err = run_train([*args, *flags], capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, err)
        _assert_untouched(existing_run)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_loss = CharLM.loss
    calls = {"train": 0}

    def poisoned(self, ids, targets, state=None, positions=None):
        loss, state = real_loss(self, ids, targets, state, positions)
        if self.rnn.training:
            calls["train"] += 1
            if calls["train"] > 5:
                loss = loss * np.nan
        return loss, state

    monkeypatch.setattr(CharLM, "loss", poisoned)
    code, err = run_train(["--steps", "12", "--eval-every", "4", "--log-every", "2",
                           "--out", out, *TINY], capsys)
    assert code == 1 and "loss became nan" in err and "last good checkpoint" in err
    monkeypatch.undo()
    from rnncore.sample import load_model

    model, _, _, meta = load_model(out / "last.npz")
    assert meta["step"] == 4
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    """A real SIGINT: the step in flight finishes, a checkpoint is written, exit code 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(train.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "rnncore.train", "--steps", "100000",
                             "--log-every", "1", "--eval-every", "100000", "--out", str(out),
                             *TINY], env=env, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted at step" in err
    from rnncore.sample import load_model

    _, _, _, meta = load_model(out / "last.npz")
    assert f"interrupted at step {meta['step']};" in err
