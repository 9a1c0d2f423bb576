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
import math
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
MAX_META_BYTES = 64 << 20  # the JSON document: config, vocabulary, RNG and optimizer scalars


def load(path, select=None):
    """(arrays, meta) from a checkpoint; any problem is a one-line CheckpointError.

    Nothing is expanded before it is checked: the member table (names, dtypes, shapes)
    is read first, ``select(table)`` (name → (dtype, shape)) returns the names to read and
    may raise CheckpointError, and only those members are read, each exactly as large as
    its declared shape. Without ``select`` every member is read.
    """
    path = Path(path)
    with _open(path) as reader:
        table = reader.table()
        names = set(table) if select is None else select(table)
        arrays = {name: reader.array(name) for name in table if name in names}
        return arrays, reader.meta()


def load_meta(path) -> dict:
    """Only the JSON document of a checkpoint (no array is read)."""
    with _open(Path(path)) as reader:
        return reader.meta()


class _open:
    """A format reader as a context manager that turns every failure into CheckpointError."""

    def __init__(self, path: Path):
        self.path = path
        fmt = _format_of(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        self.cls = _NpzReader if fmt == "npz" else _SafetensorsReader

    def __enter__(self):
        try:
            self.reader = self.cls(self.path)
        except BaseException as err:
            self._translate(err)
        return _Guarded(self)

    def __exit__(self, kind, err, tb):
        self.reader.close()
        if err is not None and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            self._translate(err)
        return False

    def _translate(self, err):
        if isinstance(err, CheckpointError):
            if str(err).startswith(f"{self.path}:"):
                raise err
            raise CheckpointError(f"{self.path}: {err}") from None
        if isinstance(err, MemoryError):
            raise CheckpointError(f"{self.path}: too large to read") from None
        if not isinstance(err, (OSError, ValueError, KeyError, TypeError, EOFError,
                                zipfile.BadZipFile, UnicodeDecodeError, RecursionError,
                                OverflowError, NotImplementedError, RuntimeError)):
            raise err
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{self.path}: corrupt or truncated checkpoint ({detail:.200})"
                              ) from None


class _Guarded:
    """Calls into the reader with its errors translated, so callers see CheckpointError."""

    def __init__(self, opener):
        self.opener = opener

    def __getattr__(self, name):
        method = getattr(self.opener.reader, name)

        def call(*args):
            try:
                return method(*args)
            except BaseException as err:
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                self.opener._translate(err)
        return call


def _parse_meta(path, raw: bytes):
    meta = json.loads(raw.decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not an rnncore checkpoint of format version "
                              f"{FORMAT_VERSION}")
    return meta


class _NpzReader:
    """``numpy.savez`` files read member by member from the zip, headers first."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.members = {}
        for info in self.zip.infolist():
            if not info.filename.endswith(".npy"):
                raise CheckpointError(f"{path}: not an rnncore checkpoint (member "
                                      f"{info.filename[:60]!r} is not an array)")
            self.members[info.filename[:-4]] = info
        self._table = None
        if META_KEY not in self.members:
            self.table()  # a pickled member says more than a missing __meta__
            raise CheckpointError(f"{path}: not an rnncore checkpoint (no {META_KEY} entry)")

    def close(self):
        self.zip.close()

    def _header(self, f):
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{self.path}: unsupported .npy version {version}")
        if dtype.hasobject:
            raise CheckpointError(f"{self.path}: not an rnncore checkpoint (it holds pickled "
                                  "objects, which are never loaded)")
        return shape, fortran, dtype

    def table(self):
        if self._table is None:
            self._table = {}
            for name, info in self.members.items():
                with self.zip.open(info) as f:
                    shape, fortran, dtype = self._header(f)
                self._table[name] = (dtype, shape, fortran)
        return {k: (d, s) for k, (d, s, _) in self._table.items() if k != META_KEY}

    def array(self, name, limit=None):
        with self.zip.open(self.members[name]) as f:
            shape, fortran, dtype = self._header(f)
            nbytes = dtype.itemsize * math.prod(shape)
            if limit is not None and nbytes > limit:
                raise CheckpointError(f"{self.path}: {name} declares {nbytes:,} bytes, more "
                                      f"than the {limit:,} allowed")
            data = f.read(nbytes)
        if len(data) != nbytes:
            raise CheckpointError(f"{self.path}: corrupt or truncated checkpoint ({name} is "
                                  "shorter than its shape)")
        out = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
        return out.astype(dtype.newbyteorder("="), order="C")

    def meta(self):
        blob = self.array(META_KEY, MAX_META_BYTES)
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise CheckpointError(f"{self.path}: not an rnncore checkpoint ({META_KEY} is "
                                  "not UTF-8 bytes)")
        return _parse_meta(self.path, blob.tobytes())


class _SafetensorsReader:
    """The safetensors layout, header validated before any tensor is read."""

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("rb")
        size = path.stat().st_size
        head = self.file.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint (shorter than "
                                  "8 bytes)")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > MAX_META_BYTES:
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint (header of {n:,} "
                                  "bytes runs past the end of the file or the size limit)")
        header = json.loads(self.file.read(n).decode("utf-8"))
        self.body_start, body_size = 8 + n, size - 8 - n
        if not isinstance(header, dict):
            self._bad(f"the header is a JSON {type(header).__name__}, not an object")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not isinstance(metadata.get("rnncore"), str):
            raise CheckpointError(f"{path}: not an rnncore checkpoint (no rnncore metadata)")
        self.meta_text = metadata["rnncore"]
        self.tensors = {}
        for name, info in header.items():
            if not isinstance(info, dict):
                self._bad(f"entry {name[:60]!r} is not an object")
            dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if dtype not in _ST_DTYPES:
                self._bad(f"entry {name[:60]!r} has unknown dtype {dtype!r:.20}")
            if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
                self._bad(f"entry {name[:60]!r} has a shape that is not a list of sizes")
            if not (isinstance(offsets, list) and len(offsets) == 2
                    and all(_is_count(o) for o in offsets)):
                self._bad(f"entry {name[:60]!r} has data_offsets that are not [begin, end]")
            dt = np.dtype(_ST_DTYPES[dtype]).newbyteorder("<")
            begin, end = offsets
            if not begin <= end <= body_size or end - begin != dt.itemsize * math.prod(shape):
                raise CheckpointError(f"{path}: corrupt or truncated checkpoint (tensor "
                                      f"{name[:60]} lies outside the file)")
            self.tensors[name] = (dt, tuple(shape), begin, end)

    def _bad(self, what):
        raise CheckpointError(f"{self.path}: malformed safetensors header ({what})")

    def close(self):
        self.file.close()

    def table(self):
        return {k: (np.dtype(d.newbyteorder("=")), s) for k, (d, s, _, _) in self.tensors.items()}

    def array(self, name):
        dtype, shape, begin, end = self.tensors[name]
        self.file.seek(self.body_start + begin)
        data = self.file.read(end - begin)
        if len(data) != end - begin:
            raise CheckpointError(f"{self.path}: corrupt or truncated checkpoint ({name} is "
                                  "shorter than its shape)")
        return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))

    def meta(self):
        return _parse_meta(self.path, self.meta_text.encode("utf-8"))


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
