"""Checkpoint files: both formats round-trip, writes are atomic, bad files fail clearly."""

import json

import numpy as np
import pytest
import safetensors.numpy

from rnncore import checkpoint
from rnncore.checkpoint import CheckpointError

ARRAYS = {"param/w": np.arange(12, dtype=np.float32).reshape(3, 4),
          "param/b": np.linspace(0, 1, 5),
          "state/0": np.zeros((2, 1, 3), np.float32), "ids": np.arange(4, dtype=np.int32)}
META = {"config": {"hidden": 3, "residual": None}, "vocab": ["\n", " ", "a", "é"],
        "rng": {"state": {"state": 2**100 + 7}}}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    path = checkpoint.save(tmp_path / f"ck{suffix}", ARRAYS, META)
    arrays, meta = checkpoint.load(path)
    assert meta["vocab"] == META["vocab"] and meta["rng"] == META["rng"]
    assert set(arrays) == set(ARRAYS)
    for k, v in ARRAYS.items():
        assert arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(arrays[k], v)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_safetensors_layout_is_the_standard_one(tmp_path):
    path = checkpoint.save(tmp_path / "ck.safetensors", ARRAYS, META)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert header["param/w"] == {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}
    assert json.loads(header["__metadata__"]["rnncore"])["vocab"] == META["vocab"]
    loaded = safetensors.numpy.load_file(str(path))  # in the test extra: never skipped
    np.testing.assert_array_equal(loaded["param/b"], ARRAYS["param/b"])


def test_failed_write_keeps_the_old_file(tmp_path):
    path = checkpoint.save(tmp_path / "ck.safetensors", ARRAYS, META)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        checkpoint.save(path, {"bad": np.array(["text"])}, META)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_truncated_and_corrupt_files_name_the_file(tmp_path, suffix):
    good = checkpoint.save(tmp_path / f"good{suffix}", ARRAYS, META).read_bytes()
    for cut in (0, 5, 40, len(good) // 2, len(good) - 3):
        bad = tmp_path / f"cut{cut}{suffix}"
        bad.write_bytes(good[:cut])
        with pytest.raises(CheckpointError) as err:
            checkpoint.load(bad)
        message = str(err.value)
        assert str(bad) in message and "\n" not in message
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="garbage"):
        checkpoint.load(garbage)


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.ones(3))
    with pytest.raises(CheckpointError, match="not an rnncore checkpoint"):
        checkpoint.load(plain)
    with pytest.raises(CheckpointError, match="end in .npz or .safetensors"):
        checkpoint.load(tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "absent.npz")
