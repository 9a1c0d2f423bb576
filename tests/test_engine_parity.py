"""Parity with torch.nn: outputs, final states and every gradient."""

import itertools

import numpy as np
import pytest
from twins import make_twins, run_torch

TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=1e-5, atol=1e-5)}

CONFIGS = [
    # (kind, options)
    *[(kind, dict(num_layers=L, bidirectional=bi))
      for kind, L, bi in itertools.product(("lstm", "gru"), (1, 2, 3), (False, True))],
    *[("rnn", dict(num_layers=L, bidirectional=bi, nonlinearity=nl))
      for L, bi, nl in itertools.product((1, 3), (False, True), ("tanh", "relu"))],
    ("lstm", dict(num_layers=2, proj_size=3)),
    ("lstm", dict(num_layers=3, proj_size=2, bidirectional=True, batch_first=True)),
    ("lstm", dict(num_layers=2, bias=False, batch_first=True)),
    ("gru", dict(num_layers=2, bias=False, bidirectional=True)),
    ("rnn", dict(num_layers=2, bias=False, batch_first=True, nonlinearity="relu")),
    ("gru", dict(num_layers=2, batch_first=True)),
]


def _inputs(module, T, B, lengths_given, seed=1):
    rng = np.random.default_rng(seed)
    dtype = module.dtype
    shape = (B, T, module.input_size) if module.batch_first else (T, B, module.input_size)
    x = rng.standard_normal(shape).astype(dtype)
    LD = module.num_layers * module.num_directions
    h0 = 0.5 * rng.standard_normal((LD, B, module.spec.out_size)).astype(dtype)
    hx = h0
    if module.mode == "lstm":
        hx = (h0, 0.5 * rng.standard_normal((LD, B, module.hidden_size)).astype(dtype))
    lengths = [T, 2, T - 1, 1][:B] if lengths_given else None
    return x, hx, lengths


def _compare(ours, theirs, T=5, B=4, lengths_given=False, tol=None):
    x, hx, lengths = _inputs(ours, T, B, lengths_given)
    out, state = ours(x, hx, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    rng = np.random.default_rng(2)
    dout = rng.standard_normal(out.shape).astype(ours.dtype)
    dstates = tuple(rng.standard_normal(s.shape).astype(ours.dtype) for s in states)
    dstate = dstates if ours.mode == "lstm" else dstates[0]
    dx, dh = ours.backward(dout, dstate)
    t_out, t_states, t_dx, t_dh, t_grads = run_torch(theirs, x, hx, dout, dstate, lengths)
    tol = tol or TOL[ours.dtype.name]
    if lengths is not None:  # torch's padded positions hold zeros and get no gradient
        pad = (np.arange(T)[:, None] >= np.asarray(lengths)[None, :])
        pad = pad.T[:, :, None] if ours.batch_first else pad[:, :, None]
        assert np.all(out[np.broadcast_to(pad, out.shape)] == 0)
    np.testing.assert_allclose(out, t_out, **tol)
    for a, b in zip(states, t_states):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(dx, t_dx, **tol)
    for a, b in zip(dh if isinstance(dh, tuple) else (dh,), t_dh if isinstance(t_dh, tuple)
                    else (t_dh,)):
        np.testing.assert_allclose(a, b, **tol)
    assert set(t_grads) == set(ours.grads)
    for name, g in t_grads.items():
        np.testing.assert_allclose(ours.grads[name], g, err_msg=name, **tol)


@pytest.mark.parametrize("kind,options", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_torch(kind, options, dtype):
    ours, theirs = make_twins(kind, 3, 4, dtype=dtype, impl="reference", **options)
    _compare(ours, theirs)


@pytest.mark.parametrize("kind,options", [
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("lstm", dict(num_layers=2, proj_size=2, bidirectional=True, batch_first=True)),
    ("gru", dict(num_layers=3, bidirectional=True)),
    ("rnn", dict(num_layers=2, bidirectional=True, nonlinearity="relu")),
    ("gru", dict(num_layers=1, batch_first=True)),
], ids=str)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lengths_match_packed_sequence(kind, options, dtype):
    ours, theirs = make_twins(kind, 3, 4, dtype=dtype, impl="reference", **options)
    _compare(ours, theirs, T=6, B=4, lengths_given=True)


def test_unbatched_input_matches_torch():
    ours, theirs = make_twins("lstm", 3, 4, num_layers=2, impl="reference")
    x = np.random.default_rng(0).standard_normal((5, 3))
    out, (h, c) = ours(x)
    t_out, (t_h, t_c) = theirs(__import__("torch").tensor(x))
    assert out.shape == (5, 4) and h.shape == (2, 4)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, t_c.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_torch_state_dict_loads_as_is():
    import torch

    import rnncore

    theirs = torch.nn.GRU(5, 7, num_layers=2, bidirectional=True)
    ours = rnncore.GRU(5, 7, num_layers=2, bidirectional=True, impl="reference")
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
    out, h = ours(x)
    t_out, t_h = theirs(torch.from_numpy(x))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, t_h.detach().numpy(), rtol=1e-5, atol=1e-6)
