"""rnncore against torch.nn, side by side: ``python -m rnncore.bench``.

For each configuration ("row") the benchmark

1. builds one rnncore module, and loads its weights into every other implementation
   (torch.nn with ``load_state_dict``), so that all of them compute the same function;
2. runs one forward + backward of every implementation and of a float64 torch CPU
   reference, and prints the relative error of the output, the input gradient and the
   first layer's recurrent weight gradient (max |a − ref| / max |ref|);
3. times ``forward`` and ``forward + backward`` of every implementation, warm-up first,
   then ``repeats`` rounds in which the implementations alternate (ABBA order, so that
   machine load and cache effects hit them all alike), and reports the median.

The ratio columns are baseline_time / impl_time: above 1 means rnncore is faster. Each
is given twice: the ratio of the two medians, and the median of the rounds' own ratios
(the two samples of a round are taken back to back, so a change in the machine's speed
between rounds cancels out of it; this project's shared host drifts by up to 2×).

What is timed, so the columns compare like with like:

- rnncore ``forward`` always keeps what backward needs; torch's forward is therefore
  timed with autograd on (input ``requires_grad=True``), the training forward.
- ``forward + backward`` is ``out = m(x); m.backward(dout)`` against
  ``out = tm(x); out.backward(dout)``: both compute the input gradient and accumulate
  every weight gradient.
- On CUDA the clock is read only after a device-wide synchronize, and TF32 is switched off
  in torch (``fp32_precision = "ieee"``), as CuPy does not use it either.

Cells: a row names a registered cell (``rnncore.cells.names()``); rnncore builds it with
``rnncore.Recurrent(name, …)`` and torch with ``torch.nn.<cell.family>(…,
**cell.torch_options)`` (``Row.rnncore_module``, ``Row.torch_module``), bidirectional
where the row is; a row with lengths gives rnncore ``lengths=`` and torch a packed
sequence (``torch_output``). A cell with no torch.nn twin (``cell.family == ""``, e.g.
``gru_reset_before``) gets no torch column (marked "no torch.nn twin" in the report) and
its accuracy is measured against the float64 rnncore reference instead. ``--cells a,b``
(or ``all``) benches those cells at the size of each selected row, so a newly registered
cell is benched without editing this file.

Threads (CPU): ``--threads 1,2`` runs the whole table once per count (the default on the
CPU: 1 and every core); each run sets ``torch.set_num_threads(N)`` and limits NumPy's BLAS
pool to N threads with ``threadpoolctl`` (both restored afterwards); the report gives the
counts read back from torch and from every loaded BLAS library, not the ones asked for.

Roofline (CPU): each run measures this machine's GEMM peak at its thread count, before the
rows and again after them (and in their timing rounds, below), keeping the best: the
faster of NumPy's BLAS (the median GFLOP/s of a 2048³ ``numpy.matmul`` in the row dtype)
and rnncore's packed step kernel on a (2048×512)·(512×64) product, which outruns OpenBLAS
on some CPUs (``gemm_peak``); each row's GEMM FLOPs (forward: the input and recurrent
products of every layer direction, 2·T·B·(I + H)·G·H each; backward: twice that, for ∂x,
∂h and the two weight gradients).
The timing table then shows each implementation's GFLOP/s and its fraction of that peak;
the element-wise work is not counted, so the fraction is the share of the time the GEMMs
would need at peak. On a shared host the machine's speed drifts (by up to 2× between
minutes on the project's 2-core VM), so the peak is also read in every timing round, untimed,
before the calls (the kernel's best of ROUND_PEAK_REPEATS products; scaled up where BLAS's
best reading of the run outran the kernel's), and each row shows its fraction of the median
of its own rounds' readings as well (``round_peak``).

Examples::

    python -m rnncore.bench                                  # CPU table, all cores
    python -m rnncore.bench --rows lstm-3x512,gru-3x512 --repeats 9 --json cpu.json
    python -m rnncore.bench --rows lstm-3x512 --cells all    # every registered cell
    python -m rnncore.bench --rows lstm-2x256-bi,lstm-2x256-lengths  # bidirectional; lengths
    python -m rnncore.bench --device cuda --json gpu.json    # each driver, cuDNN
    python -m rnncore.bench --quick                          # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from . import backend, cells, cli
from .modules import Recurrent

PASSES = ("forward", "forward+backward")


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    """One benchmark configuration; ``input`` defaults to ``hidden``. With ``lengths`` the
    sequences' lengths run evenly from T down to T/2 (``sequence_lengths``): rnncore takes
    them as ``lengths=``, torch.nn as a packed sequence."""

    key: str
    cell: str  # a registered cell name (rnncore.cells.names())
    layers: int
    hidden: int
    batch: int
    steps: int
    input: int = 0
    note: str = ""
    bidirectional: bool = False
    lengths: bool = False

    @property
    def input_size(self) -> int:
        return self.input or self.hidden

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def label(self) -> str:
        size = f"{self.cell.upper()} {self.layers}×{self.hidden}"
        if self.input_size != self.hidden:
            size += f", input {self.input_size}"
        if self.bidirectional:
            size += ", bidirectional"
        steps = f"T {self.steps}…{self.steps // 2}" if self.lengths else f"T {self.steps}"
        text = f"{size} (B {self.batch}, {steps})"
        return f"{text} {self.note}" if self.note else text

    def sequence_lengths(self) -> np.ndarray | None:
        """Each sequence's length, from T down to T/2 evenly; None without ``lengths``."""
        if not self.lengths:
            return None
        return np.linspace(self.steps, self.steps // 2, self.batch).round().astype(np.int64)

    def rnncore_module(self, dtype, weights=None, **options) -> Recurrent:
        """rnncore's module for this row (``options``: Recurrent's device, impl, …), with
        ``weights`` loaded if given."""
        module = Recurrent(self.cell, self.input_size, self.hidden, num_layers=self.layers,
                           bidirectional=self.bidirectional, dtype=dtype, **options)
        if weights is not None:
            module.load_state_dict(weights)
        return module

    def torch_module(self, weights=None, device="cpu", dtype="float32"):
        """The cell's torch.nn twin on ``device`` in ``dtype``, with ``weights`` (rnncore's
        state dict: the same names) loaded if given."""
        import torch

        cell = cells.get(self.cell)
        module = getattr(torch.nn, cell.family)(self.input_size, self.hidden,
                                                num_layers=self.layers,
                                                bidirectional=self.bidirectional,
                                                **cell.torch_options)
        if weights is not None:
            module.load_state_dict({k: torch.from_numpy(np.asarray(backend.to_numpy(v)))
                                    for k, v in weights.items()})
        return module.to(device=str(device), dtype=getattr(torch, np.dtype(dtype).name))

    def with_cell(self, cell: str) -> Row:
        """This row's sizes with another registered cell."""
        return dataclasses.replace(self, cell=cell, key=f"{cell}-{self.layers}x{self.hidden}"
                                   + (f"-in{self.input}" if self.input else "")
                                   + ("-bi" if self.bidirectional else "")
                                   + ("-lengths" if self.lengths else "")
                                   + "".join(re.findall(r"-b\d+$", self.key)))

    def with_batch(self, batch: int) -> Row:
        """This row at another batch size (its key ends in -b<batch>)."""
        return dataclasses.replace(self, batch=batch,
                                   key=re.sub(r"-b\d+$", "", self.key) + f"-b{batch}")

    def quick(self) -> Row:
        """The same shape of network at toy sizes (for the smoke test); a batch below 4
        stays (and a key's -b<batch> follows it)."""
        batch = min(self.batch, 4)
        return dataclasses.replace(self, hidden=16, batch=batch, steps=6,
                                   key=re.sub(r"-b\d+$", f"-b{batch}", self.key),
                                   input=12 if self.input else 0)


ROWS = {
    row.key: row
    for row in (
        Row("lstm-1x128", "lstm", 1, 128, 32, 100),
        Row("lstm-3x512", "lstm", 3, 512, 64, 100),
        Row("gru-3x512", "gru", 3, 512, 64, 100),
        Row("seed-lstm-3x128", "lstm", 3, 128, 32, 50, input=100, note="(seed)"),
        Row("lstm-1x1024", "lstm", 1, 1024, 64, 25),
        Row("lstm-4x512", "lstm", 4, 512, 64, 100),
        # issue 17's long row: not in the default table (a forward + backward takes about
        # 20 s per implementation at one thread); ``--rows lstm-2x256-long``
        Row("lstm-2x256-long", "lstm", 2, 256, 32, 4000, note="(long)"),
        # not in the default table either: a bidirectional stack, and a batch of sequences
        # of different lengths (``--rows lstm-2x256-bi,lstm-2x256-lengths``)
        Row("lstm-2x256-bi", "lstm", 2, 256, 32, 100, bidirectional=True),
        Row("lstm-2x256-lengths", "lstm", 2, 256, 32, 100, lengths=True),
        # nor batches that are not a multiple of the packed kernel's 16 lanes (float32): one
        # sequence (sampling, inference) and 20 (``--rows lstm-1x128-b1,lstm-1x512-b1,…``;
        # with ``--batches 1,4,8,12,20,24`` the sweep of docs/bench/cpu-small-batches.md)
        Row("lstm-1x128-b1", "lstm", 1, 128, 1, 100),
        Row("lstm-1x512-b1", "lstm", 1, 512, 1, 100),
        Row("lstm-1x128-b20", "lstm", 1, 128, 20, 100),
        Row("lstm-1x512-b20", "lstm", 1, 512, 20, 100),
    )
}
DEFAULT_ROWS = {
    "cpu": ("lstm-1x128", "lstm-3x512", "gru-3x512", "seed-lstm-3x128"),
    "cuda": ("lstm-1x128", "lstm-3x512", "gru-3x512", "seed-lstm-3x128",
             "lstm-1x1024", "lstm-4x512"),
}
DEFAULT_REPEATS = {"cpu": (5, 1), "cuda": (30, 3)}  # (repeats, warm-up rounds)
# a CPU sample is the mean of as many calls as take this long (calls_per_sample): an 8 ms
# call timed alone read 0.95–1.05 of torch's by the minute on the 2-core Xeon
MIN_SAMPLE_SECONDS = {"cpu": 0.25, "cuda": 0.0}


# --------------------------------------------------------------------------- implementations
@dataclass
class Runner:
    """One implementation of one row, ready to call.

    ``forward`` and ``forward_backward`` are what is timed; ``results`` runs one clean
    forward + backward and returns host float64 arrays (out, dx, dW_hh of layer 0) for the
    accuracy check.
    """

    name: str
    forward: Callable[[], object]
    forward_backward: Callable[[], object]
    results: Callable[[], dict]


def _as_float64(array) -> np.ndarray:
    return np.asarray(backend.to_numpy(array), dtype=np.float64)


def rnncore_runner(name, row, weights, x, dout, device, dtype, impl) -> Runner:
    """rnncore on ``device`` with ``impl`` ("reference", "fused", "auto")."""
    module = row.rnncore_module(dtype, weights, device=device, impl=impl)
    if impl != "auto" and module.impl_in_use != impl:
        raise RuntimeError(f"impl={impl!r} resolved to {module.impl_in_use!r}")
    x = backend.to_device(x, device, module.dtype)
    dout = backend.to_device(dout, device, module.dtype)
    lengths = row.sequence_lengths()

    def forward():
        return module(x, lengths=lengths)

    def forward_backward():
        module(x, lengths=lengths)
        return module.backward(dout)

    def results():
        module.zero_grad()
        out = module(x, lengths=lengths)[0]
        dx = module.backward(dout)[0]
        return {"out": _as_float64(out), "dx": _as_float64(dx),
                "dW_hh_l0": _as_float64(module.grads["weight_hh_l0"])}

    return Runner(name, forward, forward_backward, results)


def torch_runner(name, row, weights, x, dout, device, dtype) -> Runner:
    """The cell's torch.nn twin (cuDNN on CUDA) with the given weights."""
    import torch

    tdtype = getattr(torch, np.dtype(dtype).name)
    module = row.torch_module(weights, device, dtype)
    x = torch.from_numpy(x).to(device=device, dtype=tdtype).requires_grad_(True)
    dout = torch.from_numpy(dout).to(device=device, dtype=tdtype)
    lengths = row.sequence_lengths()

    def forward():
        return torch_output(module, x, lengths)

    def forward_backward():
        out = torch_output(module, x, lengths)
        out.backward(dout)
        return x.grad

    def results():
        module.zero_grad()
        x.grad = None
        out = torch_output(module, x, lengths)
        out.backward(dout)
        return {"out": _as_float64(out.detach()), "dx": _as_float64(x.grad),
                "dW_hh_l0": _as_float64(module.weight_hh_l0.grad)}

    return Runner(name, forward, forward_backward, results)


def torch_output(module, x, lengths=None):
    """torch.nn's output for x (T, B, I): through a packed sequence where there are
    lengths, padded back to T steps (zeros past each sequence's end, as rnncore's)."""
    if lengths is None:
        return module(x)[0]
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    # sorted already (Row.sequence_lengths: longest first), so torch neither sorts nor
    # copies x into sorted order
    packed = pack_padded_sequence(x, torch.from_numpy(lengths), enforce_sorted=True)
    return pad_packed_sequence(module(packed)[0], total_length=x.shape[0])[0]


def baseline_name(device) -> str:
    return "torch" if device.kind == "cpu" else "torch cuDNN"


def no_twin(row) -> str | None:
    """Why ``row`` has no torch column, or None when its cell has a torch.nn twin."""
    cell = cells.get(row.cell)
    return None if cell.family else f"no torch.nn twin for the {cell.name} cell"


def build_runners(row, weights, x, dout, device, dtype):
    """The implementations for ``device``: (runners, baseline name, skipped {name: why})."""
    runners, skipped = [], {}
    if device.kind == "cpu":
        rnncore_impls = [("rnncore", "auto")]  # the compiled CPU driver where it builds
    else:
        rnncore_impls = [("rnncore auto", "auto"), ("rnncore graph", "graph"),
                         ("rnncore wavefront", "wavefront"), ("rnncore persistent", "persistent"),
                         ("rnncore fused", "fused")]
    baseline = baseline_name(device)
    for name, impl in rnncore_impls:
        try:
            runners.append(rnncore_runner(name, row, weights, x, dout, str(device), dtype,
                                          impl))
        except Exception as err:  # e.g. impl="fused" not built yet, or no compiler
            skipped[name] = _describe(err)
    if no_twin(row):
        skipped[baseline] = no_twin(row)
    else:
        runners.append(torch_runner(baseline, row, weights, x, dout, str(device), dtype))
    return runners, baseline, skipped


def reference_runner(row, weights, x, dout) -> Runner:
    """The float64 CPU reference: torch.nn's twin, or rnncore's own where there is none."""
    if no_twin(row):
        return rnncore_runner("float64 rnncore reference", row, weights, x, dout, "cpu",
                              "float64", "reference")
    return torch_runner("float64 torch reference", row, weights, x, dout, "cpu", "float64")


# --------------------------------------------------------------------------- measuring
def device_synchronizer(device) -> Callable[[], None]:
    """A function that waits for all queued GPU work (a no-op on the CPU)."""
    if device.kind == "cpu":
        return lambda: None
    import torch

    try:
        cupy = backend.import_cupy()
    except RuntimeError:
        cupy = None

    def sync():
        # Each is a device-wide synchronize; calling both costs microseconds and does
        # not depend on which library's stream the work was queued on.
        if cupy is not None:
            cupy.cuda.Device(device.index).synchronize()
        torch.cuda.synchronize(device.index)

    return sync


# the packed kernel's rate read once in every timing round too (the fastest of this many
# products, about 1 ms each): what the GEMMs could do at the time the row ran
ROUND_PEAK_REPEATS = 5


def round_peak(result, pass_, meta) -> float | None:
    """The GEMM peak in the rounds that timed ``pass_`` of a row: the median of the kernel
    readings taken among them, scaled by how far BLAS's best reading of the run outran the
    kernel's best, where it did (then BLAS is the peak)."""
    readings = result.get("round_kernel_gflops", {}).get(pass_)
    rates = meta.get("gemm_rates_gflops", {})
    if not readings or not rates.get("kernel"):
        return None
    return statistics.median(readings) * max(1.0, rates.get("blas", 0) / rates["kernel"])


def calls_per_sample(fns: dict, sync, min_seconds: float) -> int:
    """How many calls of the fastest function in ``fns`` take ``min_seconds`` (at least 1),
    from one timed call of each (the functions have run before: warm)."""
    if min_seconds <= 0:
        return 1
    fastest = float("inf")
    for fn in fns.values():
        sync()
        start = time.perf_counter()
        fn()
        sync()
        fastest = min(fastest, time.perf_counter() - start)
    return max(1, math.ceil(min_seconds / max(fastest, 1e-9)))


def time_interleaved(fns: dict, sync, repeats: int, warmup: int, between=None,
                     calls: int = 1) -> dict:
    """Seconds per call of each function in ``fns``, ``repeats`` samples each, a sample
    the mean of ``calls`` calls in a row.

    Every round takes a sample of every function; the order flips each round (A B, B A, …)
    so that neither side always runs right after the other. ``sync`` is called before a
    clock is started and before it is read. The garbage collector is off while timing.
    ``between``, if given, is called untimed at the start of each timed round (first in
    every round, so that each side follows it equally often).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
        sync()
    samples = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            if between is not None:
                between()
            for name in names if r % 2 == 0 else reversed(names):
                sync()
                start = time.perf_counter()
                for _ in range(calls):
                    fns[name]()
                sync()
                samples[name].append((time.perf_counter() - start) / calls)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def paired_ratios(samples: dict, baseline: str) -> dict:
    """{pass: {impl: median over rounds of baseline / impl}} from time_interleaved's
    samples ({pass: {impl: [seconds per round]}}), each round's two samples taken back to
    back; empty for a pass without the baseline."""
    return {p: {n: statistics.median(b / t for b, t in zip(by_impl[baseline], s))
                for n, s in by_impl.items() if n != baseline}
            if baseline in by_impl else {} for p, by_impl in samples.items()}


def relative_error(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a − ref| / max |ref| (norm-wise, so tiny reference entries do not blow up)."""
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(a - ref))) / scale


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def check_accuracy(runners, reference: Runner, baseline: str, skipped: dict):
    """Relative errors against the float64 reference: {impl: {tensor: error}}.

    An rnncore implementation that fails on its first call (a kernel that does not compile,
    say) is moved to ``skipped`` and dropped from ``runners``, so that one broken column
    does not cost the whole run; the baseline failing is an error.
    """
    ref = reference.results()
    errors = {}
    for runner in list(runners):
        try:
            got = runner.results()
        except Exception as err:
            if runner.name == baseline:
                raise
            skipped[runner.name] = _describe(err)
            runners.remove(runner)
            continue
        errors[runner.name] = {k: relative_error(v, ref[k]) for k, v in got.items()}
    return errors


