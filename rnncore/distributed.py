"""Data-parallel training over MPI: N ranks, each holding a disjoint share of the B streams.

    mpiexec -n N python -m rnncore.train --distributed …

Every rank builds the same model from the same seed, trains on its share of the streams
(``share``: rank r holds streams ⌊rB/N⌋ … ⌊(r+1)B/N⌋ − 1; when N does not divide B the
shares differ by one stream), and after each backward pass the ranks sum their gradients
(``all_reduce``). A rank's loss is its share's summed loss divided by the whole batch's
T·B positions, so the sum over ranks is the gradient of the one-process mean loss; every
rank then clips and steps identically and the parameters stay equal on all ranks.

The sum is taken in a fixed order, rank 0 + rank 1 + … + rank N−1, whatever the MPI
library's own reduction algorithm: an all-to-all hands rank r the r-th slice of every
rank's gradient, rank r adds those slices in rank order, and an all-gather returns the
summed slices to everyone. It moves 2(N−1)/N of the gradient's bytes per rank, as a
ring all-reduce does, and makes a run bitwise reproducible and bitwise equal on all
ranks. It is not bitwise equal to one process with B streams: that process's GEMMs sum
the batch rows in the BLAS library's blocked order, the ranks in shares (see the README).

On a GPU the sum goes through NCCL (``cupy.cuda.nccl``, a ring: identical on all ranks,
not in rank order) when CuPy has it, else through host memory and MPI as above.

Every collective waits at most ``timeout`` seconds (nonblocking MPI calls, polled): a rank
that died or hangs makes the others print one line and abort the whole job
(``MPI_Abort``) instead of waiting for ever. Checkpoints are written atomically by rank 0
alone, so the last one written is kept.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from . import backend

INSTALL = "pip install 'rnncore[distributed]'"
POLL_MAX = 5e-4  # seconds: the longest pause between two polls of a pending collective


class DistributedError(RuntimeError):
    """MPI cannot be used (not installed, or the world cannot be set up)."""


def share(total: int, size: int, rank: int) -> tuple[int, int]:
    """(start, stop) of rank ``rank``'s rows among ``total`` split over ``size`` ranks."""
    return rank * total // size, (rank + 1) * total // size


