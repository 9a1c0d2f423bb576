"""The recurrent regularisers (zoneout on h and c, recurrent dropout, weight-drop) and the
states of every step: finite differences with the masks frozen over the whole matrix, on
the reference path and on the fused kernels (emulated); what the masks are; the options'
errors; the training command's flags and an exact resume with them on.

With every regulariser off the arithmetic is unchanged: test_engine_digests.py checks it
bitwise against digests stored before they existed.
"""

import numpy as np
import pytest

import rnncore
from rnncore import cells, gradcheck
from rnncore.options import REGULARISERS


def _takes_regularisers(case_cell):
    """Whether a matrix cell takes any regulariser (a user's cell, like the MGU of
    test_add_a_cell.py, may declare none) and has kernels to check them in."""
    name, options = gradcheck.matrix_cells()[case_cell]
    return bool(gradcheck.regulariser_options(name, options)) and bool(cells.get(name).kernels)


REG_CASES = list(gradcheck.matrix_cases(
    regularised=True, cells=tuple(filter(_takes_regularisers, gradcheck.matrix_cells()))))
ALL_CASES = list(gradcheck.matrix_cases(return_states="all"))


def test_every_cell_declares_its_regularisers():
    taken = {cell.name: set(cell.regularisers()) for cell in cells.cells()}
    assert taken["lstm"] == taken["lnlstm"] == set(REGULARISERS)
    assert taken["gru"] == taken["lngru"] == taken["rnn_tanh"] == \
        {"zoneout_h", "recurrent_dropout", "weight_drop"}
    assert taken["gru_reset_before"] == {"zoneout_h", "weight_drop"}
    assert set(cells.get("lstm").regularisers(proj=2)) == \
        {"zoneout_c", "recurrent_dropout", "weight_drop"}
    # a mask the cell takes per step is one of its declared step inputs
    for cell in cells.cells():
        for name in cell.regularisers():
            if name != "weight_drop":
                assert name in cell.step_inputs, (cell.name, name)


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("case", REG_CASES, ids=lambda c: c.label())
def test_regularised_gradients_match_finite_differences(case, impl):
    """Every cell with every regulariser it takes, in every configuration (depth,
    directions, residual, dropout between layers, lengths, learned states)."""
    report = gradcheck.run_case(case, impl=impl, max_elements=8)
    assert report.max_error < 1e-6, report.table()


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.label())
def test_gradients_into_every_steps_states(case):
    report = gradcheck.run_case(case, max_elements=8)
    assert report.max_error < 1e-6, report.table()


@pytest.mark.parametrize("cell", ["lstm", "lnlstm", "gru", "lngru", "gru_reset_before", "rnn_tanh"])
@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_evaluation_mode_gradients(cell, impl):
    """At evaluation zoneout mixes by its rate (the expected value): gradient-checked too."""
    options = gradcheck.regulariser_options(cell)
    module = rnncore.Recurrent(cell, 3, 4, num_layers=2, bidirectional=True, dtype="float64",
                               seed=0, impl=impl, **options).eval()
    x = np.random.default_rng(0).standard_normal((5, 3, 3))
    h0 = 0.5 * np.random.default_rng(1).standard_normal((4, 3, 4))
    hx = (h0, h0.copy()) if len(module.cell.state) == 2 else h0
    report = gradcheck.check_module_gradients(module, x, hx, lengths=[5, 2, 4], max_elements=8)
    assert report.max_error < 1e-6, report.table()


def _h_steps(module, x):
    """h after every step of a one-layer, one-direction module, by the engine."""
    return module(x)[0]


