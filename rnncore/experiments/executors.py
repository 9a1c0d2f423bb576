"""Where an experiment's independent seeded runs execute: in this process, in a pool of
local worker processes (``--jobs N``), or on a Dask cluster (``--cluster ADDRESS``, see
``rnncore.experiments.cluster``).

    with executor_for(jobs=2) as executor:            # or cluster="tcp://host:8786"
        results = executor.map(one_run, tasks)        # [one_run(*task) for task in tasks]

Every executor returns the results in task order, and every run is seeded, so the results
do not depend on the executor. A run that raises ends the map in ``RunFailed``; a cluster
that cannot be used (no Dask, a malformed or unreachable address) in ``ClusterError``.
"""

from __future__ import annotations

import multiprocessing
from contextlib import contextmanager
from urllib.parse import urlsplit

from threadpoolctl import threadpool_limits

LOCAL = "local"  # --cluster local: a Dask LocalCluster on this machine
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # Dask's network transports
INSTALL = "pip install 'rnncore[cluster]'"


class RunFailed(RuntimeError):
    """One of the independent runs raised; the message names its function and the error."""


class ClusterError(RuntimeError):
    """The Dask cluster cannot be used: Dask missing, or the scheduler unreachable."""


def one_line(err: BaseException) -> str:
    """The error's message on one line, shortened to 300 characters."""
    return f"{' '.join(str(err).split()) or '(no message)':.300}"


def run_failed(fn, err: BaseException) -> RunFailed:
    return RunFailed(f"a run of {fn.__name__} failed: {type(err).__name__}: {one_line(err)}")


def one_blas_thread():
    """Limit this process's BLAS and OpenMP pools to one thread, for its lifetime: several
    processes each running multi-threaded BLAS on these small matrices oversubscribe the
    cores and run many times slower."""
    global _BLAS_LIMITS
    _BLAS_LIMITS = threadpool_limits(limits=1)


_BLAS_LIMITS = None


class InProcess:
    """The runs one after another in this process."""

    def map(self, fn, tasks) -> list:
        results = []
        for task in tasks:
            try:
                results.append(fn(*task))
            except Exception as err:
                raise run_failed(fn, err) from err
        return results


class ProcessPool:
    """The runs over ``jobs`` spawned worker processes (fresh interpreters), each with one
    BLAS thread."""

    def __init__(self, jobs: int):
        self.jobs = jobs

    def map(self, fn, tasks) -> list:
        tasks = list(tasks)
        if len(tasks) <= 1:
            return InProcess().map(fn, tasks)
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(self.jobs, len(tasks)), initializer=one_blas_thread) as pool:
            try:
                return pool.starmap(fn, tasks)
            except Exception as err:
                raise run_failed(fn, err) from err


def cluster_address(text: str) -> str:
    """``local``, or a scheduler's address ``[SCHEME://]HOST:PORT`` (SCHEME one of
    ``SCHEMES``, tcp when left out), returned with its scheme; ValueError otherwise."""
    text = text.strip()
    if text == LOCAL:
        return LOCAL
    address = text if "://" in text else "tcp://" + text
    expected = f"expected {LOCAL} or tcp://HOST:PORT, got {text!r:.80}"
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        raise ValueError(f"{expected} (a bad port)") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{expected} (the scheme is one of {', '.join(SCHEMES)})")
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"{expected} (a host and a port are needed)")
    if parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{expected} (an address has nothing after the port)")
    return address


def dask_cluster():
    """The module ``rnncore.experiments.cluster``; ClusterError naming the extra to install
    when Dask's distributed scheduler cannot be imported."""
    try:
        from . import cluster
    except ImportError as err:
        raise ClusterError(f"--cluster needs Dask's distributed scheduler ({err}); "
                           f"install it with: {INSTALL}") from None
    return cluster


@contextmanager
def executor_for(jobs: int | None = None, cluster: str | None = None):
    """The executor for ``--jobs`` and ``--cluster``, open for the ``with`` block.

    Without ``cluster``: ``jobs`` (default 1) local processes. With ``cluster``: the Dask
    scheduler at that address, or for ``local`` a LocalCluster of ``jobs`` worker
    processes (default: one per core). ``jobs`` with a remote cluster is refused: its
    workers are whatever was started there.
    """
    if cluster is None:
        yield ProcessPool(jobs) if jobs is not None and jobs > 1 else InProcess()
        return
    address = cluster_address(cluster)
    if address != LOCAL and jobs is not None:
        raise ClusterError(f"--jobs {jobs}: a remote cluster runs on the workers started "
                           f"there; --jobs sizes only --cluster {LOCAL}")
    with dask_cluster().DaskCluster(address, workers=jobs) as executor:
        yield executor
