"""The benchmark keeps running: ``python -m rnncore.bench --quick`` at toy sizes."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_prints_every_row_and_its_ratios(tmp_path):
    json_file = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "rnncore.bench", "--quick", "--threads", "1",
         "--json", str(json_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert ("| row | pass | GEMM GFLOP | rnncore ms | torch ms | torch/rnncore | "
            "torch/rnncore per round | rnncore GFLOP/s (of peak) | torch GFLOP/s (of peak) |"
            ) in table
    timing_lines = [line for line in table.splitlines()
                    if line.startswith("| ") and "forward" in line]
    labels = {"LSTM 1×16 (B 4, T 6)", "LSTM 3×16 (B 4, T 6)", "GRU 3×16 (B 4, T 6)",
              "LSTM 3×16, input 12 (B 4, T 6) (seed)"}
    data = json.loads(json_file.read_text())
    assert {row["label"] for row in data["rows"]} == labels
    assert data["meta"]["threads"] >= 1 and data["meta"]["torch"]
    for row in data["rows"]:
        label = row["label"]
        passes = [line for line in timing_lines if line.startswith(f"| {label} |")]
        assert len(passes) == 2, (label, table)
        for line, p in zip(passes, ("forward", "forward+backward")):
            samples = row["samples_ms"][p]
            assert all(len(s) == data["meta"]["repeats"] for s in samples.values())
            # the ratio is the baseline's median time over rnncore's, recomputed here from
            # the raw samples, and the table prints that number
            want = statistics.median(samples["torch"]) / statistics.median(samples["rnncore"])
            assert row["ratio"][p]["rnncore"] == pytest.approx(want, rel=1e-12)
            columns = [c.strip() for c in line.strip("| ").split("|")]
            assert columns[5] == f"{want:.2f}"
            # and per round: the median of the rounds' own ratios
            per_round = statistics.median(t / r for t, r in zip(samples["torch"],
                                                                samples["rnncore"]))
            assert row["ratio_per_round"][p]["rnncore"] == pytest.approx(per_round, rel=1e-12)
            assert columns[6] == f"{per_round:.2f}"
            # GFLOP/s and fraction of the measured peak, recomputed from the FLOP count
            # (written out here: 2·T·B·(I + H)·G·H per layer forward, 3× for both passes)
            config = row["config"]
            G = 4 if config["cell"] == "lstm" else 3
            forward = sum(2 * config["steps"] * config["batch"]
                          * ((config["input"] or config["hidden"]) if k == 0 else config["hidden"])
                          * G * config["hidden"] + 2 * config["steps"] * config["batch"]
                          * config["hidden"] * G * config["hidden"]
                          for k in range(config["layers"]))
            flops = forward if p == "forward" else 3 * forward
            assert row["gemm_flops"][p] == flops
            rate = flops / (statistics.median(samples["rnncore"]) / 1e3) / 1e9
            share = 100 * rate / data["meta"]["gemm_peak_gflops"]
            assert columns[7] == f"{rate:.1f} ({share:.0f} %)"
            # and of the peak read in the row's own rounds: one reading a timed round
            readings = row["round_kernel_gflops"][p]
            assert len(readings) == data["meta"]["repeats"] and min(readings) > 0
            rates = data["meta"]["gemm_rates_gflops"]
            at_the_time = statistics.median(readings) * max(1, rates["blas"] / rates["kernel"])
            assert columns[9] == f"{at_the_time:.1f}"
            assert columns[10] == f"{100 * rate / at_the_time:.0f} %"
        for errors in row["rel_error"].values():
            assert all(e < 1e-4 for e in errors.values()), errors


def test_a_cell_without_a_torch_twin_has_no_torch_column():
    from rnncore import bench

    row = bench.ROWS["lstm-1x128"].quick().with_cell("gru_reset_before")
    result = bench.bench_row(row, bench.backend.parse_device("cpu"), "float32", 1, 0)
    assert result["impls"] == ["rnncore"] and result["ratio"] == {
        "forward": {}, "forward+backward": {}} == result["ratio_per_round"]
    assert "no torch.nn twin" in result["skipped"]["torch"]
    assert result["reference"] == "float64 rnncore reference"
    assert all(e < 1e-4 for e in result["rel_error"]["rnncore"].values())


def test_the_per_round_ratio_cancels_a_change_of_speed_between_rounds():
    """A row timed while the machine changed speed (an LSTM 1×128 forward + backward of
    this project's bench, ms): the first round's rnncore sample ran slow and torch's fast,
    and the two medians fell in different speeds; the rounds' own ratios did not."""
    from rnncore import bench

    samples = {"forward": {"torch": [25.22, 25.03, 25.36, 30.85, 31.28],
                           "rnncore": [32.08, 25.14, 25.38, 32.57, 32.19]}}
    of_medians = 25.36 / 32.08
    assert of_medians < 0.80
    ratios = [25.22 / 32.08, 25.03 / 25.14, 25.36 / 25.38, 30.85 / 32.57, 31.28 / 32.19]
    assert bench.paired_ratios(samples, "torch") == {
        "forward": {"rnncore": pytest.approx(sorted(ratios)[2], rel=1e-15)}}
    assert bench.paired_ratios(samples, "torch")["forward"]["rnncore"] > 0.97
    assert bench.paired_ratios({"forward": {"rnncore": [1.0]}}, "torch") == {"forward": {}}


def test_one_table_per_thread_count(tmp_path, capsys):
    from rnncore import bench

    bench.main(["--quick", "--rows", "lstm-1x128", "--threads", "1,2",
                "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert out.count("### rnncore vs torch.nn on cpu") == 2
    runs = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert [r["meta"]["threads"] for r in runs] == [1, 2]
    for r in runs:  # the roofline: the faster of BLAS's GEMM and the packed step kernel
        rates = r["meta"]["gemm_rates_gflops"]
        assert set(rates) == {"blas", "kernel"} and min(rates.values()) > 0
        assert r["meta"]["gemm_peak_gflops"] == max(rates.values())
    assert "the faster of NumPy's BLAS on 2048³" in out


def test_memory_columns_measure_each_implementation(tmp_path):
    """Issue 17: each implementation's memory in its own process: the engine's kept bytes
    are the exact count (``rnncore.memory.kept_bytes``), torch's its saved tensors."""
    from rnncore import bench, memory

    row = bench.ROWS["lstm-1x128"].quick()
    figures = bench.measure_memory(row, bench.backend.parse_device("cpu"), "float32",
                                   ["rnncore", "torch"])
    for impl in ("rnncore", "torch"):
        assert "error" not in figures[impl], figures[impl]
        assert figures[impl]["kept_bytes"] > 0 and figures[impl]["rss_peak_bytes"] >= 0
        assert figures[impl]["rss_loop_peak_bytes"] >= 0
    assert figures["rnncore"]["numpy_peak_bytes"] >= figures["rnncore"]["kept_bytes"]
    # the same count in this process
    weights, x, _ = bench._row_inputs(row, "float32", 0)
    m = row.rnncore_module("float32", weights)
    m(x)
    assert memory.kept_bytes(m._last[0]) == figures["rnncore"]["kept_bytes"]
    lines = bench.memory_report([{"label": row.label, "memory": figures}], "torch")
    mine = next(line for line in lines if line.startswith(f"| {row.label} | rnncore |"))
    cells = [c.strip() for c in mine.split("|")[1:-1]]
    assert cells[5] == f"{figures['rnncore']['rss_loop_peak_bytes'] / 2**20:.1f}"
    assert cells[6] in ("yes", "no")
    # the recompute table: checkpoint_every = T, about √T, 1
    table = bench.checkpoint_table(row, "float32")
    assert [e["checkpoint_every"] for e in table] == [6, 3, 1]
    assert table[-1]["kept_bytes"] < table[0]["kept_bytes"]


def test_long_row_is_documented_not_default():
    from rnncore import bench

    row = bench.ROWS["lstm-2x256-long"]
    assert (row.layers, row.hidden, row.batch, row.steps) == (2, 256, 32, 4000)
    assert "lstm-2x256-long" not in bench.DEFAULT_ROWS["cpu"]


def test_a_bidirectional_row_and_a_row_of_lengths_run_against_torch(tmp_path):
    """The two extra rows: torch.nn bidirectional, and on a packed sequence, each giving
    what rnncore gives; FLOPs counted over both directions and the sequences' own steps."""
    from rnncore import bench

    bench.main(["--quick", "--rows", "lstm-2x256-bi,lstm-2x256-lengths", "--threads", "1",
                "--no-memory", "--json", str(tmp_path / "b.json")])
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["LSTM 2×16, bidirectional (B 4, T 6)",
                                          "LSTM 2×16 (B 4, T 6…3)"]
    for r in rows:
        assert set(r["median_ms"]["forward"]) == {"rnncore", "torch"}
        for errors in r["rel_error"].values():
            assert all(e < 1e-4 for e in errors.values()), errors
    H, B, T, G = 16, 4, 6, 4
    # bidirectional: two directions a layer, the second layer's input 2H wide
    forward = 2 * 2 * T * B * (H + H) * G * H + 2 * 2 * T * B * (2 * H + H) * G * H
    assert rows[0]["gemm_flops"] == {"forward": forward, "forward+backward": 3 * forward}
    # lengths 6, 5, 4, 3 (T down to T/2): their 18 steps for T·B's 24
    lengths = bench.ROWS["lstm-2x256-lengths"].quick().sequence_lengths()
    assert lengths.tolist() == [6, 5, 4, 3]
    forward = 2 * 18 * (H + H) * G * H * 2  # two layers, each H wide in and out
    assert rows[1]["gemm_flops"] == {"forward": forward, "forward+backward": 3 * forward}


def test_rows_of_batches_that_are_not_whole_vectors_run_against_torch(tmp_path):
    """One sequence and 20 (not a multiple of the packed kernel's 16 lanes): rnncore runs
    them through the kernel with vectors along the rows (kernels/cpu_gemm.h) and gives what
    torch.nn gives; at --quick sizes the batches are 1 and 4."""
    from rnncore import bench

    keys = ["lstm-1x128-b1", "lstm-1x512-b1", "lstm-1x128-b20", "lstm-1x512-b20"]
    assert [bench.ROWS[k].batch for k in keys] == [1, 1, 20, 20]
    assert not set(keys) & set(bench.DEFAULT_ROWS["cpu"])
    assert bench.ROWS["lstm-1x128-b1"].with_cell("gru").key == "gru-1x128-b1"
    assert bench.ROWS["lstm-1x128"].with_cell("gru").key == "gru-1x128"
    bench.main(["--quick", "--rows", "lstm-1x128-b1,lstm-1x128-b20", "--threads", "1",
                "--no-memory", "--json", str(tmp_path / "b.json")])
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["LSTM 1×16 (B 1, T 6)", "LSTM 1×16 (B 4, T 6)"]
    for r in rows:
        assert set(r["median_ms"]["forward"]) == {"rnncore", "torch"}
        for errors in r["rel_error"].values():
            assert all(e < 1e-4 for e in errors.values()), errors


def test_batches_run_each_row_at_each_size():
    from rnncore import bench

    args = bench.parse_args(["--rows", "lstm-1x128,lstm-1x128-b20", "--batches", "1,20",
                             "--quick"])
    # lstm-1x128 at 20 and lstm-1x128-b20 at 20 are one configuration
    assert [(r.key, r.batch, r.hidden) for r in args.rows] == [
        ("lstm-1x128-b1", 1, 16), ("lstm-1x128-b20", 20, 16)]
    args = bench.parse_args(["--rows", "lstm-1x128", "--batches", "3", "--cells", "gru"])
    assert [(r.key, r.cell, r.batch) for r in args.rows] == [("gru-1x128-b3", "gru", 3)]
    assert bench.ROWS["lstm-1x512-b1"].with_batch(8).key == "lstm-1x512-b8"


def test_torch_on_a_packed_sequence_is_zero_past_each_end():
    import torch

    from rnncore import bench

    row = bench.ROWS["lstm-2x256-lengths"].quick()
    x = torch.randn(row.steps, row.batch, row.input_size)
    assert row.sequence_lengths().min() < row.steps  # some sequence has padding
    out = bench.torch_output(row.torch_module(), x, row.sequence_lengths())
    for b, n in enumerate(row.sequence_lengths()):
        assert torch.all(out[n:, b] == 0) and torch.all(out[:n, b] != 0)


# ----------------------------------------------------------------------------- GPU split
@pytest.mark.parametrize("name,want", [
    ("sm90_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize128x64x32_warpgroupsize1x1x1", "GEMM"),
    ("ampere_sgemm_64x32_sliced1x4_nn", "GEMM"),
    ("cutlass_80_simt_sgemm_128x32_8x5_nn_align1", "GEMM"),
    ("gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4, false>", "GEMM"),
    ("void splitKreduce_kernel<32, 16, int, float, float>", "GEMM"),
    ("lstm_forward<float>", "step"), ("gru_backward<double>", "step"),
    ("persistent_lstm_forward<float>", "step"),
    ("void LSTM_elementWise_fp<float, float, float>(int, int, int, float*)", "step"),
    ("RNN_blockPersist_fp_LSTM<float, float, float, 128>", "step"),
    ("cupy_copy__float32_float32", "other kernels"), ("cupy_multiply", "other kernels"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float>>",
     "other kernels"),
    ("Memset (Device)", "other kernels"),
])
def test_kernels_are_classed_by_name(name, want):
    from rnncore import bench

    assert bench.kernel_class(name) == want


def test_the_split_adds_up_to_the_wall_time():
    from rnncore import bench

    kernels = [("ampere_sgemm_64x32_nn", 1.5), ("lstm_forward<float>", 0.5),
               ("cupy_copy", 0.25), ("lstm_backward<float>", 0.75)]
    split = bench.time_split(kernels, wall_ms=5.0)
    assert split == {"GEMM": 1.5, "step": 1.25, "other kernels": 0.25, "launch and host": 2.0}
    assert bench.time_split(kernels, wall_ms=1.0)["launch and host"] == 0.0


def test_the_split_table_reports_per_layer_step():
    from rnncore import bench

    row = {"label": "LSTM 2×8 (B 2, T 5)", "config": {"layers": 2, "steps": 5},
           "median_ms": {"forward+backward": {"rnncore graph": 0.5}}, "auto_choice": "graph",
           "split_ms": {"rnncore graph": {"GEMM": 0.2, "step": 0.1, "other kernels": 0.05,
                                          "launch and host": 0.15}}}
    lines = bench.split_report([row])
    assert lines[-1] == ("| LSTM 2×8 (B 2, T 5) | graph | rnncore graph | 50.0 | 0.20 | 0.10 "
                         "| 0.05 | 0.15 |")
    assert bench.split_report([{**row, "split_ms": None}]) == []


def test_the_split_pass_runs_every_timed_implementation():
    """The profiled pass (run after all rows are timed) on the CPU, where the profiler sees
    no CUDA kernel: every timed implementation gets a split, all of it host time."""
    from rnncore import backend, bench

    row = bench.ROWS["lstm-1x128"].quick()
    splits = bench.gpu_splits(row, backend.parse_device("cpu"), "float32",
                              {"rnncore": 2.0, "torch": 3.0})
    assert set(splits) == {"rnncore", "torch"}
    assert splits["torch"] == {"GEMM": 0.0, "step": 0.0, "other kernels": 0.0,
                               "launch and host": 3.0}


def test_the_round_reading_comes_first_in_every_timed_round():
    """Each side follows the untimed peak reading equally often (the order of the timed
    calls flips each round; the reading does not move with it)."""
    from rnncore import bench

    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    samples = bench.time_interleaved(fns, lambda: None, 4, 1, lambda: calls.append("peak"))
    assert calls == ["a", "b"] + ["peak", "a", "b", "peak", "b", "a"] * 2
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}


def test_a_sample_is_the_mean_of_its_calls(monkeypatch):
    """calls_per_sample: as many calls of the fastest side as take the minimum (from one
    timed call of each); time_interleaved then times that many calls in a row a sample and
    divides. A fake clock that each call advances makes both exact."""
    from rnncore import bench

    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    calls = []

    def side(name, seconds):
        def fn():
            calls.append(name)
            clock[0] += seconds
        return fn

    fns = {"a": side("a", 0.010), "b": side("b", 0.030)}
    assert bench.calls_per_sample(fns, lambda: None, 0.25) == 25
    assert bench.calls_per_sample(fns, lambda: None, 0.0) == 1
    assert bench.calls_per_sample(fns, lambda: None, 0.001) == 1
    calls.clear()
    samples = bench.time_interleaved(fns, lambda: None, 2, 0, calls=3)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    assert samples == {"a": [pytest.approx(0.010)] * 2, "b": [pytest.approx(0.030)] * 2}


def test_the_table_gives_the_calls_a_sample_took():
    from rnncore import bench

    row = bench.ROWS["lstm-1x128"].quick()
    result = bench.bench_row(row, bench.backend.parse_device("cpu"), "float32", 2, 0,
                             min_sample=0.05)
    calls = result["calls_per_sample"]
    assert set(calls) == {"forward", "forward+backward"}
    assert all(n >= 2 for n in calls.values()), calls  # a toy call takes far less than 50 ms
    meta = dict(bench.machine_info(bench.backend.parse_device("cpu"), 1, [1]),
                repeats=2, warmup=0, min_sample_seconds=0.05, device="cpu",
                dtype="float32", command="python -m rnncore.bench",
                load_average_after=(0.0, 0.0, 0.0))
    table = bench.markdown_report(meta, [result])
    assert "as many calls in a row as take 0.05 s" in table
    assert "| row | pass | calls/sample | GEMM GFLOP |" in table
    for p in ("forward", "forward+backward"):
        assert f"| {row.label} | {p} | {calls[p]} |" in table
