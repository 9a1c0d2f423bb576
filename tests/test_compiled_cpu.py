"""The compiled CPU driver: the whole time loop in C++ (kernels/*_cpu.cpp), feature-major,
calling NumPy's BLAS. It must equal the reference driver to rounding in every
configuration, pass the finite-difference checks, feed the gradient-flow recorder the same
gradients, repeat bit for bit, and leave cells it cannot run to the reference."""

import ctypes
import itertools

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import rnncore
from rnncore import fused, gradcheck, gradflow
from rnncore.drivers import compiled_cpu

pytestmark = pytest.mark.skipif(not fused.available("cpu"),
                                reason="no C++ compiler: the CPU loops cannot be built")

CELLS = [c for c in rnncore.cells.names()
         if rnncore.cells.get(c).cpu_loop_for(rnncore.cells.Dims(3, 4)) is not None]
TOL = {"float64": dict(rtol=1e-11, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-5)}
CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, residual="layers", dropout=0.3, init_state="learned"),
    dict(num_layers=2, bidirectional=True, residual="stack", init_state="normal",
         dropout=0.2, dropout_mode="variational"),
]


def _run(cell, impl, dtype, options, lengths, hidden=7, recorder=None, batch=4, inputs=5,
         spoil_input=False, steps=6):
    """Forward and backward; ``spoil_input``: the caller overwrites x in between (the
    backward must read the copy of x the driver kept)."""
    m = rnncore.Recurrent(cell, inputs, hidden, impl=impl, dtype=dtype, seed=3, **options)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((steps, batch, inputs)).astype(dtype)
    out, state = m(x, lengths=lengths)
    if spoil_input:
        x[...] = np.nan
    states = state if isinstance(state, tuple) else (state,)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dstates = tuple(rng.standard_normal(s.shape).astype(dtype) for s in states)
    dx, dstate0 = m.backward(dout, dstates if len(dstates) > 1 else dstates[0], recorder)
    dstate0 = dstate0 if isinstance(dstate0, tuple) else (dstate0,)
    return m, [out, dx, *states, *dstate0], m.grads


