"""Experiment sweeps on a Dask cluster (``python -m rnncore.experiments NAME --cluster``):
the same results as the local run, and one-line errors for every way a cluster fails."""

from __future__ import annotations

import math
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rnncore import experiments
from rnncore.experiments import cluster, executors
from rnncore.experiments.__main__ import main
from rnncore.experiments.common import parallel_map


@pytest.fixture(scope="module")
def two_workers():
    """An executor on a LocalCluster of two worker processes, shared by this module."""
    with executors.executor_for(jobs=2, cluster="local") as executor:
        yield executor


def fails_in_one_line(argv, capsys) -> tuple[int, str]:
    """Run the command: (exit code, its one line on stderr); asserts it failed so."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("python -m rnncore.experiments: error: "), err
    return exit_.value.code, lines[0]


def free_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the same results
@pytest.mark.parametrize("name", ["clipping", "depth"])
def test_a_sweep_on_a_local_cluster_equals_the_local_run(name, tmp_path, capsys,
                                                         monkeypatch):
    sent = []
    real_map = cluster.DaskCluster.map

    def counted_map(self, fn, tasks):
        sent.append(len(tasks))
        return real_map(self, fn, tasks)

    monkeypatch.setattr(cluster.DaskCluster, "map", counted_map)
    argv = [name, "--quick", "--seeds", "0,1", "--out"]
    here = main([*argv, str(tmp_path / "here"), "--jobs", "1"])
    printed_here = capsys.readouterr().out
    there = main([*argv, str(tmp_path / "there"), "--cluster", "local", "--jobs", "2"])
    printed_there = capsys.readouterr().out
    assert sent and sum(sent) >= 4, "the runs did not go to the Dask cluster"
    # every number, bit for bit (repr: float round-trips, NaN equals NaN)
    assert repr(here.rows) == repr(there.rows)
    assert (here.table, here.checks, here.verdicts, here.seeds) \
        == (there.table, there.checks, there.verdicts, there.seeds)
    assert printed_here.split("\nwrote ")[0] == printed_there.split("\nwrote ")[0]
    assert [Path(p).name for p in here.pngs] == [Path(p).name for p in there.pngs]
    for mine, theirs in zip(here.pngs, there.pngs):
        assert Path(theirs).parent == tmp_path / "there"
        assert Path(mine).read_bytes() == Path(theirs).read_bytes()


def test_results_come_back_in_task_order(two_workers):
    tasks = [(2, k) for k in range(30)]
    assert parallel_map(pow, tasks, two_workers) == [2 ** k for k in range(30)]


def test_an_argument_the_runs_share_is_sent_once(two_workers, monkeypatch):
    sent = []
    real_scatter = two_workers.client.scatter

    def counted_scatter(data, **options):
        sent.append(data)
        return real_scatter(data, **options)

    monkeypatch.setattr(two_workers.client, "scatter", counted_scatter)
    data = np.arange(100_000.0)
    tasks = [(data, k) for k in range(4)]
    assert parallel_map(np.take, tasks, two_workers) == [0.0, 1.0, 2.0, 3.0]
    assert len(sent) == 1 and sent[0][0] is data


def test_every_worker_runs_with_one_blas_thread(two_workers):
    limited = two_workers.client.run(lambda: executors._BLAS_LIMITS is not None)
    assert len(limited) == 2 and all(limited.values()), limited


# ------------------------------------------------------------------ failures, in one line
def failing_experiment(quick, seeds, out, executor):
    return parallel_map(math.sqrt, [(4.0,), (-1.0,)], executor)


def test_a_run_that_raises_on_a_worker_is_the_usual_one_line_error(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr(experiments.get("vanishing"), "run", failing_experiment)
    argv = ["vanishing", "--quick", "--out", tmp_path]
    failures = [fails_in_one_line([*argv, *where], capsys) for where in
                (["--jobs", "1"], ["--jobs", "2"], ["--cluster", "local", "--jobs", "1"])]
    assert {code for code, _ in failures} == {1}
    assert len({line for _, line in failures}) == 1, failures
    assert "a run of sqrt failed: ValueError: math domain error" in failures[0][1]


def test_an_unreachable_scheduler_fails_in_one_line_within_its_timeout(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    code, line = fails_in_one_line(["clipping", "--quick", "--out", tmp_path / "out",
                                    "--cluster", address], capsys)
    assert time.perf_counter() - start < 15
    assert code == 2 and f"--cluster {address}: cannot reach the scheduler" in line
    assert not list((tmp_path / "out").iterdir()), "it ran anyway"


def test_a_scheduler_without_workers_fails_in_one_line(tmp_path, capsys, monkeypatch):
    from distributed import LocalCluster

    monkeypatch.setattr(cluster, "WORKERS_TIMEOUT_S", 1)
    with LocalCluster(n_workers=0, dashboard_address="127.0.0.1:0") as empty:
        code, line = fails_in_one_line(["clipping", "--quick", "--out", tmp_path,
                                        "--cluster", empty.scheduler_address], capsys)
    assert code == 2 and "has no workers" in line and "dask worker" in line


@pytest.mark.parametrize("address,problem", [
    ("", "a host and a port"), ("myhost", "a host and a port"),
    ("tcp://myhost", "a host and a port"), ("myhost:port", "a bad port"),
    ("myhost:70000", "a bad port"), ("myhost:0", "a host and a port"),
    ("http://myhost:8786", "the scheme is one of"), ("tcp://myhost:8786/x", "nothing after"),
    ("tcp://:8786", "a host and a port"),
])
def test_a_malformed_address_is_refused_in_one_line(address, problem, tmp_path, capsys):
    code, line = fails_in_one_line(["clipping", "--quick", "--out", tmp_path,
                                    "--cluster", address], capsys)
    assert code == 2 and "--cluster" in line and problem in line


@pytest.mark.parametrize("address", ["local", "tcp://myhost:8786", "myhost:8786",
                                     "tls://10.0.0.1:8786", "tcp://[::1]:8786"])
def test_well_formed_addresses_are_accepted(address):
    assert executors.cluster_address(address).endswith(address.split("://")[-1])


def test_jobs_with_a_remote_cluster_is_refused(tmp_path, capsys):
    code, line = fails_in_one_line(["clipping", "--quick", "--out", tmp_path, "--jobs", "2",
                                    "--cluster", "tcp://myhost:8786"], capsys)
    assert code == 2 and "--jobs 2" in line and "--cluster local" in line


def test_without_dask_the_error_names_the_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    monkeypatch.delitem(sys.modules, "rnncore.experiments.cluster")
    monkeypatch.delattr(experiments, "cluster")
    code, line = fails_in_one_line(["clipping", "--quick", "--out", tmp_path / "out",
                                    "--cluster", "local"], capsys)
    assert code == 2 and "pip install 'rnncore[cluster]'" in line
    assert not list((tmp_path / "out").iterdir()), "it ran anyway"
