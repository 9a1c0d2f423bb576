"""Issue 10: bad flags, hostile checkpoint files, divergence and interruption all end in a
one-line error (or success), never a traceback, a lost file or an unbounded allocation."""

import io
import json
import math
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_train import TINY, run_train, train_records

from rnncore import checkpoint, runcheckpoint, runconfig, sample, train
from rnncore.checkpoint import CheckpointError

SHORT = ["--steps", "4", "--eval-every", "2", "--log-every", "1", *TINY]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "run"
    assert train.main([*SHORT, "--out", str(out)]) == 0
    return out


def rewrite(src: Path, dst: Path, change):
    """Copy a checkpoint with ``change(meta)`` applied to its JSON document."""
    arrays, meta = checkpoint.load(src)
    meta.pop("format_version")
    change(meta)
    return checkpoint.save(dst, arrays, meta)


def snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


# ----------------------------------------------------------------------------- data loss
def test_resume_into_another_runs_directory_is_refused(tmp_path, capsys, run_a):
    other = tmp_path / "b"
    assert run_train([*SHORT, "--seed", "3", "--out", other], capsys)[0] == 0
    before = snapshot(other)
    code, err = run_train(["--resume", run_a / "last.npz", "--out", other], capsys)
    assert code == 2 and "already holds another run's files" in one_line(err)
    assert snapshot(other) == before
    code, _ = run_train(["--resume", run_a / "last.npz", "--out", other, "--overwrite",
                         "--steps", "6"], capsys)
    assert code == 0 and snapshot(other) != before


def test_resume_into_a_new_directory_keeps_the_source_and_its_history(tmp_path, capsys,
                                                                      run_a):
    before = snapshot(run_a)
    new = tmp_path / "continued"
    assert run_train(["--resume", run_a, "--out", new, "--steps", "6"], capsys)[0] == 0
    assert snapshot(run_a) == before
    assert [r["step"] for r in train_records(new)] == [1, 2, 3, 4, 5, 6]


def test_extended_resume_keeps_the_schedule_horizon(tmp_path, capsys):
    args = ["--eval-every", "4", "--log-every", "1", "--warmup", "2", *TINY]
    assert run_train([*args, "--steps", "12", "--schedule-steps", "8",
                      "--out", tmp_path / "whole"], capsys)[0] == 0
    assert run_train([*args, "--steps", "8", "--out", tmp_path / "split"], capsys)[0] == 0
    assert run_train(["--resume", tmp_path / "split", "--steps", "12"], capsys)[0] == 0
    whole = [(r["step"], r["loss"], r["lr"]) for r in train_records(tmp_path / "whole")]
    split = [(r["step"], r["loss"], r["lr"]) for r in train_records(tmp_path / "split")]
    assert split == whole
    assert whole[-1][2] == pytest.approx(1e-4)  # past the horizon: --min-lr
    code, err = run_train(["--resume", tmp_path / "split", "--schedule-steps", "12"], capsys)
    assert code == 2 and "--schedule-steps" in one_line(err)


def test_older_checkpoints_get_their_steps_as_horizon(tmp_path, run_a):
    def old(meta):
        meta["config"].pop("schedule_steps")
        meta["config"]["residual"] = None
        meta.pop("text_sha256")
    path = rewrite(run_a / "last.npz", tmp_path / "old.npz", old)
    assert runcheckpoint.read(path).config["schedule_steps"] == 4


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flags,needle", [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "-1"], "--temperature"),
    (["--eps", "-1"], "--eps"), (["--beta1", "nan"], "--beta1"), (["--beta2", "1.5"], "--beta2"),
    (["--time", "-1"], "--time"), (["--seed", "-1"], "--seed"), (["--eval-every", "0"],
    "--eval-every"), (["--lr", "inf"], "--lr"), (["--device", "tpu"], "--device"),
    (["--hidden", "100000"], "GiB"), (["--proj-size", "30"], "--proj-size"),
    (["--encoding", "nope"], "--encoding"), (["--steps", "x"], "--steps"),
])
def test_bad_train_flags_name_the_flag(tmp_path, capsys, flags, needle):
    code, err = run_train([*SHORT, *flags, "--out", tmp_path / "r"], capsys)
    assert code == 2 and needle in one_line(err)
    assert not (tmp_path / "r").exists()


