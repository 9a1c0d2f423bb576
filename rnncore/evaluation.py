"""Validation loss of a character model over held-out streams."""

from __future__ import annotations

from .charlm import CharLM
from .textdata import Streams


def evaluate(model: CharLM, streams: Streams, max_windows=None) -> float:
    """Mean validation loss (nats/char), state carried across windows from a fresh start."""
    total, count, state = 0.0, 0, None
    windows = streams.windows if max_windows is None else min(streams.windows, max_windows)
    with model.inference():
        for w in range(windows):
            x, y = streams.window(w)
            loss, state = model.loss(x, y, state)
            total = total + loss
            count += 1
    return float(total) / count