def bench_row(row, device, dtype, repeats, warmup, seed=0, memory=False, threads=1,
              min_sample=0.0) -> dict:
    """Accuracy check and timings of every implementation on one row (and its memory,
    measured in subprocesses, when ``memory``)."""
    mem = None
    if memory:
        # on a GPU the fused per-step loop too: the graph driver that auto runs keeps its
        # graphs' buffers between calls
        impls = ["rnncore"] + (["rnncore:fused"] if device.kind == "cuda" else []) \
            + ([] if no_twin(row) else ["torch"])
        mem = measure_memory(row, device, dtype, impls, threads, seed)
    if memory == "only":
        return {"key": row.key, "label": row.label, "config": dataclasses.asdict(row),
                "memory": mem, "baseline": baseline_name(device)}
    weights, x, dout = _row_inputs(row, dtype, seed)
    runners, baseline, skipped = build_runners(row, weights, x, dout, device, dtype)
    reference = reference_runner(row, weights, x, dout)
    errors = check_accuracy(runners, reference, baseline, skipped)
    from .drivers import compiled_cpu
    sync = device_synchronizer(device)
    samples, round_peaks, calls = {}, {}, {}
    for pass_name in PASSES:
        fns = {r.name: (r.forward if pass_name == "forward" else r.forward_backward)
               for r in runners}
        between = None
        if device.kind == "cpu" and compiled_cpu.available():  # the peak, read in each round
            # (the machine's speed drifts by up to 2× between minutes on a shared host)
            readings = round_peaks[pass_name] = []

            def between(readings=readings):
                readings.append(compiled_cpu.kernel_gflops(dtype, threads,
                                                           repeats=ROUND_PEAK_REPEATS))
        calls[pass_name] = calls_per_sample(fns, sync, min_sample)
        samples[pass_name] = time_interleaved(fns, sync, repeats, warmup, between,
                                              calls[pass_name])
    median_ms = {p: {n: 1e3 * statistics.median(s) for n, s in by_impl.items()}
                 for p, by_impl in samples.items()}
    ratios = {p: {n: by_impl[baseline] / t for n, t in by_impl.items() if n != baseline}
              if baseline in by_impl else {} for p, by_impl in median_ms.items()}
    extra = {"auto_choice": auto_choice(row, str(device), dtype)} if device.kind == "cuda" \
        else {}
    return {**extra, "key": row.key, "label": row.label, "config": dataclasses.asdict(row),
            "gemm_flops": gemm_flops(row),
            "impls": [r.name for r in runners], "baseline": baseline, "skipped": skipped,
            "reference": reference.name,
            "rel_error": errors, "median_ms": median_ms, "ratio": ratios,
            "ratio_per_round": paired_ratios(samples, baseline), "memory": mem,
            "round_kernel_gflops": round_peaks, "calls_per_sample": calls,
            "samples_ms": {p: {n: [1e3 * t for t in s] for n, s in by_impl.items()}
                           for p, by_impl in samples.items()}}