def connect(timeout: float, prog: str) -> World:
    """The MPI world of this process (a world of one when not started by mpiexec)."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise DistributedError(f"--distributed needs mpi4py and an MPI library: {INSTALL} "
                               f"({err})") from None
    return World(MPI, MPI.COMM_WORLD, timeout, prog)


class World:
    """This rank's view of the job: its rank, the collectives (each with a deadline), and
    the seconds spent inside the gradient sum (``comm_seconds``)."""

    def __init__(self, mpi, comm, timeout: float, prog: str):
        self.mpi, self.comm, self.timeout, self.prog = mpi, comm, float(timeout), prog
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_rank = comm.Split_type(mpi.COMM_TYPE_SHARED).Get_rank()
        self.comm_seconds = 0.0
        self._nccl = None

    def share(self, total: int) -> tuple[int, int]:
        return share(total, self.size, self.rank)

    # ------------------------------------------------------------------ waiting
    def abort(self, message: str):
        """One line on stderr, then end every rank of the job."""
        print(f"{self.prog}: error: rank {self.rank}: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(1)

    def _wait(self, request, what: str):
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not request.Test():
            if time.monotonic() > deadline:
                self.abort(f"no answer from the other ranks within --comm-timeout "
                           f"{self.timeout:g} s during {what}: a rank has died or hangs; "
                           "stopping all ranks (the last checkpoint written is kept)")
            time.sleep(pause)
            pause = min(POLL_MAX, 2 * pause or 1e-6)

    def _mpi_type(self, dtype):
        return {np.dtype(np.float32): self.mpi.FLOAT, np.dtype(np.float64): self.mpi.DOUBLE,
                np.dtype(np.int32): self.mpi.INT}[np.dtype(dtype)]

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, grads: dict, extras) -> np.ndarray:
        """Sum every rank's ``grads`` in place, and the numbers ``extras`` (the loss, stop
        votes), which come back as a host array. All ranks must call it, with the same
        names and shapes in the same order."""
        started = time.perf_counter()
        values = list(grads.values())
        xp = backend.xp_of(values[0])
        tail = xp.asarray([float(e) for e in extras], dtype=values[0].dtype)
        flat = xp.concatenate([g.reshape(-1) for g in values] + [tail])
        if xp is np:
            total = self._sum_in_rank_order(flat)
        elif self._use_nccl():
            total = self._nccl.all_reduce(flat, self)
        else:  # a GPU without NCCL: through host memory
            total = xp.asarray(self._sum_in_rank_order(backend.to_numpy(flat)))
        offset = 0
        for g in values:
            g[...] = total[offset:offset + g.size].reshape(g.shape)
            offset += g.size
        reduced = backend.to_numpy(total[offset:])
        self.comm_seconds += time.perf_counter() - started
        return reduced

    def _sum_in_rank_order(self, flat: np.ndarray) -> np.ndarray:
        n = self.size
        if n == 1:
            return flat
        chunk = -(-flat.size // n)
        send = np.zeros(n * chunk, dtype=flat.dtype)
        send[:flat.size] = flat
        slices = np.empty((n, chunk), dtype=flat.dtype)  # row r: rank r's slice of ours
        self._wait(self.comm.Ialltoall(send, slices), "the gradient sum (all-to-all)")
        mine = slices[0].copy()
        for r in range(1, n):
            mine += slices[r]
        total = np.empty(n * chunk, dtype=flat.dtype)
        self._wait(self.comm.Iallgather(mine, total), "the gradient sum (all-gather)")
        return total[:flat.size]

    def gather_rows(self, state, total: int):
        """The carried state of the whole batch of ``total`` rows on rank 0 (None
        elsewhere): each part's (layers, rows, width) shares joined along the rows in rank
        order, as host arrays."""
        if state is None:
            return None
        parts = state if isinstance(state, tuple) else (state,)
        rows = np.diff([share(total, self.size, r)[0] for r in range(self.size)] + [total])
        whole = []
        for part in parts:
            part = backend.to_numpy(part)
            layers, _, width = part.shape
            counts = rows * layers * width
            send = np.ascontiguousarray(part.transpose(1, 0, 2))
            recv = (np.empty((total, layers, width), dtype=part.dtype)
                    if self.rank == 0 else None)
            spec = ([recv, counts, np.concatenate([[0], np.cumsum(counts)[:-1]]),
                     self._mpi_type(part.dtype)] if self.rank == 0 else None)
            self._wait(self.comm.Igatherv(send, spec, root=0), "gathering the carried state")
            whole.append(None if recv is None else np.ascontiguousarray(recv.transpose(1, 0, 2)))
        if self.rank:
            return None
        return tuple(whole) if isinstance(state, tuple) else whole[0]

    def broadcast_code(self, code: int, what: str) -> int:
        """Rank 0's ``code`` on every rank (the others pass anything)."""
        buf = np.array([code], dtype=np.int32)
        self._wait(self.comm.Ibcast(buf, root=0), what)
        return int(buf[0])

    def all_ok(self, ok: bool, what: str) -> list:
        """Every rank's ``ok``, in rank order."""
        mine = np.array([int(ok)], dtype=np.int32)
        every = np.empty(self.size, dtype=np.int32)
        self._wait(self.comm.Iallgather(mine, every), what)
        return [bool(v) for v in every]

    # ------------------------------------------------------------------ GPUs
    def _use_nccl(self) -> bool:
        """NCCL for CuPy arrays when CuPy was built with it. Written for GPUs with
        nvidia-nccl-cu12; not exercised by the tests (they run on CPUs)."""
        if self._nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError:
                self._nccl = False
            else:
                self._nccl = NcclSum(self, nccl) if getattr(nccl, "available", True) else False
        return bool(self._nccl)


class NcclSum:
    """A ring all-reduce of a CuPy vector through NCCL, its id handed out over MPI."""

    def __init__(self, world: World, nccl):
        self.nccl = nccl
        uid = nccl.get_unique_id() if world.rank == 0 else None
        uid = world.comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)

    def all_reduce(self, flat, world: World):
        import cupy

        kind = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                np.dtype(np.float64): self.nccl.NCCL_FLOAT64}[flat.dtype]
        stream = cupy.cuda.get_current_stream()
        self.comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, kind, self.nccl.NCCL_SUM,
                            stream.ptr)
        deadline = time.monotonic() + world.timeout
        while not stream.done:
            if time.monotonic() > deadline:
                self.comm.abort()
                world.abort(f"NCCL all-reduce did not finish within --comm-timeout "
                            f"{world.timeout:g} s: a rank has died or hangs")
            time.sleep(POLL_MAX)
        return flat
