"""The layer-normalised GRU: its step against the equations written out directly, its
row-cooperative kernel (emulated) against the reference, with zoneout and padded rows,
and its place in the registry and the training command.

(Every registered cell also runs through the gradient-check matrices of
test_engine_gradcheck.py and test_regularisers.py; nothing there names this cell.)
"""

import json

import numpy as np
import pytest

import rnncore
from rnncore import fused, train
from rnncore.cells import lngru

TOL = {np.float64: dict(rtol=1e-11, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}
SIZES = [(1, 1), (3, 7), (2, 33), (4, 130)]
needs_compiler = pytest.mark.skipif(not fused.available("cpu"),
                                    reason="no C++ compiler: the CPU kernels cannot be built")


def _ln_params(rng, H, dtype, bias=True):
    def v(scale=1.0, centre=0.0):
        return (centre + scale * rng.standard_normal(3 * H)).astype(dtype)

    return lngru.LNGRUParams(v(0.3, 1.0), v(0.3, 1.0), v() if bias else None,
                             v() if bias else None)


def _direct_step(xg, hg, h_prev, ln, eps=lngru.EPS):
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    out = []
    for b in range(xg.shape[0]):
        def norm(v):
            return (v - np.mean(v)) / np.sqrt(np.var(v) + eps)

        ax = ln.g_ih * norm(xg[b]) + (0 if ln.b_x is None else ln.b_x)
        ah = ln.g_hh * norm(hg[b]) + (0 if ln.b_h is None else ln.b_h)
        (xr, xz, xn), (hr, hz, hn) = np.split(ax, 3), np.split(ah, 3)
        r, z = sig(xr + hr), sig(xz + hz)
        n = np.tanh(xn + r * hn)
        out.append((1 - z) * n + z * h_prev[b])
    return np.array(out)


@pytest.mark.parametrize("bias", [True, False])
def test_reference_step_is_the_equations(bias):
    rng = np.random.default_rng(0)
    B, H = 3, 5
    xg, hg, h_prev = 2 * rng.standard_normal((B, 3 * H)), rng.standard_normal((B, 3 * H)), \
        rng.standard_normal((B, H))
    ln = _ln_params(rng, H, np.float64, bias)
    h, _ = lngru.pointwise_forward(xg, hg, h_prev, ln, None)
    np.testing.assert_allclose(h, _direct_step(xg, hg, h_prev, ln), rtol=1e-12, atol=1e-13)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,H", SIZES)
def test_kernel_equals_reference(dtype, B, H):
    """Forward and backward of the emulated row kernel, padded rows and zoneout mixed in,
    inputs read through leading dimensions, with and without biases."""
    rng = np.random.default_rng(B * 100 + H)
    kernels = fused.pointwise_for("cpu", dtype)

    def arr(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    for valid in (None, (np.arange(B) % 2 == 0)[:, None]):
        for bias, zoneout in ((True, False), (False, True), (True, True)):
            xg = arr(B, 4 * H, scale=2.0)[:, H:]  # a view: leading dimension 4H
            hg, h_prev = arr(B, 3 * H), arr(B, H)
            zh = (rng.random((B, H)) < 0.4).astype(dtype) if zoneout else None
            ln = _ln_params(rng, H, dtype, bias)
            ours = kernels.lngru_forward(xg, hg, h_prev, ln, valid, zh=zh)
            ref = lngru.pointwise_forward(xg.copy(), hg, h_prev, ln, valid, zh=zh)
            for a, b_ in zip((ours[0], *ours[1]), (ref[0], *ref[1])):
                np.testing.assert_allclose(a, b_, **TOL[dtype])
            dh = arr(B, H)
            ours_b = kernels.lngru_backward(dh, h_prev, ours[1], ln, valid, zh=zh)
            ref_b = lngru.pointwise_backward(dh, h_prev, ref[1], ln, valid, zh=zh)
            for k, (a, b_) in enumerate(zip(ours_b, ref_b)):
                np.testing.assert_allclose(a, b_, err_msg=f"output {k}", **TOL[dtype])


def test_padded_rows_keep_their_state_exactly():
    rng = np.random.default_rng(1)
    B, H = 4, 3
    h_prev = rng.standard_normal((B, H))
    valid = np.array([[True], [False], [True], [False]])
    h, _ = lngru.pointwise_forward(rng.standard_normal((B, 3 * H)),
                                   rng.standard_normal((B, 3 * H)), h_prev,
                                   _ln_params(rng, H, np.float64), valid)
    assert np.array_equal(h[~valid[:, 0]], h_prev[~valid[:, 0]])


@needs_compiler
def test_fused_module_equals_reference_module():
    x = np.random.default_rng(4).standard_normal((6, 4, 3))
    lengths = np.array([6, 3, 5, 1])
    results = []
    for impl in ("reference", "fused"):
        m = rnncore.Recurrent("lngru", 3, 40, num_layers=2, dtype="float64", seed=0, impl=impl,
                              zoneout_h=0.2, recurrent_dropout=0.2, weight_drop=0.2)
        out, h = m(x, lengths=lengths)
        dx, dh0 = m.backward(np.ones_like(out))
        results.append((out, h, dx, dh0, m.grads))
    for a, b in zip(results[0][:4], results[1][:4]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    for name, g in results[0][4].items():
        np.testing.assert_allclose(results[1][4][name], g, rtol=1e-10, atol=1e-11,
                                   err_msg=name)


def test_declaration_and_parameters():
    m = rnncore.Recurrent("lngru", 3, 4, num_layers=2, seed=0)
    assert set(m.params) == {f"{stem}_l{k}" for k in range(2) for stem in (
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_gain", "ln_hh_gain")}
    assert np.all(m.params["ln_hh_gain_l1"] == 1)
    assert set(rnncore.Recurrent("lngru", 3, 4, bias=False).params) == {
        "weight_ih_l0", "weight_hh_l0", "ln_ih_gain_l0", "ln_hh_gain_l0"}
    with pytest.raises(TypeError, match="forget_bias"):
        rnncore.Recurrent("lngru", 3, 4, forget_bias=1.0)


def test_trains_with_the_command_line(tmp_path, capsys):
    code = train.main(["--cell", "lngru", "--corpus", "words", "--steps", "60",
                       "--eval-every", "60", "--hidden", "24", "--embed", "8",
                       "--batch-size", "8", "--seq-len", "16", "--lr", "0.01", "--warmup", "5",
                       "--sample-length", "0", "--quiet", "--zoneout-h", "0.1",
                       "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert losses[-1] < losses[0] - 0.5, losses
