"""Checkpoint files: named host arrays plus one JSON document, written atomically.

A checkpoint is ``arrays`` (name → NumPy array: parameters, optimizer slots, the carried
hidden state) and ``meta`` (a JSON-able dict: config, vocabulary, step, RNG states,
optimizer scalars). Two formats, picked by the file's suffix:

``.npz``          ``numpy.savez`` of the arrays plus ``__meta__``, the UTF-8 JSON as a
                  uint8 array; read back with ``allow_pickle=False``.
``.safetensors``  the safetensors layout, written here without the package:
                  8-byte little-endian header length N, N bytes of JSON header
                  ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
                  "__metadata__": {"rnncore": <meta JSON>}}``, then the raw
                  little-endian bytes of every tensor, back to back.

Writes go to a temporary file in the same directory, are flushed to disk, and are then
renamed over the target (``os.replace``), so a crash never leaves half a checkpoint.
Every failure to read becomes a one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
META_KEY = "__meta__"
SUFFIXES = (".npz", ".safetensors")

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message is one line naming the file."""


def _format_of(path: Path) -> str:
    if path.suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: checkpoint files end in .npz or .safetensors")
    return path.suffix[1:]


# ---------------------------------------------------------------------------- writing
def save(path, arrays: dict, meta: dict) -> Path:
    """Write ``arrays`` and ``meta`` to ``path`` atomically (temp file + os.replace)."""
    path = Path(path)
    fmt = _format_of(path)
    meta = {"format_version": FORMAT_VERSION, **meta}
    host = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            if fmt == "npz":
                blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
                np.savez(f, **host, **{META_KEY: blob})
            else:
                _write_safetensors(f, host, meta)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_safetensors(f, arrays: dict, meta: dict):
    header, offset = {}, 0
    for name, a in arrays.items():
        if a.dtype not in _ST_NAMES:
            raise TypeError(f"safetensors cannot store {name} of dtype {a.dtype}")
        header[name] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = {"rnncore": json.dumps(meta)}
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)  # align the data section to 8 bytes
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for a in arrays.values():
        f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


# ---------------------------------------------------------------------------- reading
def load(path):
    """(arrays, meta) from a checkpoint; any problem is a one-line CheckpointError."""
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        arrays, meta = _read_npz(path) if fmt == "npz" else _read_safetensors(path)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            UnicodeDecodeError) as err:
        if "allow_pickle" in str(err):  # NumPy's advice to unpickle is not ours to give
            raise CheckpointError(f"{path}: not an rnncore checkpoint (it holds pickled "
                                  "objects, which are never loaded)") from None
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({detail})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not an rnncore checkpoint of format version "
                              f"{FORMAT_VERSION}")
    return arrays, meta


def _read_npz(path: Path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: not an rnncore checkpoint (no {META_KEY} entry)")
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    return arrays, meta


def _read_safetensors(path: Path):
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint (shorter than 8 bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint (header runs past "
                              "the end of the file)")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n:]
    meta_text = header.pop("__metadata__", {}).get("rnncore")
    if meta_text is None:
        raise CheckpointError(f"{path}: not an rnncore checkpoint (no rnncore metadata)")
    arrays = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
        shape = tuple(info["shape"])
        if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * int(
                np.prod(shape, dtype=np.int64)):
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint (tensor {name} "
                                  "lies outside the file)")
        arrays[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).astype(
            dtype.newbyteorder("="))
    return arrays, json.loads(meta_text)