# --------------------------------------------------------------------------- GPU time split
# Where a GPU call's time goes: one call is run under the CUDA profiler (torch.profiler,
# which sees every kernel of the process: cuBLAS's, rnncore's, CuPy's, cuDNN's, inside
# CUDA graphs too) and each kernel's device time is put in one class by its name. What the
# median wall time has beyond the kernels' sum is time the GPU was not running a kernel of
# this call: launches and host work. (The profiled call's own wall time is not used: the
# profiler slows launches.)
KERNEL_CLASSES = (
    ("GEMM", ("gemm", "gemv", "xmma", "cutlass", "splitk")),
    ("step", ("lstm", "gru", "rnn_", "persist", "zoneout", "dropout")),
)
SPLIT_COLUMNS = ("GEMM", "step", "other kernels", "launch and host")


def kernel_class(name: str) -> str:
    """'GEMM' (cuBLAS), 'step' (a cell's pointwise or persistent kernel, rnncore's or
    cuDNN's) or 'other kernels' (copies, sums, CuPy's elementwise helpers)."""
    low = name.lower()
    for label, needles in KERNEL_CLASSES:
        if any(n in low for n in needles):
            return label
    return "other kernels"


def time_split(kernels, wall_ms: float) -> dict:
    """{column: ms} from [(kernel name, device ms)] and the call's wall time."""
    split = dict.fromkeys(SPLIT_COLUMNS, 0.0)
    for name, ms in kernels:
        split[kernel_class(name)] += ms
    split["launch and host"] = max(0.0, wall_ms - sum(ms for _, ms in kernels))
    return split


