"""Property-based: random flags, random configs and corrupted files at the loaders and the
train/sample commands. Every case ends in success or a one-line error, never a traceback,
and stays under a memory bound."""

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnncore import checkpoint, runcheckpoint, runconfig, sample, train
from rnncore.checkpoint import CheckpointError

TINY = ["--hidden", "8", "--embed", "4", "--batch-size", "4", "--seq-len", "8", "--steps",
        "2", "--eval-every", "2", "--eval-chars", "64", "--sample-length", "8", "--quiet",
        "--no-plot", "--impl", "reference"]
MEMORY_BOUND = 64 << 20
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

WILD = st.one_of(st.integers(-5, 5), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.sampled_from(["", "x", "nan", "-inf", "1e400", "0", "-1", "lstm", "none"]),
                 st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert train.main([*TINY, "--out", str(out)]) == 0
    return out / "last.npz"


def run_cli(main, argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err


def assert_clean(code, err):
    assert "Traceback" not in err
    if code != 0:
        lines = [line for line in err.strip().splitlines() if "warning:" not in line]
        assert code in (1, 2) and len(lines) == 1 and "error" in lines[0], err


def flag_value(option, value):
    return ["--" + option.key.replace("_", "-"), str(value)]


VALUE_OPTIONS = [o for o in runconfig.OPTIONS if o.kind is not bool
                 and o.key not in ("out", "resume", "data", "threads", "device")]


@FAST
@given(st.lists(st.tuples(st.sampled_from(VALUE_OPTIONS), WILD), max_size=3))
def test_random_train_flags(tmp_path, capsys, monkeypatch, flags):
    monkeypatch.setenv("RNNCORE_MEMORY_LIMIT", str(MEMORY_BOUND))
    argv = [*TINY]
    for option, value in flags:
        argv += flag_value(option, value)
    out = tmp_path / f"run{abs(hash(str(flags)))}"
    tracemalloc.start()
    try:
        code, err = run_cli(train.main, [*argv, "--out", out, "--overwrite"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_clean(code, err)
    assert peak < 2 * MEMORY_BOUND


@FAST
@given(st.dictionaries(st.sampled_from(sorted(runconfig.BY_KEY)), WILD, max_size=3))
def test_random_checkpoint_configs(tmp_path, capsys, monkeypatch, good, changes):
    monkeypatch.setenv("RNNCORE_MEMORY_LIMIT", str(MEMORY_BOUND))
    arrays, meta = checkpoint.load(good)
    meta.pop("format_version")
    meta["config"].update(changes)
    try:
        path = checkpoint.save(tmp_path / "random.npz", arrays, meta)
    except ValueError:  # json cannot hold it
        return
    tracemalloc.start()
    try:
        code, err = run_cli(sample.main, [path, "--length", "5"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_clean(code, err)
    assert peak < 2 * MEMORY_BOUND


def corrupt(data: bytes, edits, cut):
    raw = bytearray(data)
    for position, byte in edits:
        if raw:
            raw[position % len(raw)] = byte
    return bytes(raw[:cut] if cut is not None else raw)


EDITS = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=6)
CUTS = st.one_of(st.none(), st.integers(0, 4000))


@FAST
@given(EDITS, CUTS, st.sampled_from([".npz", ".safetensors"]))
def test_corrupted_files_at_the_loader(tmp_path, good, edits, cut, suffix):
    arrays, meta = checkpoint.load(good)
    meta.pop("format_version")
    source = checkpoint.save(tmp_path / f"source{suffix}", arrays, meta)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(corrupt(source.read_bytes(), edits, cut))
    tracemalloc.start()
    try:
        try:
            runcheckpoint.load_model(bad)
        except CheckpointError as err:
            assert "\n" not in str(err) and str(bad) in str(err)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND


HEADER_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(),
              st.text(max_size=4)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=4), children, max_size=3)),
    max_leaves=8)
ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F64", "I8", "U8", "BOOL", "X"]), HEADER_VALUES),
    "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=3), HEADER_VALUES),
    "data_offsets": st.one_of(st.lists(st.integers(-2, 2**40), min_size=2, max_size=2),
                              HEADER_VALUES)})


@FAST
@given(st.one_of(HEADER_VALUES, st.dictionaries(st.text(max_size=6),
                                                st.one_of(ENTRY, HEADER_VALUES), max_size=4)),
       st.booleans())
def test_random_safetensors_headers(tmp_path, header, with_meta):
    if with_meta and isinstance(header, dict):
        header["__metadata__"] = {"rnncore": json.dumps({"format_version": 1})}
    text = json.dumps(header).encode()
    path = tmp_path / "random.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(64))
    try:
        arrays, _ = checkpoint.load(path)
        assert all(isinstance(a, np.ndarray) for a in arrays.values())
    except CheckpointError as err:
        assert "\n" not in str(err)


SAMPLE_FLAGS = st.sampled_from(["--length", "--temperature", "--top-k", "--top-p", "--seed",
                                "--device", "--prime"])


@FAST
@given(st.lists(st.tuples(SAMPLE_FLAGS, WILD), max_size=3))
def test_random_sample_flags(good, capsys, flags):
    argv = [good]
    for flag, value in flags:
        if flag == "--length" and isinstance(value, int) and value > 200:
            value = 200
        argv += [flag, str(value)]
    code, err = run_cli(sample.main, argv, capsys)
    assert_clean(code, err)
