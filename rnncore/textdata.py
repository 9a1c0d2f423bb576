"""Text as training data: the vocabulary, the held-out split and the BPTT streams.

    text → Vocab.encode → ids → split_text → (train ids, validation ids)
    ids  → Streams: B contiguous streams read T characters at a time
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import backend, corpora
from .corpora import CorpusError


class Vocab:
    """Characters ↔ integer ids (sorted, so the same text always gives the same ids)."""

    def __init__(self, chars):
        self.chars = sorted(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text) -> np.ndarray:
        """Ids of every character: code points looked up in the sorted table by bisection."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        table = np.array([ord(ch) for ch in self.chars], dtype=np.uint32)
        ids = np.searchsorted(table, codes)
        found = table[np.minimum(ids, len(table) - 1)] == codes
        if not found.all():
            missing = chr(int(codes[np.argmin(found)]))
            raise CorpusError(f"the text has character {missing!r}, which the "
                              "checkpoint's vocabulary lacks")
        return ids.astype(np.int32)


class Streams:
    """A text cut into B contiguous streams, read T characters at a time.

    Stream b covers ids[b·L : (b+1)·L + 1]; window w gives inputs (T, B) =
    ids[b·L + w·T + t] and targets shifted by one character. W = ⌊L / T⌋ windows.
    """

    def __init__(self, ids, batch_size, seq_len, device, what="text"):
        L = (len(ids) - 1) // batch_size
        self.windows = L // seq_len
        if self.windows < 1:
            need = batch_size * seq_len + 1
            raise CorpusError(f"the {what} has {len(ids)} characters, fewer than one window "
                              f"needs ({need} = --batch-size {batch_size} × --seq-len "
                              f"{seq_len} + 1)")
        self.seq_len = seq_len
        used = L * batch_size
        inputs = ids[:used].reshape(batch_size, L).T
        targets = ids[1:used + 1].reshape(batch_size, L).T
        self.inputs = backend.to_device(np.ascontiguousarray(inputs), device)
        self.targets = backend.to_device(np.ascontiguousarray(targets), device)

    def streams(self, start, stop) -> Streams:
        """Streams ``start:stop`` alone (a data-parallel rank's share), same windows."""
        part = object.__new__(Streams)
        part.windows, part.seq_len = self.windows, self.seq_len
        xp = backend.xp_of(self.inputs)
        part.inputs = xp.ascontiguousarray(self.inputs[:, start:stop])
        part.targets = xp.ascontiguousarray(self.targets[:, start:stop])
        return part

    def window(self, w):
        s = slice(w * self.seq_len, (w + 1) * self.seq_len)
        return self.inputs[s], self.targets[s]


def load_text(cfg) -> corpora.Corpus:
    """The text a training config names: ``--data FILE`` or a built-in ``--corpus``."""
    if cfg["data"]:
        return corpora.load_file(cfg["data"], cfg["encoding"])
    return corpora.load_corpus(cfg["corpus"], seed=cfg["seed"])


def split_text(ids, val_fraction):
    """(training ids, validation ids): the last ``val_fraction`` of the text is held out."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val:]


def text_hash(text: str) -> str:
    """SHA-256 of the text's UTF-8 bytes, stored in checkpoints to recognise the text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
