"""Data-parallel training over MPI (rnncore.distributed), with two ranks on the CPU.

The ranks run under the ``mpiexec`` of the ``mpich`` wheel, which the test extra installs
beside the interpreter; a missing mpiexec or mpi4py fails these tests, it does not skip them.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rnncore import backend, distributed, train
from rnncore.checkpoint import load_meta

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
TINY = ["--layers", "2", "--hidden", "16", "--embed", "8", "--batch-size", "4",
        "--seq-len", "16", "--steps", "6", "--eval-every", "3", "--eval-chars", "256",
        "--log-every", "1", "--warmup", "2", "--quiet", "--no-plot"]
# every draw a training step makes from the model's generator, in float64
RANDOM = ["--dtype", "float64", "--dropout", "0.3", "--zoneout-h", "0.1",
          "--recurrent-dropout", "0.2", "--init-state", "normal", "--grad-noise", "0.01",
          "--h-detach", "0.3"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}


def launch(ranks, args, *, code=None, timeout=120):
    """``mpiexec -n ranks python -m rnncore.train ARGS`` (or ``python -c code ARGS``)."""
    assert MPIEXEC.is_file(), f"no {MPIEXEC}: install the test extra (it brings mpich)"
    program = ["-m", "rnncore.train"] if code is None else ["-c", code]
    return subprocess.run([str(MPIEXEC), "-n", str(ranks), sys.executable, *program,
                           *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def alone(args, capsys):
    """rnncore.train in this process: (exit code, stderr)."""
    try:
        code = train.main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(s)["loss"] for s in lines if json.loads(s)["kind"] == "train"]


def checkpoint(run_dir):
    with np.load(Path(run_dir) / "last.npz") as f:
        return {k: f[k] for k in f.files if k.startswith(("param/", "optim/", "state/"))}


def assert_close(a: dict, b: dict, rtol, atol):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("total,size", [(4, 2), (5, 2), (7, 3), (3, 3)])
def test_shares_are_disjoint_and_cover_the_batch(total, size):
    shares = [distributed.share(total, size, r) for r in range(size)]
    assert shares[0][0] == 0 and shares[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    assert max(b - a for a, b in shares) - min(b - a for a, b in shares) <= 1
    assert all(b > a for a, b in shares)


def test_a_share_draws_the_rows_of_the_whole_batch():
    whole, part = backend.Generator(5), backend.Generator(5)
    full = whole.keep_mask(0.5, (3, 6, 4), np.float64, batch_axis=1)
    with part.batch_share(2, 5, 6):
        rows = part.keep_mask(0.5, (3, 3, 4), np.float64, batch_axis=1)
    np.testing.assert_array_equal(rows, full[:, 2:5])
    assert whole.get_state() == part.get_state()  # both advanced by the whole batch's draw


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize("extra,rtol,atol", [
    (["--dtype", "float32"], 1e-4, 1e-6),
    (RANDOM, 1e-10, 1e-13),
    (RANDOM + ["--batch-size", "5"], 1e-10, 1e-13),  # 3 + 2 streams
], ids=["float32", "float64-masks", "float64-uneven"])
def test_two_ranks_equal_one_process(tmp_path, capsys, extra, rtol, atol):
    """Same losses and final parameters, optimizer slots and carried state, to float
    rounding: the ranks' GEMMs sum the batch in shares, one process's in BLAS's blocks."""
    args = TINY + extra
    assert alone(args + ["--out", tmp_path / "one"], capsys)[0] == 0
    done = launch(2, args + ["--distributed", "--out", tmp_path / "two"])
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"),
                               rtol=rtol, atol=atol)
    assert_close(checkpoint(tmp_path / "two"), checkpoint(tmp_path / "one"), rtol, atol)
    assert not (tmp_path / "one" / "metrics.jsonl").read_text().count("comm_ms_per_step")
    comm = [json.loads(s).get("comm_ms_per_step")
            for s in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
            if json.loads(s)["kind"] == "train"]
    assert len(comm) == 6 and all(c > 0 for c in comm)


