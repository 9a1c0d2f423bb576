"""Every flag of the instrument commands (gradflow, experiments, bench, compare_torch):
bad values end in a one-line error naming the flag (exit 2), never a traceback; explicit
sizes win over --quick; and -m gpu fails when the GPU tests cannot run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnncore import bench, cells, compare_torch, gradflow
from rnncore.experiments import __main__ as experiments_main

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line_exit(parse, argv, capsys):
    """Run ``parse(argv)``: (exit code or None, stderr); asserts any error is one line."""
    try:
        parse([str(a) for a in argv])
        code = None
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code is not None:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "error" in lines[0], err
    return code, err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    return path


BAD = {
    "gradflow": (gradflow.parse_args, [
        (["--T", "0"], "--T"), (["--T", "-3"], "--T"), (["--batch", "0"], "--batch"),
        (["--hidden", "-1"], "--hidden"), (["--depths", "0,2"], "--depths"),
        (["--depths", ""], "--depths"), (["--depths", "2,x"], "--depths"),
        (["--seed", "-1"], "--seed"), (["--cells", "transformer"], "--cells"),
        (["--residual", "sideways"], "--residual"), (["--init", "zero"], "--init"),
        (["--init-state", "ones"], "--init-state"), (["--loss", "middle"], "--loss"),
        (["--hidden", "100000", "--batch", "1000"], "--hidden")]),
    "experiments": (experiments_main.parse_args, [
        (["transformer"], "name"), (["depth", "--seeds", "-1"], "--seeds"),
        (["depth", "--seeds", ","], "--seeds"), (["depth", "--seeds", "0,0"], "--seeds"),
        (["depth", "--seeds", "a"], "--seeds"), (["depth", "--jobs", "0"], "--jobs"),
        (["depth,adding"], "one experiment")]),
    "bench": (bench.parse_args, [
        (["--repeats", "0"], "--repeats"), (["--warmup", "-1"], "--warmup"),
        (["--threads", "0"], "--threads"), (["--rows", "lstm-9x9"], "--rows"),
        (["--cells", "transformer"], "--cells"), (["--device", "tpu"], "--device"),
        (["--dtype", "float16"], "--dtype")]),
}
OUT_FLAG = {"gradflow": ["--out"], "experiments": ["depth", "--out"], "bench": ["--json"]}


@pytest.mark.parametrize("command,argv,flag",
                         [(c, a, f) for c, (_, cases) in BAD.items() for a, f in cases],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_bad_values_name_the_flag(command, argv, flag, capsys, monkeypatch):
    monkeypatch.setenv("RNNCORE_MEMORY_LIMIT", str(1 << 30))
    code, err = one_line_exit(BAD[command][0], argv, capsys)
    assert code == 2 and flag in err


@pytest.mark.parametrize("command", OUT_FLAG)
@pytest.mark.parametrize("where", ["existing file", "under a file", "unwritable"])
def test_bad_output_paths_name_the_flag(command, where, a_file, tmp_path, capsys):
    path = {"existing file": a_file, "under a file": a_file / "sub" / "x.json",
            "unwritable": Path("/proc/rnncore-test/x.json")}[where]
    if command == "bench" and where == "existing file":
        path = tmp_path  # --json names a file: an existing directory is its bad case
    argv = [*OUT_FLAG[command], path]
    code, err = one_line_exit(BAD[command][0], argv, capsys)
    assert code == 2 and OUT_FLAG[command][-1] in err
    assert a_file.read_text() == "x"  # nothing was replaced


def test_quick_never_overrides_explicit_sizes(tmp_path):
    out = ["--out", str(tmp_path)]
    quick = gradflow.parse_args(["--quick", *out])
    assert (quick.T, quick.batch, quick.hidden) == (12, 4, 16)
    mixed = gradflow.parse_args(["--quick", "--hidden", "32", "--depths", "8", "--T=30", *out])
    assert (mixed.T, mixed.batch, mixed.hidden, mixed.depths) == (30, 4, 32, [8])
    full = gradflow.parse_args(out)
    assert (full.T, full.hidden, full.depths) == (50, 64, [1, 2, 4, 8])
    args = bench.parse_args(["--quick", "--repeats", "7", "--warmup", "0"])
    assert (args.repeats, args.warmup) == (7, 0)
    assert bench.parse_args(["--quick"]).repeats == 2


def test_every_registered_cell_is_swept_and_benched(tmp_path):
    assert {c.cell for c in gradflow.parse_args(["--out", str(tmp_path)]).configs} \
        == set(cells.names())
    rows = bench.parse_args(["--rows", "lstm-1x128", "--cells", "all"]).rows
    assert [r.cell for r in rows] == list(cells.names())
    assert {(r.layers, r.hidden) for r in rows} == {(1, 128)}


FLAG_VALUES = st.one_of(st.integers(-3, 3), st.sampled_from(
    ["", ",", "x", "1,1", "-1", "0", "1e9", "lstm", "all", "cpu", "cuda:x", "none,layers",
     "2,4"]))
FLAGS = {
    gradflow.parse_args: ["--T", "--batch", "--hidden", "--depths", "--seed", "--cells",
                          "--residual", "--init", "--init-state", "--loss"],
    experiments_main.parse_args: ["--seeds", "--jobs", "--cluster"],
    bench.parse_args: ["--repeats", "--warmup", "--threads", "--rows", "--cells", "--device",
                       "--dtype"],
}


@FAST
@given(st.sampled_from(sorted(FLAGS, key=lambda f: f.__module__)), st.data())
def test_random_flags_parse_or_fail_in_one_line(tmp_path, capsys, parse, data):
    flags = data.draw(st.lists(st.tuples(st.sampled_from(FLAGS[parse]), FLAG_VALUES),
                               max_size=3))
    argv = ["adding"] if parse is experiments_main.parse_args else []
    for flag, value in flags:
        argv += [flag, str(value)]
    if parse is not bench.parse_args:
        argv += ["--out", str(tmp_path / "out")]
    one_line_exit(parse, argv, capsys)


# ----------------------------------------------------------------------------- compare_torch
TINY = ["--hidden", "8", "--embed", "4", "--batch-size", "4", "--seq-len", "8", "--steps",
        "2", "--eval-chars", "64", "--quiet"]


@pytest.mark.parametrize("argv,flag", [
    (["--cell", "gru_reset_before"], "--cell"), (["--residual", "layers"], "--residual"),
    (["--init", "orthogonal"], "--init"), (["--init-state", "learned"], "--init-state"),
    (["--forget-bias", "1"], "--forget-bias"), (["--optimizer", "sgd"], "--optimizer"),
    (["--layers", "2", "--dropout", "0.2", "--dropout-mode", "variational"], "--dropout-mode"),
    (["--resume", "x"], "--resume"), (["--out", "x"], "--out"), (["--hidden", "0"], "--hidden"),
])
def test_compare_torch_refuses_what_its_twin_cannot_do(argv, flag, capsys):
    code, err = one_line_exit(compare_torch.main, [*TINY, *argv], capsys)
    assert flag in err
    assert code == 2 or compare_torch.main([*TINY, *argv]) == 2


def test_compare_torch_twin_comes_from_the_registry():
    for name in cells.names():
        cell = cells.get(name)
        cfg = {**compare_torch.runconfig.DEFAULTS, "cell": name}
        if not cell.family:
            with pytest.raises(compare_torch.Unsupported, match="no torch.nn twin"):
                compare_torch.torch_twin(cfg)
            continue
        twin, kwargs = compare_torch.torch_twin(cfg)
        assert twin is cell and kwargs.items() >= cell.torch_options.items()


def test_compare_torch_schedule_horizon_is_schedule_steps(monkeypatch, capsys):
    pytest.importorskip("torch")
    horizons = []
    real = compare_torch.optim.Schedule

    def spy(*args, **kwargs):
        horizons.append(kwargs["total_steps"])
        return real(*args, **kwargs)

    monkeypatch.setattr(compare_torch.optim, "Schedule", spy)
    assert compare_torch.main([*TINY, "--schedule-steps", "7", "--cell", "rnn_relu"]) == 0
    assert compare_torch.main([*TINY]) == 0
    assert horizons == [7, 2]


# ----------------------------------------------------------------------------- GPU tests
def test_asking_for_gpu_tests_without_a_gpu_fails(tmp_path):
    """-m gpu with CuPy broken: the GPU tests fail (exit 1) instead of skipping."""
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('broken CuPy (test stand-in)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                          "no:cacheprovider", "tests/test_gpu.py",
                          "-k", "test_auto_chooses_by_size_on_cuda"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "-m gpu asked for the GPU tests" in run.stdout
    assert "passed" not in run.stdout and "skipped" not in run.stdout


def test_compare_torch_on_a_gpu_torch_cannot_use_is_one_line(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compare_torch.main([*TINY, "--device", "cuda"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "--device cuda" in lines[0]