def profiled_kernels(fn, sync) -> list:
    """[(kernel name, device ms)] of one call of ``fn`` under torch's CUDA profiler."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    # without CUDA (the tests) the CPU activity: the call runs, no kernel is seen
    activity = ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        sync()
        fn()
        sync()
    out = []
    for event in prof.events():
        if getattr(event, "device_type", None) != DeviceType.CUDA:
            continue
        out.append((event.name, event.time_range.elapsed_us() / 1e3))
    return out


def gpu_splits(row, device, dtype, median_ms, seed=0) -> dict:
    """{impl: {column: ms}} for one forward + backward of each implementation of ``row``
    (errors as text). Run after every row is timed: once the profiler has run, torch's
    kernel launches stay slower in the process (cuDNN's calls measured 1.2–1.8× slower in
    the rows timed after a profiled one, on an H100), which would bias later timings."""
    weights, x, dout = _row_inputs(row, dtype, seed)
    runners, _, _ = build_runners(row, weights, x, dout, device, dtype)
    sync = device_synchronizer(device)
    splits = {}
    for r in runners:
        if r.name not in median_ms:
            continue
        r.forward_backward()  # graphs captured, kernels loaded: not what is profiled
        try:
            kernels = profiled_kernels(r.forward_backward, sync)
        except Exception as err:  # a profiler that cannot run here: say so in the table
            splits[r.name] = {"error": _describe(err)}
            continue
        splits[r.name] = time_split(kernels, median_ms[r.name])
    return splits


def auto_choice(row, device, dtype) -> str:
    """The drivers impl="auto" runs for ``row``'s layers (e.g. "graph", "persistent")."""
    module = row.rnncore_module(dtype, device=device)
    choose = getattr(module.driver, "choose", None)
    if choose is None:
        return module.driver.name
    from .stack import layer_params

    names = [choose(module.cell, layer_params(module.spec, module.params, k, 0), row.batch).name
             for k in range(row.layers)]
    return "/".join(dict.fromkeys(names))


# --------------------------------------------------------------------------- memory
# Each implementation's memory is measured in a fresh subprocess (``--memory-child``), so
# that neither the other implementations' freed memory (kept by the allocators) nor the
# timing runs hide or inflate its peak:
#
# - kept: the bytes a forward keeps for its backward, counted exactly. rnncore: the
#   distinct array buffers reachable from the module's cache (``rnncore.memory.kept_bytes``:
#   the layers' inputs and every saved buffer). torch: the distinct storages of the tensors
#   autograd saves (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded,
#   the input included as rnncore's is.
# - numpy peak (rnncore only): the peak of NumPy's allocations during one forward +
#   backward, above what was live before (``tracemalloc``, to which NumPy reports; the
#   C++ loop allocates nothing itself). torch's CPU allocator reports to nothing
#   comparable, hence the RSS column for both.
# - peak RSS: the process's resident-set high-water mark (VmHWM, reset through
#   /proc/self/clear_refs before the pass) minus the resident set before the pass, during
#   the first forward + backward: the same measure for both implementations (it includes
#   code pages first touched by that pass, a few MB).
#
# On CUDA (untested: no GPU where this was written) the child reports CuPy's memory-pool
# high-water mark (``used_bytes`` peak, sampled after forward and after backward) and
# ``torch.cuda.max_memory_allocated`` instead of RSS.


def _proc_status(field) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _row_inputs(row, dtype, seed):
    weights = row.rnncore_module(dtype, seed=seed, impl="reference").state_dict()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((row.steps, row.batch, row.input_size)).astype(dtype)
    dout = rng.standard_normal((row.steps, row.batch, row.directions * row.hidden))
    return weights, x, dout.astype(dtype)