def test_zoneout_is_the_papers_mixture_in_training_and_at_evaluation():
    """Krueger et al.: h_t = d ⊙ h_{t−1} + (1 − d) ⊙ h̃_t with d ~ Bernoulli(p) in training and
    d = p at evaluation; checked step by step against the unregularised cell's own step."""
    T, B, I, H, p = 6, 2, 3, 5, 0.4
    x = np.random.default_rng(0).standard_normal((T, B, I))
    plain = rnncore.RNN(I, H, dtype="float64", seed=3)
    zoned = rnncore.RNN(I, H, dtype="float64", seed=3, zoneout_h=p)
    out = _h_steps(zoned, x)
    masks = zoned.last_cache.step_masks[0]["zoneout_h"]
    assert set(np.unique(masks)) == {0.0, 1.0} and 0.2 < masks.mean() < 0.6
    h = np.zeros((B, H))
    for t in range(T):
        fresh = plain(x[t : t + 1], h[None])[0][0]
        h = masks[t] * h + (1 - masks[t]) * fresh
        np.testing.assert_allclose(out[t], h, rtol=1e-12, atol=1e-14)
    zoned.eval()
    out = _h_steps(zoned, x)
    h = np.zeros((B, H))
    for t in range(T):
        fresh = plain(x[t : t + 1], h[None])[0][0]
        h = p * h + (1 - p) * fresh
        np.testing.assert_allclose(out[t], h, rtol=1e-12, atol=1e-14)


def test_lstm_zoneout_forms_h_from_the_new_cell_state():
    """LSTM zoneout (Krueger et al. eq. for h): h̃_t = o ⊙ tanh(c̃_t), the un-zoned c̃_t."""
    from rnncore.cells import lstm

    rng = np.random.default_rng(1)
    B, H = 3, 4
    xg, hg = rng.standard_normal((B, 4 * H)), rng.standard_normal((B, 4 * H))
    h_prev, c_prev = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    zh, zc = (rng.random((B, H)) < 0.5).astype(float), (rng.random((B, H)) < 0.5).astype(float)
    h0, c0, _ = lstm.pointwise_forward(xg, hg, h_prev, c_prev, None)
    h, c, _ = lstm.pointwise_forward(xg, hg, h_prev, c_prev, None, zh=zh, zc=zc)
    np.testing.assert_allclose(c, np.where(zc == 1, c_prev, c0), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h, np.where(zh == 1, h_prev, h0), rtol=1e-14, atol=1e-15)


def test_recurrent_dropout_is_one_mask_per_sequence_and_weight_drop_one_per_pass():
    lstm = rnncore.LSTM(3, 6, num_layers=2, bidirectional=True, seed=0, recurrent_dropout=0.5,
                        weight_drop=0.5)
    x = np.zeros((7, 4, 3), np.float32)
    lstm(x)
    cache = lstm.last_cache
    assert len(cache.step_masks) == len(cache.weight_masks) == 4  # L·D
    m = cache.step_masks[0]["recurrent_dropout"]
    assert m.shape == (7, 4, 6) and all(np.array_equal(m[0], m[t]) for t in range(7))
    assert set(np.unique(m)) == {0.0, 2.0}
    w = cache.weight_masks[1]["w_hh"]
    assert w.shape == lstm.params["weight_hh_l0_reverse"].shape
    assert set(np.unique(w)) == {0.0, 2.0}
    lstm(x)
    assert not np.array_equal(w, lstm.last_cache.weight_masks[1]["w_hh"])  # a new pass
    lstm.eval()
    lstm(x)
    assert lstm.last_cache.step_masks == [{}] * 4 and lstm.last_cache.weight_masks == [{}] * 4


def test_evaluation_without_zoneout_equals_the_unregularised_module_bitwise():
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    plain = rnncore.LSTM(3, 4, num_layers=2, seed=1).eval()
    reg = rnncore.LSTM(3, 4, num_layers=2, seed=1, recurrent_dropout=0.3,
                       weight_drop=0.4).eval()
    a, b = plain(x), reg(x)
    assert np.array_equal(a[0], b[0]) and all(np.array_equal(s, t) for s, t in zip(a[1], b[1]))


