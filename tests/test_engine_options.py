"""Initializers, initial states, dropout, residual paths, train/eval, state_dict, to()."""

import numpy as np
import pytest

import rnncore
from rnncore import backend


def test_pytorch_init_bounds_and_seed():
    a = rnncore.LSTM(10, 16, num_layers=2, seed=7)
    b = rnncore.LSTM(10, 16, num_layers=2, seed=7)
    bound = 1 / np.sqrt(16)
    for name, p in a.params.items():
        assert p.dtype == np.float32 and np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.9 * bound
        np.testing.assert_array_equal(p, b.params[name])


def test_xavier_and_orthogonal_blocks():
    H, I = 8, 5
    orth = rnncore.LSTM(I, H, init="orthogonal", forget_bias=1.0, dtype="float64", seed=0)
    w = orth.params["weight_hh_l0"]
    for g in range(4):
        block = w[g * H : (g + 1) * H]
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-12)
    assert np.abs(orth.params["weight_ih_l0"]).max() <= np.sqrt(6 / (I + H))
    b = orth.params["bias_ih_l0"]
    assert np.all(b[H : 2 * H] == 1.0) and np.all(np.delete(b, np.s_[H : 2 * H]) == 0)
    xav = rnncore.GRU(I, H, init="xavier", seed=0)
    assert np.abs(xav.params["weight_hh_l0"]).max() <= np.sqrt(6 / (2 * H))


def test_forget_bias_added_to_pytorch_init():
    base = rnncore.LSTM(3, 4, seed=0, dtype="float64")
    fb = rnncore.LSTM(3, 4, seed=0, dtype="float64", forget_bias=1.0)
    diff = fb.params["bias_ih_l0"] - base.params["bias_ih_l0"]
    np.testing.assert_allclose(diff, np.r_[np.zeros(4), np.ones(4), np.zeros(8)], atol=1e-15)


def test_learned_initial_state_is_a_parameter_and_hx_wins():
    gru = rnncore.GRU(3, 4, num_layers=2, init_state="learned", dtype="float64", seed=0)
    assert gru.params["h0"].shape == (2, 1, 4)
    gru.params["h0"][:] = 0.3
    x = np.random.default_rng(0).standard_normal((3, 5, 3))
    out, _ = gru(x)
    out0, _ = gru(x, np.zeros((2, 5, 4)))
    assert not np.allclose(out, out0)
    gru.zero_grad()
    gru(x)
    gru.backward(np.ones_like(out))
    assert np.abs(gru.grads["h0"]).sum() > 0
    gru.zero_grad()
    gru(x, np.full((2, 5, 4), 0.3))
    gru.backward(np.ones_like(out))
    assert np.all(gru.grads["h0"] == 0)


def test_normal_initial_state_is_drawn_per_forward():
    lstm = rnncore.LSTM(2, 3, init_state="normal", seed=0)
    x = np.zeros((2, 1, 2), np.float32)
    a, _ = lstm(x)
    b, _ = lstm(x)
    assert not np.array_equal(a, b)
    again = rnncore.LSTM(2, 3, init_state="normal", seed=0)
    np.testing.assert_array_equal(again(x)[0], a)


@pytest.mark.parametrize("mode", ["standard", "variational"])
def test_dropout_between_layers(mode):
    lstm = rnncore.LSTM(4, 50, num_layers=3, dropout=0.5, dropout_mode=mode, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 8, 4)).astype(np.float32)
    lstm(x)
    masks = lstm.last_cache.masks
    assert masks[-1] is None and all(m is not None for m in masks[:-1])
    steps = 1 if mode == "variational" else 6
    assert masks[0].shape == (steps, 8, 50)
    assert set(np.unique(masks[0])) == {0.0, 2.0}
    assert 0.4 < (masks[0] == 0).mean() < 0.6
    lstm.eval()
    a, _ = lstm(x)
    b, _ = lstm(x)
    np.testing.assert_array_equal(a, b)
    assert lstm.last_cache.masks is None or all(m is None for m in lstm.last_cache.masks)