LOOP_PASSES = 3  # the memory table's second peak: over this many passes after the first


def memory_child(spec: dict) -> dict:
    """One implementation's memory figures (run in a fresh process by ``measure_memory``)."""
    from . import memory

    row = Row(**spec["row"])
    dtype, device = spec["dtype"], backend.parse_device(spec.get("device", "cpu"))
    threads = spec.get("threads", 1)
    weights, x, dout = _row_inputs(row, dtype, spec.get("seed", 0))
    cuda = device.kind == "cuda"
    if spec["impl"] == "torch":
        import torch

        torch.set_num_threads(threads)
        tdtype = getattr(torch, np.dtype(dtype).name)
        module = row.torch_module(weights, device, dtype)
        tx = torch.from_numpy(x).to(device=str(device), dtype=tdtype).requires_grad_(True)
        tdout = torch.from_numpy(dout).to(device=str(device), dtype=tdtype)
        params = {q.untyped_storage().data_ptr() for q in module.parameters()}
        lengths = row.sequence_lengths()

        def pass_(tx=tx, tdout=tdout, lengths=lengths):
            out = torch_output(module, tx, lengths)
            out.backward(tdout)
            return out

        def kept():
            storages = {}

            def pack(t):
                st = t.untyped_storage()
                if st.data_ptr() not in params:
                    storages[st.data_ptr()] = st.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = torch_output(module, tx, lengths)
            del out
            return sum(storages.values())
    else:
        impl = spec.get("impl_arg", "auto")
        module = row.rnncore_module(dtype, weights, device=str(device), impl=impl,
                                    checkpoint_every=spec.get("checkpoint_every", 0))
        mx = backend.to_device(x, device, module.dtype)
        mdout = backend.to_device(dout, device, module.dtype)
        lengths = row.sequence_lengths()

        def pass_(mx=mx, mdout=mdout, lengths=lengths):
            out = module(mx, lengths=lengths)[0]
            module.backward(mdout)
            return out

        def kept():
            module(mx, lengths=lengths)
            count = memory.kept_bytes(module._last[0])
            module.drop_cache()
            return count

    result = {}
    with threadpool_limits(limits=threads, user_api="blas"):
        # warm-up on two steps of one sequence: lazy initialisation (code pages, thread
        # pools, the compiled library) is not counted as activation memory
        small = (x[:2, :1], dout[:2, :1])
        if spec["impl"] == "torch":
            pass_(torch.from_numpy(small[0].copy()).to(str(device), tdtype).requires_grad_(True),
                  torch.from_numpy(small[1].copy()).to(str(device), tdtype), None)
            module.zero_grad()
        else:
            pass_(*(backend.to_device(a.copy(), device, module.dtype) for a in small), None)
            module.drop_cache()
        if cuda:
            result.update(_cuda_peaks(spec["impl"], pass_, device))
        else:
            before = _proc_status("VmRSS")
            if _reset_peak_rss() and before is not None:
                start = time.perf_counter()
                pass_()
                result["seconds"] = time.perf_counter() - start
                result["rss_peak_bytes"] = _proc_status("VmHWM") - before
                _reset_peak_rss()  # then a loop of passes, as training runs them
                for _ in range(LOOP_PASSES):
                    pass_()
                result["rss_loop_peak_bytes"] = _proc_status("VmHWM") - before
        result["kept_bytes"] = kept()
        if spec["impl"] != "torch" and not cuda:
            if hasattr(module, "drop_cache"):
                module.drop_cache()
            _, result["numpy_peak_bytes"] = memory.numpy_peak(pass_)
    return result


def _cuda_peaks(impl, pass_, device) -> dict:
    """torch's allocator peak; for rnncore the growth of CuPy's default pool over the pass
    (its blocks are kept once freed, so this bounds the high-water mark from above)."""
    if impl == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats(device.index)
        base = torch.cuda.memory_allocated(device.index)
        pass_()
        torch.cuda.synchronize(device.index)
        return {"device_peak_bytes": torch.cuda.max_memory_allocated(device.index) - base}
    cupy = backend.import_cupy()
    pool = cupy.get_default_memory_pool()
    base = pool.used_bytes()
    pass_()
    cupy.cuda.Device(device.index).synchronize()
    return {"device_peak_bytes": pool.total_bytes() - base,
            "note": "pool total after the pass (upper bound of the high-water mark)"}


