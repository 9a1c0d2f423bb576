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

from dask.system import CPU_COUNT
from distributed import Client, LocalCluster, WorkerPlugin

from .executors import LOCAL, ClusterError, one_blas_thread, run_failed

CONNECT_TIMEOUT_S = 10  # to reach the scheduler
WORKERS_TIMEOUT_S = 60  # for its first worker
PLAIN_VALUES = (bool, int, float, complex, str, bytes, type(None))


class OneBlasThread(WorkerPlugin):
    """Run on every worker as it starts: one BLAS/OpenMP thread in its process."""

    name = "rnncore-one-blas-thread"

    def setup(self, worker):
        one_blas_thread()


class DaskCluster:
    """An executor on the Dask scheduler at ``address``, or on a LocalCluster of
    ``workers`` single-threaded processes (default: one per core) for ``local``."""

    def __init__(self, address: str, workers: int | None = None):
        self.address, self.workers = address, workers
        self._local = self.client = None

    def __enter__(self):
        try:
            if self.address == LOCAL:
                self._local = LocalCluster(n_workers=self.workers or CPU_COUNT,
                                           threads_per_worker=1, processes=True,
                                           dashboard_address="127.0.0.1:0",
                                           silence_logs=logging.ERROR)
            self.client = Client(self._local or self.address, timeout=CONNECT_TIMEOUT_S)
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            self.client.register_plugin(OneBlasThread())
        except (OSError, TimeoutError) as err:
            self.__exit__(None, None, None)
            raise ClusterError(f"--cluster {self.address}: {self._problem(err)}") from None
        return self

    def _problem(self, err) -> str:
        if self.client is None:
            return f"cannot reach the scheduler: {err}"
        return (f"the scheduler has no workers after {WORKERS_TIMEOUT_S} s (start some: "
                f"dask worker {self.address} --nthreads 1)")

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self._local is not None:
            self._local.close()

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