def test_out_naming_a_file_or_a_path_under_one(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "sub"):
        code, err = run_train([*SHORT, "--out", out], capsys)
        assert code == 2 and "--out" in one_line(err) and "file" in err
    assert afile.read_text() == "keep me"


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("change,needle", [
    (lambda m: m["config"].update(eval_every=0), "--eval-every"),
    (lambda m: m["config"].update(hidden="24"), "--hidden must be an int"),
    (lambda m: m["config"].update(lr=-1), "--lr must be > 0"),
    (lambda m: m["config"].update(seed=-1), "--seed"),
    (lambda m: m["config"].update(beta2=float("nan")), "--beta2"),
    (lambda m: m.update(config=[1, 2]), "config must be a JSON object"),
    (lambda m: m["config"].update(hidden=100000), "GiB"),
    (lambda m: m["config"].update(hidden=2000), "where its config implies"),
    (lambda m: m["config"].update(hidden=8, embed=4), "more values than its config allows"),
    (lambda m: m.update(vocab="abc"), "vocab"),
    (lambda m: m.update(step=-3), "step"),
    (lambda m: m.update(world_size=0), "world_size"),
    (lambda m: m.update(world_size="2"), "world_size"),
    (lambda m: m["config"].update(hidden=25), "shape"),
])
def test_checkpoint_config_is_validated_before_anything_is_built(tmp_path, capsys, run_a,
                                                                 change, needle, monkeypatch):
    monkeypatch.setenv("RNNCORE_MEMORY_LIMIT", str(2 << 30))
    bad = rewrite(run_a / "last.npz", tmp_path / "bad.npz", change)
    tracemalloc.start()
    try:
        code, err = run_train(["--resume", bad, "--out", tmp_path / "r"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = one_line(err)
    assert code == 2 and needle in line and str(bad) in line
    assert peak < 50 << 20
    if sample.main([str(bad)]) != 2:  # sampling applies the same checks
        pytest.fail("sample accepted a bad checkpoint")
    assert needle in one_line(capsys.readouterr().err)


def test_deflated_bomb_is_refused_before_it_expands(tmp_path, run_a):
    """1 GB of zeros deflated to about 1 MB, as a parameter array: refused from its header."""
    arrays, meta = checkpoint.load(run_a / "last.npz")
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in arrays.items():
            with z.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, a)
        with z.open("__meta__.npy", "w") as f:
            np.lib.format.write_array(f, np.frombuffer(json.dumps(meta).encode(), np.uint8))
        with z.open("param/huge.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": (2**27,)}
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(1 << 20)
            for _ in range(1024):
                f.write(chunk)
    assert bomb.stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="more values than its config allows"):
            runcheckpoint.read(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


@pytest.mark.parametrize("header,needle", [
    ([1, 2], "not an object"), ("text", "not an object"),
    ({"__metadata__": {"rnncore": "{}"}, "w": 3}, "not an object"),
    ({"__metadata__": {"rnncore": "{}"}, "w": {"dtype": "F32", "shape": [1],
                                               "data_offsets": 4}}, "data_offsets"),
    ({"__metadata__": {"rnncore": "{}"}, "w": {"dtype": "F32", "shape": "1",
                                               "data_offsets": [0, 4]}}, "shape"),
    ({"__metadata__": {"rnncore": "{}"}, "w": {"dtype": "X9", "shape": [1],
                                               "data_offsets": [0, 4]}}, "dtype"),
    ({"__metadata__": "x"}, "no rnncore metadata"),
])
def test_malformed_safetensors_headers(tmp_path, header, needle):
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(8))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_resume_says_when_the_text_differs(tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat and the dog sat on the log\n" * 60)
    out = tmp_path / "run"
    assert run_train([*SHORT, "--data", data, "--out", out], capsys)[0] == 0
    assert run_train(["--resume", out, "--steps", "5"], capsys)[0] == 0
    data.write_text("the dog sat on the mat and the cat sat on the log\n" * 60)
    code, err = run_train(["--resume", out, "--steps", "6"], capsys)
    assert code == 0 and "not the text this checkpoint was trained on" in err
    assert str(data) in err


# ----------------------------------------------------------------------------- divergence
def test_huge_finite_validation_loss_does_not_overflow(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 800.0)
    out = tmp_path / "r"
    code, err = run_train([*SHORT, "--out", out], capsys)
    assert code == 0, err
    assert train_records(out, "eval")[-1]["val_ppl"] is None


def test_non_finite_parameters_stop_and_keep_the_last_checkpoint(tmp_path, capsys,
                                                                 monkeypatch):
    from rnncore import optim
    out = tmp_path / "r"
    real_step = optim.Adam.step
    calls = {"n": 0}

    def poisoned(self, params, grads, lr):
        real_step(self, params, grads, lr)
        calls["n"] += 1
        if calls["n"] == 3:  # after the first checkpoint (step 2)
            for v in params.values():
                v[...] = np.inf

    monkeypatch.setattr(optim.Adam, "step", poisoned)
    code, err = run_train([*SHORT, "--log-every", "4", "--out", out], capsys)
    line = one_line(err)
    assert code == 1 and "last good checkpoint" in line
    monkeypatch.undo()
    model, _, _, meta = runcheckpoint.load_model(out / "last.npz")
    assert meta["step"] == 2 and all(np.isfinite(v).all() for v in model.params.values())


# ----------------------------------------------------------------------------- sample
class InterruptingStdout(io.StringIO):
    """Raises KeyboardInterrupt once ``limit`` characters have been written."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def write(self, text):
        if self.tell() >= self.limit:
            raise KeyboardInterrupt
        return super().write(text)


def test_sample_streams_and_ctrl_c_keeps_the_output(run_a, capsys, monkeypatch):
    fake = InterruptingStdout(300)
    monkeypatch.setattr(sys, "stdout", fake)
    code = sample.main([str(run_a / "last.npz"), "--length", str(10**12)])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted after 300 characters" in one_line(err)
    assert len(fake.getvalue()) == 300


@pytest.mark.parametrize("temperature", ["1e-300", "5e-324", "1e-30"])
def test_tiny_temperature_is_greedy_not_nan(run_a, capsys, temperature):
    assert sample.main([str(run_a / "last.npz"), "--length", "30", "--temperature",
                        temperature]) == 0
    greedy = capsys.readouterr().out
    assert sample.main([str(run_a / "last.npz"), "--length", "30", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy


@pytest.mark.parametrize("flags,needle", [
    (["--device", "tpu"], "--device"), (["--temperature", "nan"], "--temperature"),
    (["--top-p", "nan"], "--top-p"), (["--length", "-1"], "--length"),
    (["--seed", "-1"], "--seed"), (["--length", "x"], "--length"),
])
def test_sample_flags_name_the_flag(run_a, capsys, flags, needle):
    try:
        code = sample.main([str(run_a / "last.npz"), *flags])
    except SystemExit as exit_:
        code = exit_.code
    line = one_line(capsys.readouterr().err)
    assert code == 2 and needle in line and "checkpoint" not in line.split(needle)[0]


def test_choose_next_refuses_non_finite_logits():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="not finite"):
        sample.choose_next(np.array([0.0, math.nan]), 1.0, 0, 1.0, rng)


def test_memory_estimate_covers_the_real_parameter_count():
    from rnncore.charlm import CharLM
    for cell, extra in [("lstm", {"proj_size": 5}), ("gru", {}), ("rnn", {})]:
        cfg = {**runconfig.DEFAULTS, "cell": cell, "hidden": 12, "embed": 7, "layers": 3,
               **extra}
        model = CharLM.from_config(runconfig.for_model(cfg), 11)
        assert runconfig.parameter_count(cfg, 11) == model.num_parameters()