def measure_memory(row, device, dtype, impls, threads=1, seed=0, checkpoint_every=0) -> dict:
    """{impl: figures} for ``impls`` ("rnncore", "rnncore:IMPL", "torch"), each from a
    fresh subprocess."""
    import subprocess

    out = {}
    for impl in impls:
        name, _, impl_arg = impl.partition(":")  # "rnncore:fused": impl="fused"
        spec = {"row": dataclasses.asdict(row), "dtype": dtype, "device": str(device),
                "impl": name, "impl_arg": impl_arg or "auto", "threads": threads,
                "seed": seed, "checkpoint_every": checkpoint_every}
        # a fixed mmap threshold: every large array is its own mapping, returned to the OS
        # when freed, so the resident set follows what is live (glibc's dynamic threshold
        # would keep freed blocks in the heap after the first large free)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
        proc = subprocess.run([sys.executable, "-m", "rnncore.bench", "--memory-child",
                               json.dumps(spec)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            out[impl] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def checkpoint_table(row, dtype, threads=1) -> list:
    """Memory and time of one forward + backward of ``row`` at checkpoint_every = T
    (keep everything), ≈ √T and 1, each in a fresh subprocess."""
    import math

    T = row.steps
    table = []
    for k in (T, math.isqrt(T - 1) + 1, 1):
        figures = measure_memory(row, backend.parse_device("cpu"), dtype, ["rnncore"],
                                 threads, checkpoint_every=k if k < T else 0)["rnncore"]
        table.append({"checkpoint_every": k, **figures})
    return table


def _mib(n) -> str:
    return "–" if n is None else f"{n / 2**20:.1f}"


def memory_report(results, baseline) -> list:
    """Markdown lines: the memory table (MiB), when the rows were measured."""
    measured = [r for r in results if r.get("memory")]
    if not measured:
        return []
    lines = ["", "Activation memory in MiB, each implementation in a fresh process, one "
             "forward + backward (kept: what the forward keeps for backward, counted "
             "exactly; NumPy peak: tracemalloc; peak: on the CPU the VmHWM rise, on a GPU "
             "torch.cuda.max_memory_allocated and, for rnncore, the growth of CuPy's pool, "
             f"an upper bound of its high-water mark; {LOOP_PASSES} passes: the CPU's VmHWM "
             f"rise over {LOOP_PASSES} more passes in a row, from the same start; see "
             "bench.py):", "",
             f"| row | impl | kept | NumPy peak | peak | peak, {LOOP_PASSES} passes | "
             "≤ torch (peaks) |",
             "|---|---|---:|---:|---:|---:|---|"]

    def peaks(f):
        return (f.get("rss_peak_bytes", f.get("device_peak_bytes")),
                f.get("rss_loop_peak_bytes"))

    for r in measured:
        torch_peaks = peaks(r["memory"].get("torch", {}))
        for impl, f in r["memory"].items():
            if "error" in f:
                lines.append(f"| {r['label']} | {impl} | error: {f['error'][:60]} | | | | |")
                continue
            both = [(a, b) for a, b in zip(peaks(f), torch_peaks)
                    if a is not None and b is not None]
            verdict = "" if impl == "torch" or not both else \
                ("yes" if all(a <= b for a, b in both) else "no")
            name = baseline if impl == "torch" else impl
            one, loop = peaks(f)
            lines.append(f"| {r['label']} | {name} | {_mib(f.get('kept_bytes'))} | "
                         f"{_mib(f.get('numpy_peak_bytes'))} | {_mib(one)} | {_mib(loop)} | "
                         f"{verdict} |")
    return lines


def checkpoint_report(label, table) -> list:
    lines = ["", f"Recompute trade-off on {label} (rnncore, one forward + backward, fresh "
             "process each; time under whatever load the machine had):", "",
             "| checkpoint_every | kept MiB | NumPy peak MiB | peak RSS MiB | seconds |",
             "|---:|---:|---:|---:|---:|"]
    for e in table:
        sec = e.get("seconds")
        lines.append(f"| {e['checkpoint_every']} | {_mib(e.get('kept_bytes'))} | "
                     f"{_mib(e.get('numpy_peak_bytes'))} | {_mib(e.get('rss_peak_bytes'))} | "
                     f"{'–' if sec is None else f'{sec:.2f}'} |")
    return lines


# --------------------------------------------------------------------------- environment
def blas_thread_counts() -> str:
    """The thread count of every BLAS library loaded in this process, read back from it."""
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not libs:
        return "unknown (no BLAS library found by threadpoolctl)"
    return ", ".join(f"{lib['num_threads']} ({lib.get('internal_api', '?')} "
                     f"{lib.get('version') or ''}".rstrip() + ")" for lib in libs)


def disable_tf32() -> None:
    """Make torch compute float32 in IEEE float32 on the GPU, as CuPy does by default."""
    import torch

    for holder in (getattr(torch.backends.cudnn, "rnn", None),
                   getattr(torch.backends.cudnn, "conv", None),
                   getattr(torch.backends.cuda, "matmul", None)):
        if holder is not None and hasattr(holder, "fp32_precision"):
            holder.fp32_precision = "ieee"


def gemm_flops(row) -> dict:
    """{pass: GEMM FLOPs} of one row: 2·T·B·(I_l + H)·G·H per layer direction forward
    (I_l: the input's width, or the layer below's output, directions·H), twice that again
    backward (∂x and ∂h, and the weight gradients). With lengths, the
    sequences' own steps (Σ lengths for T·B): the work asked for, though rnncore's loops
    run the padded steps too."""
    G = cells.get(row.cell).num_gates
    lengths = row.sequence_lengths()
    columns = row.steps * row.batch if lengths is None else int(lengths.sum())
    forward = 0
    for k in range(row.layers):
        width = row.input_size if k == 0 else row.directions * row.hidden
        forward += row.directions * 2 * columns * (width + row.hidden) * G * row.hidden
    return {"forward": forward, "forward+backward": 3 * forward}


def gemm_peak(dtype, threads, n=2048, repeats=5) -> dict:
    """This machine's GEMM GFLOP/s at ``threads`` threads: the faster of NumPy's BLAS
    (``blas``: the median of ``repeats`` n³ products, after a warm-up) and rnncore's packed
    step kernel (``kernel``; rnncore.drivers.compiled_cpu.kernel_gflops, where it builds),
    which outruns BLAS on some machines, so that no row's share of the peak exceeds 100 %
    because BLAS is not the fastest GEMM here."""
    rates = {"blas": blas_gemm_gflops(dtype, n, repeats)}
    from .drivers import compiled_cpu
    if compiled_cpu.available():
        rates["kernel"] = compiled_cpu.kernel_gflops(dtype, threads,
                                                     repeats=2 if n < 2048 else 20)
    rates["peak"] = max(rates.values())
    return rates


PEAK_SOURCES = {"blas": "NumPy's BLAS on 2048³", "kernel": "rnncore's packed step kernel on "
                "(2048×512)·(512×64)"}


def blas_gemm_gflops(dtype, n, repeats) -> float:
    """NumPy's BLAS on n³ products: GFLOP/s of the median of ``repeats``."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    out = np.empty((n, n), dtype)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas() -> str:
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{info['name']} {info.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        return "unknown"


def machine_info(device, threads, blas_threads) -> dict:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu_model()} ({cores} cores available)",
        "threads": threads,
        "numpy_blas_threads": blas_threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas(),
        "torch": torch.__version__,
        "load_average_before": os.getloadavg(),
    }
    if device.kind == "cuda":
        cupy = backend.import_cupy()
        props = cupy.cuda.runtime.getDeviceProperties(device.index)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() \
            else "unavailable"
        info["torch_fp32_precision"] = "ieee (TF32 off)"
    return info


# --------------------------------------------------------------------------- output
def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def markdown_report(meta: dict, results: list) -> str:
    """The header, the accuracy table and the timing table, as Markdown."""
    dev = meta["device"]
    lines = [f"### rnncore vs torch.nn on {dev} ({meta['dtype']})", ""]
    lines.append(f"- command: `{meta['command']}`")
    lines.append(f"- date: {meta['date']}")
    lines.append(f"- machine: {meta.get('gpu', meta['cpu'])}"
                 + (f"; host CPU {meta['cpu']}" if "gpu" in meta else ""))
    lines.append(f"- threads: torch {meta['threads']}, NumPy BLAS {meta['numpy_blas_threads']}")
    versions = (f"- versions: Python {meta['python']}, NumPy {meta['numpy']} "
                f"({meta['numpy_blas']}), torch {meta['torch']}")
    if "cupy" in meta:
        versions += (f", CuPy {meta['cupy']}, CUDA runtime {meta['cuda_runtime']}, "
                     f"cuDNN {meta['cudnn']}, torch float32 {meta['torch_fp32_precision']}")
    lines.append(versions)
    sample = meta.get("min_sample_seconds", 0)
    lines.append(f"- timing: median of {meta['repeats']} interleaved repeats after "
                 f"{meta['warmup']} warm-up round(s)"
                 + (f", a repeat the mean of as many calls in a row as take {sample:g} s "
                    f"(calls/sample)" if sample else "") + "; load average before "
                 f"{_fmt_load(meta['load_average_before'])}, after "
                 f"{_fmt_load(meta['load_average_after'])}")
    skipped = {}
    for r in results:
        for name, why in r.get("skipped", {}).items():
            skipped.setdefault((name, why), []).append(r["label"])
    for (name, why), labels in skipped.items():
        where = "" if len(labels) == len(results) else f" on {'; '.join(labels)}"
        lines.append(f"- {name}: skipped{where} ({why})")
    if not any("rel_error" in r for r in results):  # --memory-only
        lines += memory_report(results, results[0]["baseline"])
        if meta.get("checkpoint_table"):
            lines += checkpoint_report(meta["checkpoint_row"], meta["checkpoint_table"])
        return "\n".join(lines)
    lines += ["", "Relative error against a float64 CPU reference, torch.nn's twin or, for a "
              "cell with no torch.nn twin, rnncore's own (max |a − ref| / max |ref|):", ""]
    tensors = list(next(iter(results[0]["rel_error"].values())))
    lines.append("| row | impl | reference | " + " | ".join(tensors) + " |")
    lines.append("|---|---|---|" + "---:|" * len(tensors))
    for r in results:
        for impl, errs in r["rel_error"].items():
            lines.append(f"| {r['label']} | {impl} | {r['reference']} | "
                         + " | ".join(f"{errs[t]:.1e}" for t in tensors) + " |")
    impls = list(dict.fromkeys(n for r in results for n in r["impls"]))
    baseline = results[0]["baseline"]
    others = [n for n in impls if n != baseline] if baseline in impls else []
    peak = meta.get("gemm_peak_gflops")
    intro = (f"Time per call in ms; ratio = {baseline} time / rnncore time (> 1: rnncore "
             f"faster), of the medians and, per round, the median of the rounds' own ratios")
    if peak:
        intro += (f"; GEMM GFLOP/s of each, and in brackets its fraction of this machine's "
                  f"measured GEMM peak, {peak:.1f} GFLOP/s at {meta['threads']} thread(s), "
                  f"the best of a reading before the rows, one after them and those in "
                  f"their rounds")
        rates = meta.get("gemm_rates_gflops", {})
        if rates:
            intro += " (the faster of " + " and ".join(
                f"{PEAK_SOURCES.get(k, k)} {v:.1f}" for k, v in rates.items()) + ")"
    per_round = peak and any(r.get("round_kernel_gflops") for r in results)
    if per_round:
        intro += (f"; and of the peak read in the row's own timing rounds (between the "
                  f"calls, the kernel's best of {ROUND_PEAK_REPEATS} products each round: "
                  f"the machine's speed drifts between minutes)")
    lines += ["", intro + ":", ""]
    calls = bool(meta.get("min_sample_seconds"))
    header = ["row", "pass"] + (["calls/sample"] if calls else []) + ["GEMM GFLOP"] \
        + [f"{n} ms" for n in impls] + [f"{baseline}/{n}" for n in others] \
        + [f"{baseline}/{n} per round" for n in others]
    if peak:
        header += [f"{n} GFLOP/s (of peak)" for n in impls]
    if per_round:
        header += ["rounds' peak GFLOP/s"] + [f"{n} of rounds' peak" for n in impls]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|---|" + "---:|" * (len(header) - 2))
    for r in results:
        for p in PASSES:
            flops = r["gemm_flops"][p]
            cells = [r["label"], p] + ([str(r.get("calls_per_sample", {}).get(p, "–"))]
                                       if calls else []) + [f"{flops / 1e9:.2f}"]
            cells += [_fmt_ms(r["median_ms"][p][n]) if n in r["impls"] else "–" for n in impls]
            cells += [f"{r['ratio'][p][n]:.2f}" if n in r["ratio"][p] else "–" for n in others]
            per_round_ratio = r.get("ratio_per_round", {}).get(p, {})
            cells += [f"{per_round_ratio[n]:.2f}" if n in per_round_ratio else "–"
                      for n in others]
            rate = {n: flops / (r["median_ms"][p][n] / 1e3) / 1e9 for n in r["impls"]}
            if peak:
                cells += [f"{rate[n]:.1f} ({100 * rate[n] / peak:.0f} %)" if n in rate else "–"
                          for n in impls]
            if per_round:
                at_the_time = round_peak(r, p, meta)
                cells.append(f"{at_the_time:.1f}" if at_the_time else "–")
                cells += [f"{100 * rate[n] / at_the_time:.0f} %" if n in rate and at_the_time
                          else "–" for n in impls]
            lines.append("| " + " | ".join(cells) + " |")
    lines += split_report(results)
    lines += memory_report(results, baseline)
    if meta.get("checkpoint_table"):
        lines += checkpoint_report(meta["checkpoint_row"], meta["checkpoint_table"])
    return "\n".join(lines)


def layer_steps(row) -> int:
    """Layer-steps in one pass of ``row``: layers × T (one direction)."""
    return row["config"]["layers"] * row["config"]["steps"]


def split_report(results) -> list:
    """Markdown lines: the GPU forward+backward time split (ms) and µs per layer-step."""
    measured = [r for r in results if r.get("split_ms")]
    if not measured:
        return []
    lines = ["", "Forward+backward on the GPU: the driver impl=\"auto\" runs, µs per "
             "layer-step (median wall time / (layers × T)), and where the time goes (ms of "
             "kernel time by class, from one profiled call; launch and host = the median "
             "wall time minus all kernel time):", ""]
    lines.append("| row | auto runs | impl | µs/layer-step | " + " | ".join(SPLIT_COLUMNS)
                 + " |")
    lines.append("|---|---|---|---:|" + "---:|" * len(SPLIT_COLUMNS))
    for r in measured:
        for impl, split in r["split_ms"].items():
            us = 1e3 * r["median_ms"]["forward+backward"][impl] / layer_steps(r)
            cells = ([split["error"]] + [""] * (len(SPLIT_COLUMNS) - 1)) if "error" in split \
                else [f"{split[c]:.2f}" for c in SPLIT_COLUMNS]
            lines.append(f"| {r['label']} | {r['auto_choice']} | {impl} | {us:.1f} | "
                         + " | ".join(cells) + " |")
    return lines


def _fmt_load(load) -> str:
    return " ".join(f"{v:.2f}" for v in load)


# --------------------------------------------------------------------------- command line
def parse_args(argv):
    parser = cli.Parser(prog="python -m rnncore.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", type=_device,
                        help="cpu (default), cuda or cuda:N")
    parser.add_argument("--rows", default=None, type=cli.choice_list(ROWS),
                        help="comma-separated row keys (default: the device's table); "
                             "known: " + ", ".join(ROWS))
    parser.add_argument("--cells", default=None, type=cli.choice_list(cells.names, "all"),
                        help="bench these registered cells (comma list, or all) at the size "
                             "of each selected row, instead of the row's own cell; "
                             "registered: " + ", ".join(cells.names()))
    parser.add_argument("--batches", default=None, type=cli.int_list(1, 65_536),
                        help="run each selected row at these batch sizes instead of its own "
                             "(a comma list; after --quick's sizes)")
    parser.add_argument("--repeats", type=cli.at_least(1, 100_000), default=None,
                        help="timed rounds per pass (default 5 on cpu, 30 on cuda, 2 with "
                             "--quick; an explicit value wins over --quick)")
    parser.add_argument("--warmup", type=cli.at_least(0, 100_000), default=None,
                        help="untimed rounds first (default 1 on cpu, 3 on cuda, 1 with "
                             "--quick; an explicit value wins over --quick)")
    parser.add_argument("--dtype", default="float32", choices=sorted(backend.DTYPES))
    parser.add_argument("--threads", type=cli.int_list(1, 4096), default=None,
                        help="CPU threads for torch and NumPy's BLAS, a comma list: the table "
                             "is run once per count (default: 1 and all cores)")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes (H 16, B 4, T 6) of the selected rows and 2 repeats: "
                             "checks that the benchmark runs; --repeats/--warmup given "
                             "explicitly win")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the memory columns (measured by default: each "
                             "implementation once more in a fresh subprocess)")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the memory figures (no accuracy check, no timing): for "
                             "the long row")
    parser.add_argument("--checkpoint-table", action="store_true",
                        help="also measure rnncore's recompute trade-off (checkpoint_every "
                             "= T, about sqrt(T), 1) on the first selected row")
    parser.add_argument("--json", metavar="FILE",
                        help="also write every sample as JSON (checked before the run; "
                             "an existing file is replaced, atomically)")
    args = parser.parse_args(argv)
    keys = args.rows or DEFAULT_ROWS[args.device.kind]
    rows = [ROWS[k].quick() if args.quick else ROWS[k] for k in keys]
    if args.batches:
        rows = [row.with_batch(b) for row in rows for b in args.batches]
    if args.cells:
        rows = [row.with_cell(c) for row in rows for c in args.cells]
    if args.batches or args.cells:  # the same configuration once
        rows = list({dataclasses.replace(r, key="", note=""): r for r in rows}.values())
    args.rows = rows
    repeats, warmup = (2, 1) if args.quick else DEFAULT_REPEATS[args.device.kind]
    args.repeats = repeats if args.repeats is None else args.repeats
    args.warmup = warmup if args.warmup is None else args.warmup
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.threads is None:
        args.threads = sorted({1, cores}) if args.device.kind == "cpu" else [cores]
    if args.json is not None:
        cli.check_out_file(parser, "--json", args.json)
    if args.device.kind == "cuda":
        try:
            backend.array_module(args.device)
        except RuntimeError as err:
            parser.error(f"--device {args.device}: {err}")
    return args


def _device(text):
    try:
        return backend.parse_device(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r:.40}") \
            from None


def main(argv=None) -> list:
    """Run the benchmark; prints Markdown, optionally writes JSON; returns the row results."""
    import torch

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--memory-child"]:  # one implementation's memory, in this fresh process
        print(json.dumps(memory_child(json.loads(argv[1]))))
        return []
    args = parse_args(argv)
    torch_threads = torch.get_num_threads()
    results, runs = [], []
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            with threadpool_limits(limits=threads, user_api="blas"):
                meta, rows = run(args, argv)
            results += rows
            runs.append({"meta": meta, "rows": rows})
    finally:
        torch.set_num_threads(torch_threads)
    if args.json:
        document = runs[0] if len(runs) == 1 else {"runs": runs}
        try:
            cli.write_text_atomic(args.json, json.dumps(document, indent=1))
        except OSError as err:
            print(f"python -m rnncore.bench: error: --json {args.json}: cannot write it "
                  f"({err.strerror or err})", file=sys.stderr)
            raise SystemExit(1) from None
    return results


def run(args, argv):
    """One table at the current thread count: (meta, row results); prints the report."""
    import torch

    blas_threads = blas_thread_counts()
    if args.device.kind == "cuda":
        backend.import_cupy().cuda.Device(args.device.index).use()
        torch.cuda.set_device(args.device.index)
        disable_tf32()
    meta = machine_info(args.device, torch.get_num_threads(), blas_threads)
    min_sample = 0.0 if args.quick else MIN_SAMPLE_SECONDS[args.device.kind]
    meta.update(device=str(args.device), dtype=args.dtype, repeats=args.repeats,
                warmup=args.warmup, quick=args.quick, min_sample_seconds=min_sample,
                command=shlex.join(["python", "-m", "rnncore.bench", *argv]))
    peak_n = 256 if args.quick else 2048
    if args.device.kind == "cpu":
        rates = gemm_peak(args.dtype, torch.get_num_threads(), n=peak_n)
    results = []
    for row in args.rows:
        print(f"[bench] {row.label} ...", file=sys.stderr, flush=True)
        results.append(bench_row(row, args.device, args.dtype, args.repeats, args.warmup,
                                 memory="only" if args.memory_only else args.memory,
                                 threads=torch.get_num_threads(), min_sample=min_sample))
    if args.checkpoint_table and args.device.kind == "cpu":
        print(f"[bench] recompute trade-off on {args.rows[0].label} ...", file=sys.stderr,
              flush=True)
        meta["checkpoint_row"] = args.rows[0].label
        meta["checkpoint_table"] = checkpoint_table(args.rows[0], args.dtype,
                                                    torch.get_num_threads())
    if args.device.kind == "cuda" and not args.memory_only:
        for row, result in zip(args.rows, results):
            print(f"[bench] time split of {row.label} ...", file=sys.stderr, flush=True)
            result["split_ms"] = gpu_splits(row, args.device, args.dtype,
                                            result["median_ms"]["forward+backward"])
    if args.device.kind == "cpu":  # measured again: a peak is the best seen (on a
        # shared machine one reading can land in a slow spell)
        again = gemm_peak(args.dtype, torch.get_num_threads(), n=peak_n)
        rates = {k: max(rates[k], again[k]) for k in rates if k != "peak"}
        if "kernel" in rates:  # and the readings taken in the rows' rounds
            rates["kernel"] = max([rates["kernel"]] + [
                g for r in results for readings in r.get("round_kernel_gflops", {}).values()
                for g in readings])
        meta["gemm_peak_gflops"] = max(rates.values())
        meta["gemm_rates_gflops"] = rates
    meta["load_average_after"] = os.getloadavg()
    print(markdown_report(meta, results))
    tolerance = 1e-3 if args.dtype == "float32" else 1e-8
    bad = [(r["label"], n, t, e) for r in results for n, errs in r.get("rel_error", {}).items()
           for t, e in errs.items() if not e <= tolerance]
    for label, name, tensor, err in bad:
        print(f"WARNING: {name} on {label}: {tensor} relative error {err:.1e} > {tolerance:g}",
              file=sys.stderr)
    return meta, results


if __name__ == "__main__":
    main()