def test_the_rank_order_sum_is_bitwise_reproducible(tmp_path):
    for name in ("a", "b"):
        done = launch(2, TINY + ["--dtype", "float32", "--distributed", "--out",
                                 tmp_path / name])
        assert done.returncode == 0, done.stderr
    a, b = checkpoint(tmp_path / "a"), checkpoint(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_distributed_without_mpiexec_is_one_rank(tmp_path, capsys):
    assert alone(RANDOM + TINY + ["--out", tmp_path / "one"], capsys)[0] == 0
    done = subprocess.run([sys.executable, "-m", "rnncore.train", *RANDOM, *TINY,
                           "--distributed", "--out", str(tmp_path / "world1")],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_close(checkpoint(tmp_path / "world1"), checkpoint(tmp_path / "one"), 1e-12, 1e-14)


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_ranks(tmp_path, capsys, first, then):
    """Stopped at step 3 and resumed on the other world size: the streams and their state
    are re-split, and the run ends where an unbroken one-process run does."""
    args = [a for a in TINY if a != "--quiet"] + RANDOM  # the resume prints a note

    def run(ranks, more):
        if ranks == 1:
            code, err = alone(args + more, capsys)
            return code, err, ""  # the note is printed only when the world size changes
        done = launch(2, args + more + ["--distributed"])
        return done.returncode, done.stderr, done.stdout

    assert alone(args + ["--out", tmp_path / "unbroken"], capsys)[0] == 0
    code, err, _ = run(first, ["--steps", "3", "--schedule-steps", "6",
                               "--out", tmp_path / "split"])
    assert code == 0, err
    code, err, out = run(then, ["--resume", tmp_path / "split"])
    assert code == 0, err
    if then == 2:
        assert "re-split" in out
    assert_close(checkpoint(tmp_path / "split"), checkpoint(tmp_path / "unbroken"),
                 1e-10, 1e-13)
    np.testing.assert_allclose(losses(tmp_path / "split"), losses(tmp_path / "unbroken"),
                               rtol=1e-10)


# ----------------------------------------------------------------------------- failures
# rank 1 dies or hangs in its third gradient sum, after rank 0 has written step 1's checkpoint
RANK_1_FAILS = """
import os, signal, sys, time
from rnncore import distributed, train
how = os.environ["HOW"]
original, calls = distributed.World.all_reduce, []
def failing(self, grads, extras):
    calls.append(1)
    if self.rank == 1 and len(calls) == 3:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)
    return original(self, grads, extras)
distributed.World.all_reduce = failing
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("how", ["hang", "kill"])
def test_a_failed_rank_stops_the_job_and_keeps_the_checkpoint(tmp_path, how):
    ENV["HOW"] = how
    started = time.monotonic()
    try:
        done = launch(2, TINY + ["--eval-every", "1", "--distributed", "--comm-timeout", "3",
                                 "--out", tmp_path], code=RANK_1_FAILS, timeout=60)
    finally:
        del ENV["HOW"]
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    if how == "hang":  # ours: rank 0 waited --comm-timeout, said so and aborted the job
        lines = [s for s in done.stderr.splitlines() if s.startswith("rnncore.train: error")]
        assert len(lines) == 1 and "no answer from the other ranks within --comm-timeout 3 s" \
            in lines[0], done.stderr
    else:  # mpiexec saw rank 1 die and ended rank 0
        assert "signal 9" in done.stdout + done.stderr, done.stdout + done.stderr
    assert checkpoint(tmp_path)["param/head.bias"].shape[0] > 0  # still a whole checkpoint


RANK_1_DIVERGES = """
import sys
import numpy as np
from mpi4py import MPI
from rnncore import train
from rnncore.charlm import CharLM
original, calls = CharLM.loss, []
def poisoned(self, *args):
    loss, state = original(self, *args)
    calls.append(1)
    if MPI.COMM_WORLD.Get_rank() == 1 and len(calls) > 4:
        loss = loss * np.nan
    return loss, state
CharLM.loss = poisoned
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_diverging_share_stops_every_rank_with_one_line(tmp_path):
    """Rank 1's loss turns NaN at step 5: the summed loss is NaN on every rank, so all
    stop at the same log line; rank 0 says so once and its step-3 checkpoint is kept."""
    done = launch(2, TINY + ["--log-every", "2", "--distributed", "--out", tmp_path],
                  code=RANK_1_DIVERGES, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = [s for s in done.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and "loss became nan by step 6" in lines[0], done.stderr
    assert load_meta(tmp_path / "last.npz")["step"] == 3


@pytest.mark.parametrize("ranks,flags,message", [
    (3, ["--batch-size", "2"], "--distributed over 3 ranks needs at least one stream per "
                               "rank, but --batch-size is 2"),
    (2, ["--lr", "-1"], "--lr must be > 0, got -1.0"),
], ids=["more-ranks-than-streams", "bad-flag"])
def test_bad_input_is_one_line_from_rank_0(tmp_path, ranks, flags, message):
    done = launch(ranks, TINY + flags + ["--distributed", "--out", tmp_path])
    assert done.returncode == 2
    assert done.stderr.strip() == "rnncore.train: error: " + message
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_ctrl_c_stops_every_rank_at_the_same_step_and_saves(tmp_path):
    """mpiexec hands SIGINT to every rank; the ranks' votes ride with the gradient sum."""
    assert MPIEXEC.is_file()
    job = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, "-m", "rnncore.train",
                            *TINY, "--steps", "100000", "--eval-every", "100000",
                            "--distributed", "--out", str(tmp_path)],
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ((tmp_path / "metrics.jsonl").is_file()
               and (tmp_path / "metrics.jsonl").read_text().count('"train"') >= 3):
        assert time.monotonic() < deadline and job.poll() is None, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 130, err
    stopped = re.search(r"interrupted at step (\d+); saved", err)
    assert stopped and f"continue with --resume {tmp_path}" in err, err
    assert load_meta(tmp_path / "last.npz")["step"] == int(stopped.group(1)) >= 3


def test_distributed_without_mpi4py_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    code, err = alone(TINY + ["--distributed", "--out", tmp_path], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "pip install 'rnncore[distributed]'" in err


def test_gradflow_is_refused_with_distributed(tmp_path, capsys):
    code, err = alone(TINY + ["--distributed", "--gradflow-every", "2", "--out", tmp_path],
                      capsys)
    assert code == 2 and "--gradflow-every" in err and len(err.strip().splitlines()) == 1