def test_the_cells_with_a_compiled_loop():
    assert {"lstm", "gru", "rnn_tanh", "rnn_relu"} <= set(CELLS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("options", CONFIGS, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_equals_the_reference_driver(cell, options, dtype):
    for lengths in (None, np.array([6, 2, 5, 1])):
        m, ours, our_grads = _run(cell, "compiled", dtype, options, lengths)
        assert m.impl_in_use == "compiled"
        _, ref, ref_grads = _run(cell, "reference", dtype, options, lengths)
        for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
            np.testing.assert_allclose(a, b, err_msg=f"output {k}", **TOL[dtype])
        assert our_grads.keys() == ref_grads.keys()
        for name in ref_grads:
            np.testing.assert_allclose(our_grads[name], ref_grads[name], err_msg=name,
                                       **TOL[dtype])


# Batches of both step kernels (kernels/cpu_gemm.h). The batch-vectorised one takes a
# multiple of 16 floats or 8 doubles (24 and 48 add a one-vector column tile to the
# two-vector ones); hidden 7 and 13 leave a partial block of rows (blocks of 12), hidden 16
# runs blocks of 8 (pick_mr: a multiple of 8 with the step's operand in L1). The other
# batches run the kernel with vectors along the rows, in blocks of 32 floats or 16 doubles
# (every hidden size leaves a partial one; 40 is two blocks of floats, three of doubles):
# 20 is a tile of 12 columns and one of 8, 3 and 1 take its second set of sums (odd depth 7
# and 13 leave a k over), and 1 the input projection as one product of all the steps. At
# those batches the element loops run flat, a block of units' values as one row (UnitElements,
# cpu_loop.h: the biases expanded, the flags repeated, the backward's gradient rows copied
# into the chunk), and past the row's last whole vector the vector that ends there
# (for_columns), with lengths and without.
PACKED_BATCHES = {"float32": (16, 48, 20, 3, 1), "float64": (8, 24, 12, 3, 1)}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_the_packed_step_kernel_equals_the_reference_driver(cell, dtype):
    for batch, lengths in itertools.product(PACKED_BATCHES[dtype], ("none", "random")):
        lengths = np.random.default_rng(batch).integers(1, 7, batch) \
            if lengths == "random" else None
        for hidden, options in ((7, dict(num_layers=1)),
                                (13, dict(num_layers=2, bidirectional=True)),
                                (16, dict(num_layers=2, bidirectional=True)),
                                (40, dict(num_layers=1))):
            m, ours, our_grads = _run(cell, "compiled", dtype, options, lengths, hidden,
                                      batch=batch)
            assert m.impl_in_use == "compiled"
            _, ref, ref_grads = _run(cell, "reference", dtype, options, lengths, hidden,
                                     batch=batch)
            for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
                np.testing.assert_allclose(a, b, err_msg=f"B {batch} output {k}", **TOL[dtype])
            for name in ref_grads:
                np.testing.assert_allclose(our_grads[name], ref_grads[name],
                                           err_msg=f"B {batch} {name}", **TOL[dtype])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_the_output_and_copy_of_x_written_past_the_cache_equal_the_reference(
        cell, dtype, threads):
    """Where the batch-major output's rows and the copy of x are whole, aligned vectors
    (hidden and input 32, batch 16; on two threads 16 units and 16 inputs each) the forward
    writes them with non-temporal stores (kernels/cpu_loop.h, store_past_cache). The caller
    overwrites x after the forward: the backward reads the driver's copy."""
    lengths = np.array([6, 2, 5, 1] * 4)
    shapes = dict(hidden=32, inputs=32, batch=16)
    with threadpool_limits(limits=threads, user_api="blas"):
        _, ours, our_grads = _run(cell, "compiled", dtype, dict(num_layers=2), lengths,
                                  spoil_input=True, **shapes)
    _, ref, ref_grads = _run(cell, "reference", dtype, dict(num_layers=2), lengths, **shapes)
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_allclose(a, b, err_msg=f"output {k}", **TOL[dtype])
    for name in ref_grads:
        np.testing.assert_allclose(our_grads[name], ref_grads[name], err_msg=name,
                                   **TOL[dtype])


CHUNKED_LENGTHS = np.array([6, 2, 5, 1, 3, 6, 4, 2, 5, 6, 1, 3])
CHUNKED_OPTIONS = dict(num_layers=2, bidirectional=True, checkpoint_every=4)


def _chunked_run(cell, monkeypatch, chunk_steps, threads, buffers=None, impl="compiled",
                 batch=8):
    """Over ∂z chunks of chunk_steps steps and recompute segments of 4 (pieces starting
    mid-sequence; with 3-step chunks a chunk split over two segments), in both directions,
    on `threads` threads; batch 8 runs the batch kernel and the element loops by unit, 5 the
    other kernel and the flat loops, whose ∂z rows are copied into the chunk; 8 and 12 (the
    other kernel too) compute ∂x in the loop, 5 after it (joins_input_grad)."""
    monkeypatch.setattr(compiled_cpu, "CHUNK_BYTES", (1, 1 << 30))
    monkeypatch.setattr(compiled_cpu, "CHUNK_MIN_COLUMNS", batch * chunk_steps)
    if buffers is not None:
        monkeypatch.setattr(compiled_cpu, "ZBUFFERS", buffers)
    with threadpool_limits(limits=threads, user_api="blas"):
        _, outs, grads = _run(cell, impl, "float64", CHUNKED_OPTIONS,
                              CHUNKED_LENGTHS[:batch], hidden=13, batch=batch)
    return outs, grads


@pytest.mark.parametrize("batch", [8, 5, 12])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("chunk_steps", [2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_the_packed_backward_over_chunks_and_segments_equals_the_reference(
        cell, chunk_steps, threads, batch, monkeypatch):
    """With the packed kernel the backward stages each step's ∂z rows contiguously, and on
    several threads it runs the loop beside the finished chunks' products
    (pipelined_chunks): over chunks and segments (_chunked_run) it must equal the
    reference driver."""
    ours, our_grads = _chunked_run(cell, monkeypatch, chunk_steps, threads, batch=batch)
    ref, ref_grads = _chunked_run(cell, monkeypatch, chunk_steps, 1, impl="reference",
                                  batch=batch)
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_allclose(a, b, err_msg=f"output {k}", **TOL["float64"])
    for name in ref_grads:
        np.testing.assert_allclose(our_grads[name], ref_grads[name], err_msg=name,
                                   **TOL["float64"])


@pytest.mark.parametrize("batch", [8, 5, 12])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("chunk_steps", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_the_pipelined_backward_changes_no_bit(cell, chunk_steps, threads, batch,
                                               monkeypatch):
    """The loop beside the products (pipelined_chunks, ∂z in 2 buffers, so that the loop
    waits for a buffer at 1- and 2-step chunks) computes every product share exactly as
    the loop-then-products order on the same threads (one buffer): the same bits."""
    lib, _ = compiled_cpu.library()
    lib.cpu_loop_pipelined_calls.restype = ctypes.c_int64
    before = lib.cpu_loop_pipelined_calls()
    outs, grads = _chunked_run(cell, monkeypatch, chunk_steps, threads, buffers=2,
                               batch=batch)
    assert lib.cpu_loop_pipelined_calls() > before
    middle = lib.cpu_loop_pipelined_calls()
    one_outs, one_grads = _chunked_run(cell, monkeypatch, chunk_steps, threads, buffers=1,
                                       batch=batch)
    assert lib.cpu_loop_pipelined_calls() == middle
    for k, (a, b) in enumerate(zip(outs, one_outs, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {k}")
    for name in grads:
        np.testing.assert_array_equal(grads[name], one_grads[name], err_msg=name)


@pytest.mark.parametrize("hidden", [25, 40])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", [16, 5, 1])
def test_the_loops_split_over_threads_equal_the_reference_driver(cell, threads, hidden, batch):
    """The loops run on as many threads as NumPy's BLAS is limited to, each taking whole
    blocks of units (batch 16, hidden 25: 3 blocks of 12, 2 + 1 or 1 + 1 + 1; hidden 40: 5 of
    8; batches 5 and 1, blocks of 16 doubles: 2 and 3 blocks, a thread of three with none;
    at batch 1 X_g's one product of the 6 steps is one tile, on one of the threads: the
    next test splits it)."""
    lengths = np.array([6, 2, 5, 1] * 4)[:batch]
    with threadpool_limits(limits=threads, user_api="blas"):
        assert compiled_cpu.numpy_blas().get_num_threads() == threads
        _, ours, our_grads = _run(cell, "compiled", "float64", dict(num_layers=2), lengths,
                                  hidden=hidden, batch=batch)
    _, ref, ref_grads = _run(cell, "reference", "float64", dict(num_layers=2), lengths,
                             hidden=hidden, batch=batch)
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_allclose(a, b, err_msg=f"output {k}", **TOL["float64"])
    for name in ref_grads:
        np.testing.assert_allclose(our_grads[name], ref_grads[name], err_msg=name,
                                   **TOL["float64"])


@pytest.mark.parametrize("batch, hidden", [(16, 40), (5, 64), (3, 57)])
@pytest.mark.parametrize("cell", CELLS)
def test_the_threads_shares_move_without_changing_a_bit(cell, batch, hidden):
    """The loops move whole blocks of units from a slower thread to a faster one as they
    run (kernels/cpu_loop.h, UnitShares); which thread computes a unit changes no bit of
    the result. Team position 0 is made to look four times slower, so that the shares move
    on any machine (batch 16, hidden 40: 5 blocks of 8, 2 + 3 at first; batch 5, hidden 64:
    4 blocks of 16 doubles, 2 + 2, the element loops flat, UnitElements; batch 3, hidden 57:
    a last block of 9 units, 27 values, whose last 3 are not a whole vector)."""
    lib, _ = compiled_cpu.library()
    lib.cpu_loop_share_moves.restype = ctypes.c_int64
    lengths = np.array([6, 2, 5, 1] * 4)
    runs = []
    for factor in (1.0, 4.0):
        lib.cpu_loop_test_slow_thread(ctypes.c_int64(0), ctypes.c_double(factor))
        moves = lib.cpu_loop_share_moves()
        try:
            with threadpool_limits(limits=2, user_api="blas"):
                _, outs, grads = _run(cell, "compiled", "float64", dict(num_layers=2),
                                      lengths[:batch], hidden=hidden, batch=batch)
        finally:
            lib.cpu_loop_test_slow_thread(ctypes.c_int64(-1), ctypes.c_double(1.0))
        runs.append((outs, grads, lib.cpu_loop_share_moves() - moves))
    (even, even_grads, _), (moved, moved_grads, moves) = runs
    assert moves > 0
    for k, (a, b) in enumerate(zip(even, moved, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {k}")
    for name in even_grads:
        np.testing.assert_array_equal(even_grads[name], moved_grads[name], err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_the_batch_1_input_projection_splits_whole_tiles_of_steps(cell, dtype):
    """At batch 1 X_g is one product of all the steps (kernels/hoisted.h,
    input_projection_b1), its tiles of up to 12 steps stored transposed into X_g's rows:
    27 steps are tiles of 12, 12 and 3 (the last with its second set of sums, and with
    5 inputs a k left over). Two threads take 1 and 2 tiles, three one each; a step's sums
    do not depend on the tile it is in, so the forward is the same bit for bit on 1, 2 and
    3 threads, and equals the reference driver. Hidden 25 and 40: the gates' rows in blocks
    of 32 floats or 16 doubles, the last one partial."""
    for hidden in (25, 40):
        forwards = []
        for threads in (1, 2, 3):
            with threadpool_limits(limits=threads, user_api="blas"):
                m, ours, our_grads = _run(cell, "compiled", dtype, dict(num_layers=2), None,
                                          hidden=hidden, batch=1, steps=27)
            states = len(m.cell.state)
            forwards.append([ours[0], *ours[2:2 + states]])  # the output, the last states
        for run in forwards[1:]:
            for k, (a, b) in enumerate(zip(run, forwards[0], strict=True)):
                np.testing.assert_array_equal(a, b, err_msg=f"hidden {hidden}, output {k}")
        _, ref, ref_grads = _run(cell, "reference", dtype, dict(num_layers=2), None,
                                 hidden=hidden, batch=1, steps=27)
        for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
            np.testing.assert_allclose(a, b, err_msg=f"hidden {hidden}, output {k}",
                                       **TOL[dtype])
        for name in ref_grads:
            np.testing.assert_allclose(our_grads[name], ref_grads[name], err_msg=name,
                                       **TOL[dtype])


# The cells whose backward step's gradient d_t is ∂x_g,t itself (no separate ∂h_g): their
# loop computes ∂x_t = (W_ihᵀ d_t)ᵀ a step at a time from batch 8 on (kernels/backward_chunks.h,
# joins_input_grad). The GRU's ∂h_g is not its ∂x_g: ∂x stays one product of a chunk.
INPUT_GRAD_IN_LOOP = {"lstm", "rnn_tanh", "rnn_relu"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_the_loop_computes_the_input_gradient_from_batch_8(cell, dtype):
    """From batch 8 on each step's ∂x_t is the packed kernel's product W_ihᵀ d_t (the batch
    kernel at 16, and at 8 for doubles; the column kernel at 20, and at 8 for floats), each
    thread its rows of ∂x_t in proportion to its units (hidden 25 at batch 16: units in
    blocks of 12, 12 + 13 on two threads, 12 + 12 + 1 on three; inputs 40 and, in the second
    layer, 50, whose last block of rows is partial). A row of ∂x_t is one thread's whole sum,
    so ∂x is the same bit for bit on 1, 2 and 3 threads, and equals the reference driver, in
    both directions and with lengths; at batch 5 ∂x is the hoisted product. Over several
    chunks, segments and the pipelined backward: the chunked tests' batch 12."""
    lib, _ = compiled_cpu.library()
    lib.cpu_loop_input_grad_in_loop_segments.restype = ctypes.c_int64
    options = dict(num_layers=2, bidirectional=True)
    for batch in (16, 20, 8, 5):
        lengths = np.random.default_rng(batch).integers(1, 7, batch)
        runs = []
        for threads in (1, 2, 3):
            before = lib.cpu_loop_input_grad_in_loop_segments()
            with threadpool_limits(limits=threads, user_api="blas"):
                _, ours, our_grads = _run(cell, "compiled", dtype, options, lengths,
                                          hidden=25, batch=batch, inputs=40)
            in_loop = lib.cpu_loop_input_grad_in_loop_segments() - before
            # a segment for each of the 2 layers' 2 directions, each computing its ∂x
            assert in_loop == (4 if cell in INPUT_GRAD_IN_LOOP and batch >= 8 else 0)
            runs.append(ours[1])
        for threads, dx in zip((2, 3), runs[1:]):
            np.testing.assert_array_equal(dx, runs[0], err_msg=f"B {batch}, {threads} threads")
        _, ref, ref_grads = _run(cell, "reference", dtype, options, lengths, hidden=25,
                                 batch=batch, inputs=40)
        for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
            np.testing.assert_allclose(a, b, err_msg=f"B {batch}, output {k}", **TOL[dtype])
        for name in ref_grads:
            np.testing.assert_allclose(our_grads[name], ref_grads[name],
                                       err_msg=f"B {batch}, {name}", **TOL[dtype])


def test_the_input_projection_joins_the_step_but_at_batch_1():
    driver = compiled_cpu.CompiledCPU()
    dims = rnncore.cells.Dims(5, 7)
    lstm, gru = (rnncore.cells.get(c).cpu_loop_for(dims) for c in ("lstm", "gru"))
    assert driver._joins_input(lstm, 32)
    assert driver._joins_input(lstm, 8)
    assert driver._joins_input(lstm, 20)  # the column kernel
    assert not driver._joins_input(lstm, 1)  # X_g: one product
    assert not driver._joins_input(gru, 32)  # its n gate needs W_hn h


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(cell):
    case = gradcheck.MatrixCase(cell, 2, True, "layers", "variational")
    report = gradcheck.run_case(case, impl="compiled")
    assert report.max_error < 1e-6, report.table()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_recorder_sees_the_reference_gradients(cell):
    lengths = np.array([6, 3, 5, 2])
    recs = {}
    for impl in ("compiled", "reference"):
        recs[impl] = gradflow.GradFlowRecorder(keep=True)
        _run(cell, impl, "float64", dict(num_layers=2, bidirectional=True), lengths,
             recorder=recs[impl])
    assert recs["compiled"].kept.keys() == recs["reference"].kept.keys()
    for key, ref in recs["reference"].kept.items():
        ours = recs["compiled"].kept[key]
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12, err_msg=str(key))


def test_repeats_bit_for_bit():
    first = _run("lstm", "compiled", "float32", CONFIGS[1], np.array([6, 2, 5, 1]))
    second = _run("lstm", "compiled", "float32", CONFIGS[1], np.array([6, 2, 5, 1]))
    assert all(np.array_equal(a, b) for a, b in zip(first[1], second[1]))
    assert all(np.array_equal(first[2][k], second[2][k]) for k in first[2])


@pytest.mark.parametrize("cell,options", [("lstm", dict(proj_size=3)),
                                          ("gru_reset_before", {}), ("lnlstm", {})])
def test_cells_without_a_loop_run_on_the_reference_bitwise(cell, options):
    auto, ours, grads = _run(cell, "auto", "float32", dict(num_layers=2, **options), None)
    assert auto.impl_in_use == "reference"
    _, ref, ref_grads = _run(cell, "reference", "float32", dict(num_layers=2, **options), None)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
    assert all(np.array_equal(grads[k], ref_grads[k]) for k in ref_grads)


def test_loading_the_library_keeps_the_floating_point_mode():
    """-ffast-math is a compile flag only: linked in, its startup code would flush every
    subnormal number of the whole process to zero."""
    compiled_cpu.library()
    assert np.float64(5e-324) > 0
    assert np.finfo(np.float32).smallest_subnormal * np.float32(1) > 0


def test_a_loop_that_does_not_compile_fails_loudly(monkeypatch, tmp_path):
    broken = tmp_path / "kernels"
    broken.mkdir()
    for source in fused.kernels_dir().iterdir():
        if source.is_file():
            (broken / source.name).write_text(source.read_text())
    (broken / "lstm_cpu.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(fused, "kernels_dir", lambda: broken)
    monkeypatch.setenv("RNNCORE_CACHE_DIR", str(tmp_path / "cache"))
    compiled_cpu.reset()
    try:
        with pytest.raises(fused.FusedBuildError, match="cpu_loops"):
            compiled_cpu.library()
    finally:
        monkeypatch.undo()
        compiled_cpu.reset()
    assert compiled_cpu.available()


@pytest.mark.parametrize("cell", CELLS)
def test_weight_gradients_are_added_into_the_totals_in_place(cell):
    """The compiled backward adds ∂W_ih and ∂W_hh into the module's totals itself
    (accumulates_grads): two backward calls onto non-zero totals equal the reference's,
    and the stack hands back only the gradients it did not add."""
    from rnncore.stack import stack_backward

    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 5))
    dout = rng.standard_normal((6, 4, 7))
    totals = {}
    for impl in ("compiled", "reference"):
        m = rnncore.Recurrent(cell, 5, 7, num_layers=2, impl=impl, dtype="float64", seed=3)
        for g in m.grads.values():
            g[...] = 0.5
        for _ in range(2):
            m(x)
            m.backward(dout)
        totals[impl] = m.grads
    for name, ref in totals["reference"].items():
        np.testing.assert_allclose(totals["compiled"][name], ref, err_msg=name, **TOL["float64"])

    m = rnncore.Recurrent(cell, 5, 7, num_layers=2, impl="compiled", dtype="float64", seed=3)
    m(x)
    before = {name: g.copy() for name, g in m.grads.items()}
    dstate_n = tuple(np.zeros((2, 4, w)) for w in m.spec.state_widths())
    _, _, grads = stack_backward(m.spec, m.driver, m.params, m._last[0], dout, dstate_n,
                                 accumulate_into=m.grads)
    added = {name for name in m.grads if not np.array_equal(m.grads[name], before[name])}
    assert added == {f"weight_{w}_l{k}" for w in ("ih", "hh") for k in (0, 1)}
    assert set(grads) == set(m.grads) - added
