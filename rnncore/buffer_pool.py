"""Large host arrays reused from call to call instead of freshly allocated.

A fresh allocation of tens of MB is new memory to the process: glibc maps it (above 32 MiB
always), and every page faults and is zeroed by the kernel at its first touch. In the
compiled CPU driver that cost about 8 % of an LSTM 3×512 forward + backward (B 64, T 100:
three 52 MB gate buffers a call; measured with ``perf stat -e page-faults``: 1 350 fewer
faults and 8–10 % less CPU time per call with the buffers reused).

Every array from here starts on a 64-byte boundary (ALIGN): NumPy's large allocations start
16 bytes past one, so each 64-byte vector load or store of the compiled loops straddled two
cache lines; aligned, the packed step kernel ran 5–10 % faster on an Intel Xeon (alone,
one thread).

``BufferPool.empty(shape, dtype)`` returns a view of one of its byte buffers when one is
free, or a new buffer otherwise. A buffer is free when no array made from it is alive:
every view holds a reference to its base, so CPython's reference count of the buffer tells
(the pool's own references are the only ones left). Arrays handed out may therefore be
kept, returned to users, or dropped; a kept one is never handed out twice. A buffer serves
requests of half its size and more. When it allocates, the pool forgets its oldest free
buffers beyond ``max_buffers`` (their memory goes back to the system), never one in use. A
stacked model's calls can hold more buffers than the bound: an LSTM 3×512 (B 64, T 100)
forward holds 10, a loop of forwards 20 (the module keeps the last call's cache for a
backward). Forgetting the oldest of them, as this pool first did, turned every request of
that cycle into a fresh allocation: 1 000–3 800 page faults a call, none now; the forward
0.97–0.995 of its time before at one thread, 0.96 at two (Intel Xeon, interleaved).
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading

import numpy as np

MIN_BYTES = 1 << 20  # smaller arrays come from malloc's own free lists, without faults
ALIGN = 64  # bytes: a cache line, and the compiled loops' vector width


def address(a: np.ndarray) -> int:
    """The address of ``a``'s first element. Through the buffer protocol where ``a`` is
    writable and C-contiguous: a third of the time of ``a.ctypes.data``, which builds a
    helper object in Python (about 1 µs a call here, and the compiled driver takes some 40
    addresses per layer and pass)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):  # read-only, strided or empty
        return a.ctypes.data


def _aligned_view(buffer: np.ndarray, nbytes: int, shape, dtype) -> np.ndarray:
    """``nbytes`` of the byte array ``buffer`` (ALIGN bytes longer) from its first
    ALIGN-byte boundary, as an array of ``shape`` and ``dtype``."""
    start = -address(buffer) % ALIGN
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


def aligned_empty(shape, dtype) -> np.ndarray:
    """np.empty, starting on an ALIGN-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    return _aligned_view(np.empty(nbytes + ALIGN, np.uint8), nbytes, shape, dtype)


def aligned_zeros(shape, dtype) -> np.ndarray:
    a = aligned_empty(shape, dtype)
    a.fill(0)
    return a


def aligned_copy(a) -> np.ndarray:
    """A C-contiguous, aligned copy of ``a``."""
    out = aligned_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


class BufferPool:
    def __init__(self, max_buffers: int = 16):
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []  # uint8, oldest first
        self._lock = threading.Lock()  # a check-then-take must not interleave

    def empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < MIN_BYTES:
            return aligned_empty(shape, dtype)
        with self._lock:
            buffer = self._free_buffer(nbytes)
            if buffer is None:
                buffer = np.empty(nbytes + ALIGN, np.uint8)
                self._buffers.append(buffer)
                self._forget_free_beyond_bound()
            return _aligned_view(buffer, nbytes, shape, dtype)

    def _forget_free_beyond_bound(self):
        excess = len(self._buffers) - self.max_buffers
        if excess <= 0:
            return
        oldest_free = [k for k in range(len(self._buffers)) if self._is_free(k)][:excess]
        for k in reversed(oldest_free):  # the last first, so that the others' indices hold
            del self._buffers[k]

    def _free_buffer(self, nbytes):
        """The smallest free buffer of ``nbytes`` to twice that, moved to the newest end."""
        sizes = [b.nbytes for b in self._buffers]
        free = [k for k in range(len(sizes))
                if nbytes + ALIGN <= sizes[k] <= 2 * nbytes + ALIGN and self._is_free(k)]
        if not free:
            return None
        buffer = self._buffers.pop(min(free, key=sizes.__getitem__))
        self._buffers.append(buffer)
        return buffer

    def _is_free(self, k) -> bool:
        # references to a free buffer: the list's and getrefcount's argument; a view adds one
        return sys.getrefcount(self._buffers[k]) == 2

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()

    @property
    def held_bytes(self) -> int:
        return sum(b.nbytes - ALIGN for b in self._buffers)