def test_rates_of_zero_change_nothing_bitwise():
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    plain = rnncore.GRU(3, 4, num_layers=2, seed=1, dropout=0.3)
    zero = rnncore.GRU(3, 4, num_layers=2, seed=1, dropout=0.3, zoneout_h=0.0,
                       recurrent_dropout=0.0, weight_drop=0.0)
    (a, _), (b, _) = plain(x), zero(x)
    assert np.array_equal(a, b)
    da, db = plain.backward(np.ones_like(a)), zero.backward(np.ones_like(b))
    assert np.array_equal(da[0], db[0])
    assert all(np.array_equal(plain.grads[k], zero.grads[k]) for k in plain.grads)


def test_same_seed_same_masks_and_the_generator_state_resumes_them():
    def masks(module):
        cache = module.last_cache
        return [m for d in cache.step_masks for m in d.values()] + \
            [m for d in cache.weight_masks for m in d.values()]

    x = np.zeros((4, 3, 2), np.float32)
    options = dict(num_layers=2, zoneout_h=0.2, zoneout_c=0.3, recurrent_dropout=0.4,
                   weight_drop=0.5)
    a, b = rnncore.LSTM(2, 5, seed=9, **options), rnncore.LSTM(2, 5, seed=9, **options)
    a(x)
    b(x)
    assert all(np.array_equal(m, n) for m, n in zip(masks(a), masks(b)))
    state = a.rng.get_state()
    a(x)
    second = masks(a)
    b.rng.set_state(state)
    b(x)
    assert all(np.array_equal(m, n) for m, n in zip(second, masks(b)))


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_fused_kernels_equal_the_reference_with_every_regulariser(impl):
    """float32 forward and backward of the emulated kernels against the NumPy reference."""
    x = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    results = {}
    for which in ("reference", impl):
        m = rnncore.LSTM(4, 8, num_layers=2, bidirectional=True, seed=2, impl=which,
                         zoneout_h=0.2, zoneout_c=0.3, recurrent_dropout=0.3, weight_drop=0.3)
        out, _ = m(x, lengths=[6, 3, 5])
        dx, _ = m.backward(np.ones_like(out))
        results[which] = (out, dx, m.grads["weight_hh_l1"])
    for a, b in zip(results["reference"], results[impl]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", REGULARISERS)
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_a_rate_outside_zero_one_is_an_error_naming_the_option(name, rate):
    with pytest.raises(ValueError, match=f"^{name} must be a number in \\[0, 1\\)"):
        rnncore.LSTM(2, 3, **{name: rate})


@pytest.mark.parametrize("cell, name", [("gru", "zoneout_c"), ("rnn_relu", "zoneout_c"),
                                        ("gru_reset_before", "recurrent_dropout"),
                                        ("lngru", "zoneout_c")])
def test_a_regulariser_the_cell_cannot_take_is_an_error(cell, name):
    with pytest.raises(TypeError, match=f"^{name}: the {cell} cell does not take it"):
        rnncore.Recurrent(cell, 2, 3, **{name: 0.2})


def test_zoneout_on_h_with_a_projection_is_refused():
    with pytest.raises(TypeError, match="^zoneout_h: the lstm cell with proj_size"):
        rnncore.LSTM(2, 4, proj_size=2, zoneout_h=0.1)
    rnncore.LSTM(2, 4, proj_size=2, zoneout_c=0.1)  # c is zoned out inside the kernel


def test_return_states_choices():
    with pytest.raises(ValueError, match="^return_states must be one of"):
        rnncore.LSTM(2, 3, return_states="every")


# ----------------------------------------------------------------------------- all states
@pytest.mark.parametrize("batch_first", [False, True])
def test_every_steps_states_layout_and_last_step(batch_first):
    T, B, I, H, L = 5, 3, 2, 4, 2
    x = np.random.default_rng(0).standard_normal((T, B, I))
    xb = x.transpose(1, 0, 2).copy() if batch_first else x
    last = rnncore.LSTM(I, H, L, bidirectional=True, dtype="float64", seed=1,
                        batch_first=batch_first, impl="reference")
    every = rnncore.LSTM(I, H, L, bidirectional=True, dtype="float64", seed=1,
                         batch_first=batch_first, return_states="all", impl="reference")
    out, (h_n, c_n) = last(xb)
    out_all, (h, c) = every(xb)
    assert np.array_equal(out, out_all)
    want = (L * 2, B, T, H) if batch_first else (L * 2, T, B, H)
    assert h.shape == c.shape == want
    h_t = h.transpose(0, 2, 1, 3) if batch_first else h
    c_t = c.transpose(0, 2, 1, 3) if batch_first else c
    forward, reverse = slice(0, None, 2), slice(1, None, 2)
    np.testing.assert_array_equal(h_t[forward, -1], h_n[forward])
    np.testing.assert_array_equal(h_t[reverse, 0], h_n[reverse])
    np.testing.assert_array_equal(c_t[forward, -1], c_n[forward])
    # the top forward layer's states are the output's first half
    top = out.transpose(1, 0, 2) if batch_first else out
    np.testing.assert_array_equal(h_t[2], top[..., :H])
    dx, (dh0, dc0) = every.backward(np.zeros_like(out), (np.ones_like(h), np.ones_like(c)))
    assert dx.shape == xb.shape and dh0.shape == (L * 2, B, H)
    with pytest.raises(ValueError, match="dh_all must have the returned states' shape"):
        every.backward(np.zeros_like(out), (np.ones_like(h_n), np.ones_like(c_n)))


def test_every_steps_states_unbatched_gru():
    gru = rnncore.GRU(2, 3, 2, dtype="float64", seed=0, return_states="all")
    x = np.random.default_rng(0).standard_normal((4, 2))
    out, h = gru(x)
    assert h.shape == (2, 4, 3)
    np.testing.assert_array_equal(h[1], out)
    report = gradcheck.check_module_gradients(gru, x)
    assert report.max_error < 1e-6, report.table()


# ----------------------------------------------------------------------------- training
def test_training_flags_and_an_exact_resume_with_regularisers(tmp_path, capsys, monkeypatch):
    from test_train import TINY, StopAfter, run_train, train_records

    from rnncore import train

    args = ["--steps", "16", "--eval-every", "8", "--log-every", "1", "--zoneout-h", "0.1",
            "--zoneout-c", "0.2", "--recurrent-dropout", "0.2", "--weight-drop", "0.3",
            "--dropout", "0.2", *TINY]
    assert run_train([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    monkeypatch.setattr(train, "StopFlag", type("Stop", (StopAfter,), {"n": 9}))
    code, err = run_train([*args, "--out", tmp_path / "split"], capsys)
    assert code == 130 and "resume" in err
    monkeypatch.undo()
    assert run_train(["--resume", tmp_path / "split"], capsys)[0] == 0
    whole = [(r["step"], r["loss"]) for r in train_records(tmp_path / "whole")]
    split = [(r["step"], r["loss"]) for r in train_records(tmp_path / "split")]
    assert split == whole and len(whole) == 16
    # a different rate is a different run: resume refuses it
    code, err = run_train(["--resume", tmp_path / "split", "--weight-drop", "0.1"], capsys)
    assert code != 0


@pytest.mark.parametrize("args, flag", [
    (["--zoneout-h", "1"], "--zoneout-h"), (["--weight-drop", "-0.1"], "--weight-drop"),
    (["--cell", "gru", "--zoneout-c", "0.1"], "--zoneout-c"),
    (["--cell", "gru_reset_before", "--recurrent-dropout", "0.1"], "--recurrent-dropout")])
def test_training_flags_refuse_bad_values_in_one_line(args, flag, tmp_path, capsys):
    from test_train import TINY, run_train

    code, err = run_train([*args, *TINY, "--out", tmp_path / "run"], capsys)
    assert code == 2 and flag in err and len(err.strip().splitlines()) <= 2