def test_residual_layers_adds_matching_inputs():
    res = rnncore.RNN(4, 4, num_layers=3, residual="layers", dtype="float64", seed=0)
    plain = rnncore.RNN(4, 4, num_layers=3, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((3, 2, 4))
    h0 = np.zeros((3, 2, 4))
    ys, u = [], x
    for k in range(3):
        single = rnncore.RNN(4, 4, dtype="float64")
        single.load_state_dict({n[:-1] + "0": plain.params[n] for n in plain.params
                                if n.endswith(str(k))})
        u = single(u, h0[k : k + 1])[0] + u
        ys.append(u)
    np.testing.assert_allclose(res(x)[0], ys[-1], atol=1e-14)


def test_residual_stack_projection_parameters():
    lstm = rnncore.LSTM(3, 4, num_layers=2, residual="stack", bidirectional=True)
    assert lstm.params["residual_weight"].shape == (8, 3)
    assert lstm.params["residual_bias"].shape == (8,)
    same = rnncore.LSTM(4, 4, num_layers=2, residual="stack")
    assert "residual_weight" not in same.params


def test_state_dict_roundtrip_and_list_input():
    a = rnncore.GRU(3, 4, seed=0)
    b = rnncore.GRU(3, 4, seed=1)
    b.load_state_dict({k: v.tolist() for k, v in a.state_dict().items()})
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])


def test_grads_accumulate_until_zero_grad():
    rnn = rnncore.RNN(2, 3, dtype="float64", seed=0)
    x = np.ones((2, 1, 2))
    out, _ = rnn(x)
    rnn.backward(np.ones_like(out))
    once = rnn.grads["weight_hh_l0"].copy()
    rnn.backward(np.ones_like(out))
    np.testing.assert_allclose(rnn.grads["weight_hh_l0"], 2 * once)
    rnn.zero_grad()
    assert np.all(rnn.grads["weight_hh_l0"] == 0)
    assert [n for n, _ in rnn.named_parameters()] == list(rnn.params)
    assert len(rnn.parameters()) == 4


def test_backend_devices():
    assert backend.parse_device("cuda:1") == backend.Device("cuda", 1)
    assert str(backend.parse_device("CUDA")) == "cuda:0"
    assert backend.array_module("cpu") is np
    assert backend.xp_of(np.zeros(1)) is np
    assert backend.to_device([1.0, 2.0], "cpu", np.float32).dtype == np.float32
    rnn = rnncore.RNN(2, 2).to("cpu")
    assert rnn.device.kind == "cpu"


# the compiled CPU driver keeps its own copy of x and hands out the output its backward
# reads, read-only, and the module then copies neither: each path that driver takes (the
# packed kernel with the input joined, BLAS per step, a hoisted input projection, lengths,
# recompute segments, the reference fallback under zoneout), layers between which it copies
# nothing, and the stack's own use of x
EDIT_CASES = {
    "lstm packed": ("lstm", "float32", 16, 16, {}),
    "lstm packed 3 layers": ("lstm", "float32", 16, 16, dict(num_layers=3)),
    "lstm": ("lstm", "float64", 2, 3, {}),
    "gru packed": ("gru", "float32", 16, 16, dict(num_layers=2, bidirectional=True)),
    "lstm lengths": ("lstm", "float32", 16, 16, dict(lengths=True)),
    "lstm recompute": ("lstm", "float32", 16, 16, dict(checkpoint_every=2)),
    "lstm zoneout": ("lstm", "float64", 2, 3, dict(zoneout_h=0.3)),
    "lstm projected residual": ("lstm", "float64", 2, 3, dict(num_layers=2, residual="stack")),
}


