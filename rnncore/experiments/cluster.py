"""The experiments' independent runs on a Dask distributed cluster (``--cluster``).

    with DaskCluster("tcp://host:8786") as executor:   # or "local": a LocalCluster here
        results = executor.map(one_run, tasks)         # in task order

Each run is one Dask task; the results are gathered in submission order. An argument
that several runs share (the data set) is sent to the cluster once. Every worker process
runs with one BLAS/OpenMP thread, as the local pool's do (the ``OneBlasThread`` plugin,
which also reaches workers that join later). The workers of a remote cluster need rnncore
installed (``pip install 'rnncore[cluster]'``), the same version as the client's.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import ExitStack, contextmanager

from dask.system import CPU_COUNT
from distributed import Client, LocalCluster, WorkerPlugin

from .executors import INSTALL, LOCAL, ClusterError, one_blas_thread, one_line, run_failed

CONNECT_TIMEOUT_S = 10  # to reach the scheduler
WORKERS_TIMEOUT_S = 60  # for its first worker
PLAIN_VALUES = (bool, int, float, complex, str, bytes, type(None))


class OneBlasThread(WorkerPlugin):
    """Run on every worker as it starts: one BLAS/OpenMP thread in its process."""

    name = "rnncore-one-blas-thread"

    def setup(self, worker):
        one_blas_thread()


@contextmanager
def quiet(logger_name: str):
    """The logger's terminal handlers silenced for the block: Dask logs what goes wrong (a
    lost scheduler, with tracebacks) as well as raising it, and the raised error is what
    reaches the user, in one line."""
    handlers = [h for h in logging.getLogger(logger_name).handlers
                if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels):
            handler.setLevel(level)


class DaskCluster:
    """An executor on the Dask scheduler at ``address``, or on a LocalCluster of
    ``workers`` single-threaded processes (default: one per core) for ``local``."""

    def __init__(self, address: str, workers: int | None = None):
        self.address, self.workers = address, workers
        self.client = None
        self._open = ExitStack()

    def __enter__(self):
        self._open.enter_context(quiet("distributed"))
        try:
            self._connect()
        except BaseException:
            self._open.close()
            raise
        return self

    def _connect(self):
        scheduler = self.address
        if self.address == LOCAL:
            try:
                scheduler = self._open.enter_context(LocalCluster(
                    n_workers=self.workers or CPU_COUNT, threads_per_worker=1,
                    processes=True, dashboard_address="127.0.0.1:0",
                    silence_logs=logging.CRITICAL))
            except Exception as err:
                raise self._error(f"cannot start a LocalCluster: {one_line(err)}") from None
        try:
            self.client = self._open.enter_context(Client(scheduler,
                                                          timeout=CONNECT_TIMEOUT_S))
        except OSError as err:
            raise self._error(f"cannot reach the scheduler: {one_line(err)}") from None
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise self._error(f"the scheduler has no workers after {WORKERS_TIMEOUT_S} s "
                              f"(start some: dask worker {self.address} --nthreads 1)"
                              ) from None
        try:
            self.client.register_plugin(OneBlasThread())
        except Exception as err:
            raise self._error(f"its workers cannot run rnncore ({one_line(err)}); install "
                              f"it on each: {INSTALL}") from None

    def _error(self, problem) -> ClusterError:
        return ClusterError(f"--cluster {self.address}: {problem}")

    def __exit__(self, *exc):
        self._open.close()

    def map(self, fn, tasks) -> list:
        try:
            futures = [self.client.submit(fn, *task, pure=False)
                       for task in self._send_shared_once(tasks)]
            return self.client.gather(futures)
        except Exception as err:
            raise run_failed(fn, err) from err

    def _send_shared_once(self, tasks) -> list:
        """``tasks``, each argument object that several hold (the data set) replaced by
        the future of one copy sent to the cluster."""
        tasks = [tuple(task) for task in tasks]
        holders = Counter(id(a) for task in tasks for a in task
                          if not isinstance(a, PLAIN_VALUES))
        futures = {}

        def sent(arg):
            if holders[id(arg)] < 2:
                return arg
            if id(arg) not in futures:
                futures[id(arg)] = self.client.scatter([arg], hash=False)[0]
            return futures[id(arg)]

        return [tuple(sent(arg) for arg in task) for task in tasks]
