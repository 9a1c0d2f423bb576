"""The layer-normalised LSTM: its step against the paper's equations written out directly,
its kernel (emulated on the CPU, threads cooperating on each row's moments) against the
reference, its gradients against finite differences, and its place in the registry, the
training command and the gradient-flow sweep.

(Every registered cell also runs through the whole gradient-check matrix of
test_engine_gradcheck.py; nothing there names this cell.)
"""

import json

import numpy as np
import pytest

import rnncore
from rnncore import fused, gradcheck, gradflow, train
from rnncore.cells import lnlstm

TOL = {np.float64: dict(rtol=1e-11, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}
# (B, H): one unit; a block smaller than the row; a row longer than a block (128 threads)
SIZES = [(1, 1), (3, 7), (2, 33), (4, 130)]


def _ln_params(rng, H, dtype, bias=True):
    def v(n, scale=1.0, centre=0.0):
        return (centre + scale * rng.standard_normal(n)).astype(dtype)

    return lnlstm.LayerNormParams(v(4 * H, 0.3, 1.0), v(4 * H, 0.3, 1.0),
                                  v(4 * H) if bias else None, v(H, 0.3, 1.0), v(H))


def _direct_step(xg, hg, h_prev, c_prev, ln, eps=lnlstm.EPS):
    """Ba et al.'s equations 20–22, one row at a time, without the module's helpers."""
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    h_out, c_out = [], []
    for b in range(xg.shape[0]):
        def norm(v):
            return (v - np.mean(v)) / np.sqrt(np.var(v) + eps)

        a = ln.g_ih * norm(xg[b]) + ln.g_hh * norm(hg[b]) + (0 if ln.b is None else ln.b)
        i, f, g, o = np.split(a, 4)
        c = sig(f) * c_prev[b] + sig(i) * np.tanh(g)
        h_out.append(sig(o) * np.tanh(ln.g_c * norm(c) + ln.s_c))
        c_out.append(c)
    return np.array(h_out), np.array(c_out)


@pytest.mark.parametrize("bias", [True, False])
def test_reference_step_is_the_papers_equations(bias):
    rng = np.random.default_rng(0)
    B, H = 3, 5
    xg, hg = 2 * rng.standard_normal((B, 4 * H)), rng.standard_normal((B, 4 * H))
    h_prev, c_prev = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    ln = _ln_params(rng, H, np.float64, bias)
    h, c, _ = lnlstm.pointwise_forward(xg, hg, h_prev, c_prev, ln, None)
    h_direct, c_direct = _direct_step(xg, hg, h_prev, c_prev, ln)
    np.testing.assert_allclose(h, h_direct, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c, c_direct, rtol=1e-12, atol=1e-13)


def test_padded_rows_keep_their_state_exactly():
    rng = np.random.default_rng(1)
    B, H = 4, 3
    h_prev, c_prev = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    valid = np.array([[True], [False], [True], [False]])
    h, c, _ = lnlstm.pointwise_forward(rng.standard_normal((B, 4 * H)),
                                       rng.standard_normal((B, 4 * H)), h_prev, c_prev,
                                       _ln_params(rng, H, np.float64), valid)
    assert np.array_equal(h[~valid[:, 0]], h_prev[~valid[:, 0]])
    assert np.array_equal(c[~valid[:, 0]], c_prev[~valid[:, 0]])
    assert not np.array_equal(h[valid[:, 0]], h_prev[valid[:, 0]])


def test_layer_norm_backward_equals_finite_differences():
    rng = np.random.default_rng(2)
    v, dvhat = rng.standard_normal((2, 9)), rng.standard_normal((2, 9))
    vhat, r = lnlstm.layer_norm(v)
    analytic = lnlstm.layer_norm_backward(dvhat, vhat, r)

    def loss():
        return float((lnlstm.layer_norm(v)[0] * dvhat).sum())

    numeric = np.array([[gradcheck.central_difference(loss, v, (b, j)) for j in range(9)]
                        for b in range(2)])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- the kernel
needs_compiler = pytest.mark.skipif(not fused.available("cpu"),
                                    reason="no C++ compiler: the CPU kernels cannot be built")


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,H", SIZES)
def test_kernel_equals_reference(dtype, B, H):
    """Forward and backward outputs of the emulated row kernel, with padded rows mixed in,
    inputs read through leading dimensions (column views), with and without a bias."""
    rng = np.random.default_rng(B * 100 + H)
    kernels = fused.pointwise_for("cpu", dtype)

    def arr(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    for valid in (None, (np.arange(B) % 2 == 0)[:, None]):
        for bias in (True, False):
            xg = arr(B, 5 * H, scale=2.0)[:, H:]  # a view: leading dimension 5H
            hg, h_prev, c_prev = arr(B, 4 * H), arr(B, H), arr(B, H)
            ln = _ln_params(rng, H, dtype, bias)
            ours = kernels.lnlstm_forward(xg, hg, h_prev, c_prev, ln, valid)
            ref = lnlstm.pointwise_forward(xg.copy(), hg, h_prev, c_prev, ln, valid)
            for a, b_ in zip((ours[0], ours[1], *ours[2]), (ref[0], ref[1], *ref[2])):
                np.testing.assert_allclose(a, b_, **TOL[dtype])
            dh, dc = arr(B, H), arr(B, H)
            ours_b = kernels.lnlstm_backward(dh, dc, ours[2], ln, valid)
            ref_b = lnlstm.pointwise_backward(dh, dc, ref[2], ln, valid)
            for k, (a, b_) in enumerate(zip(ours_b, ref_b)):
                if b_ is None:
                    assert a is None
                else:
                    np.testing.assert_allclose(a, b_, err_msg=f"output {k}", **TOL[dtype])


@needs_compiler
def test_kernel_repeats_bit_for_bit():
    """Fixed-order reductions: the same launch twice gives the same bits."""
    rng = np.random.default_rng(3)
    B, H = 3, 200
    args = (rng.standard_normal((B, 4 * H)).astype(np.float32),
            rng.standard_normal((B, 4 * H)).astype(np.float32),
            rng.standard_normal((B, H)).astype(np.float32),
            rng.standard_normal((B, H)).astype(np.float32),
            _ln_params(rng, H, np.float32), None)
    kernels = fused.pointwise_for("cpu", "float32")
    first, second = kernels.lnlstm_forward(*args), kernels.lnlstm_forward(*args)
    assert all(np.array_equal(a, b) for a, b in zip(first[2], second[2]))


@needs_compiler
@pytest.mark.parametrize("case", [
    gradcheck.MatrixCase("lnlstm", 2, True, "layers", "standard"),
    gradcheck.MatrixCase("lnlstm", 3, False, "stack", "variational"),
], ids=lambda c: c.label())
def test_fused_module_gradients_match_finite_differences(case):
    report = gradcheck.run_case(case, impl="fused")
    assert report.max_error < 1e-6, report.table()


@needs_compiler
def test_fused_module_equals_reference_module():
    x = np.random.default_rng(4).standard_normal((6, 4, 3))
    lengths = np.array([6, 3, 5, 1])
    results = []
    for impl in ("reference", "fused"):
        m = rnncore.Recurrent("lnlstm", 3, 40, num_layers=2, dtype="float64", seed=0, impl=impl)
        out, (h, c) = m(x, lengths=lengths)
        dx, (dh0, dc0) = m.backward(np.ones_like(out))
        results.append((out, h, c, dx, dh0, dc0, m.grads))
    for a, b in zip(results[0][:6], results[1][:6]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    for name, g in results[0][6].items():
        np.testing.assert_allclose(results[1][6][name], g, rtol=1e-10, atol=1e-11,
                                   err_msg=name)


# ----------------------------------------------------------------------------- its place
def test_declaration_and_parameters():
    m = rnncore.Recurrent("lnlstm", 3, 4, num_layers=2, forget_bias=1.0, seed=0)
    assert "lnlstm" in rnncore.cells.names()
    assert set(m.params) == {f"{stem}_l{k}" for k in range(2) for stem in (
        "weight_ih", "weight_hh", "bias", "ln_ih_gain", "ln_hh_gain", "ln_c_gain", "ln_c_shift")}
    assert np.all(m.params["ln_ih_gain_l0"] == 1) and np.all(m.params["ln_c_shift_l1"] == 0)
    plain = rnncore.Recurrent("lnlstm", 3, 4, num_layers=2, seed=0)
    # forget_bias shifts the forget-gate block of the one bias, nothing else
    diff = m.params["bias_l0"] - plain.params["bias_l0"]
    np.testing.assert_allclose(diff[4:8], 1.0, rtol=1e-6)
    assert np.all(diff[:4] == 0) and np.all(diff[8:] == 0)
    with pytest.raises(TypeError, match="proj_size"):
        rnncore.Recurrent("lnlstm", 3, 4, proj_size=2)


def test_trains_with_the_command_line(tmp_path, capsys):
    code = train.main(["--cell", "lnlstm", "--corpus", "words", "--steps", "60",
                       "--eval-every", "60", "--hidden", "24", "--embed", "8",
                       "--batch-size", "8", "--seq-len", "16", "--lr", "0.01", "--warmup", "5",
                       "--sample-length", "0", "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert losses[-1] < losses[0] - 0.5, losses


def test_appears_in_the_gradient_flow_sweep(tmp_path, capsys):
    results = gradflow.main(["--cells", "lnlstm", "--depths", "1,2", "--quick",
                             "--out", str(tmp_path)])
    assert {c.cell for c, _ in results} == {"lnlstm"}
    for _, probe in results:
        assert np.isfinite(probe.h).all() and np.isfinite(probe.saturation).all()


def test_appears_in_the_benchmark(tmp_path, capsys):
    from rnncore import bench

    bench.main(["--quick", "--rows", "lstm-1x128", "--cells", "lnlstm", "--threads", "1",
                "--json", str(tmp_path / "bench.json")])
    out = capsys.readouterr().out
    assert "LNLSTM" in out.upper() and "no torch.nn twin" in out
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["key"] for r in rows] == ["lnlstm-1x16"]