@pytest.mark.parametrize("case", EDIT_CASES)
def test_callers_edits_after_forward_do_not_change_gradients(case):
    """Inputs and initial states handed over are not the cache's buffers; the output
    cannot be edited (read-only on the CPU)."""
    cell, dtype, B, I, options = EDIT_CASES[case]
    options = dict(options)
    use_lengths = options.pop("lengths", False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, B, I)).astype(dtype)
    dout = rng.standard_normal((4, B, 5 * (2 if options.get("bidirectional") else 1)))
    lengths = rng.integers(1, 5, B) if use_lengths else None
    hx = tuple(rng.standard_normal((6, B, 5))  # enough for 3 layers × 2 directions
               .astype(dtype) for _ in range(2 if cell == "lstm" else 1))
    grads = []
    for edit in (False, True):  # twin models: the same weights and random masks
        model = rnncore.Recurrent(cell, I, 5, dtype=dtype, seed=0, **options)
        state = tuple(h[: model.num_layers * model.num_directions].copy() for h in hx)
        out, _ = model(x.copy() if not edit else x, state if len(state) > 1 else state[0],
                       lengths)
        if edit:
            with pytest.raises(ValueError, match="read-only"):
                out *= 0
            x *= 0
            state[0][...] = 7
        model.backward(dout.astype(dtype))
        grads.append(model.grads)
    clean = grads[0]
    for name, g in clean.items():
        np.testing.assert_array_equal(grads[1][name], g, err_msg=name)


@pytest.mark.parametrize("impl", ["reference", "compiled", "wavefront"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_the_output_is_read_only_on_the_cpu(impl, batch_first):
    """The output may be the buffer the backward reads (the compiled driver's is): NumPy
    refuses an edit, whichever driver ran, and the value is the reference's."""
    x = np.random.default_rng(0).standard_normal((4, 16, 3)).astype(np.float32)
    outs = []
    for use in ("reference", impl):
        model = rnncore.LSTM(3, 16, num_layers=2, seed=0, impl=use, batch_first=batch_first)
        out, _ = model(x)
        assert not out.flags.writeable and out.flags.c_contiguous
        with pytest.raises(ValueError, match="read-only"):
            out[0] = 0
        outs.append(out)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def test_load_state_dict_copies():
    source = rnncore.GRU(3, 4, seed=0)
    sd = source.state_dict()
    target = rnncore.GRU(3, 4, seed=1)
    target.load_state_dict(sd)
    sd["weight_hh_l0"][...] = 0
    assert np.abs(target.params["weight_hh_l0"]).sum() > 0


@pytest.mark.parametrize("cell", rnncore.cells.names())
@pytest.mark.parametrize("layers,bi,residual", [(1, False, None), (3, True, "stack"),
                                                (2, False, "layers")])
def test_the_closed_form_parameter_count_equals_the_parameters(cell, layers, bi, residual):
    from rnncore.stack import parameter_count

    m = rnncore.Recurrent(cell, 5, 4, num_layers=layers, bidirectional=bi, residual=residual)
    assert parameter_count(m.spec) == sum(v.size for v in m.params.values())


@pytest.mark.parametrize("impl", ["reference", "compiled", "wavefront"])
@pytest.mark.parametrize("options", [dict(num_layers=2), dict(num_layers=2, residual="stack"),
                                     dict(num_layers=2, residual="layers", bidirectional=True)],
                         ids=str)
def test_input_grad_false_skips_dx_and_changes_nothing_else(impl, options):
    """Like torch's requires_grad=False on the input: no ∂x, every other gradient the same."""
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    results = []
    for input_grad in (True, False):
        m = rnncore.LSTM(4, 4, dtype="float64", seed=1, impl=impl, input_grad=input_grad,
                         **options)
        out, _ = m(x)
        dx, (dh0, dc0) = m.backward(np.ones_like(out))
        results.append((dx, dh0, dc0, m.grads))
    (dx, dh0, dc0, grads), (no_dx, dh0_, dc0_, grads_) = results
    assert dx is not None and no_dx is None
    assert np.array_equal(dh0, dh0_) and np.array_equal(dc0, dc0_)
    assert all(np.array_equal(grads[k], grads_[k]) for k in grads)
