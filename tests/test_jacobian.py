"""The temporal Jacobian probe against dense central differences of the forward steps."""

import numpy as np
import pytest

import rnncore
from rnncore import jacobian
from rnncore.drivers.python_loop import PythonLoop, _at, time_order
from rnncore.stack import layer_params


def rollout(cell, p, cache, lag, state):
    """s_T from s_{T−lag} = ``state`` by the cell's forward steps (input fixed)."""
    x, inputs, reverse, state0, saved, dims = cache
    T = x.shape[0]
    order = time_order(T, reverse)
    xg = np.einsum("tbi,gi->tbg", x, p["w_ih"]) + cell.input_bias(p)
    ops = PythonLoop("reference").ops(cell)
    widths = cell.state_widths(dims)
    for k in range(T - lag, T):
        t = order[k]
        buf = {n: np.zeros_like(a[t]) for n, a in saved.items() if a is not None}
        for n, v in cell.prefill(p).items():
            buf[n][...] = v
        state = tuple(np.array(s) for s in cell.forward_step(ops, p, xg[t], state,
                                                             _at(inputs, t), buf))
    assert len(state) == len(widths)
    return np.concatenate(state, axis=-1)


def dense_fd(cell, p, cache, lag, eps=1e-6):
    x, inputs, reverse, state0, saved, dims = cache
    T = x.shape[0]
    order = time_order(T, reverse)
    start = state0 if lag == T else cell.state_at(saved, order[T - lag - 1])
    start = tuple(np.array(s) for s in start)
    widths = cell.state_widths(dims)
    S = sum(widths)
    B = x.shape[1]
    J = np.zeros((B, S, S))
    off = np.cumsum((0,) + tuple(widths))
    for j in range(S):
        i = int(np.searchsorted(off, j, side="right") - 1)
        up = [s.copy() for s in start]
        dn = [s.copy() for s in start]
        up[i][:, j - off[i]] += eps
        dn[i][:, j - off[i]] -= eps
        J[:, :, j] = (rollout(cell, p, cache, lag, tuple(up))
                      - rollout(cell, p, cache, lag, tuple(dn))) / (2 * eps)
    return J


@pytest.mark.parametrize("cell,bidirectional", [("lstm", False), ("gru", True),
                                                ("rnn_tanh", False)])
def test_jacobian_matches_finite_differences(cell, bidirectional):
    m = rnncore.Recurrent(cell, 3, 4, num_layers=2, bidirectional=bidirectional,
                          dtype="float64", seed=1, init_state="normal")
    x = np.random.default_rng(2).standard_normal((6, 2, 3))
    results = jacobian.module_jacobians(m, x)
    assert len(results) == 2 * (2 if bidirectional else 1)
    for r in results:
        layer = m.last_cache.layers[r.k][r.d]
        p = layer_params(m.spec, m.params, r.k, r.d)
        for lag in (1, 3, 6):
            fd = dense_fd(m.cell, p, layer, lag)
            assert np.allclose(r.J[lag], fd, atol=1e-8, rtol=1e-6), (r.k, r.d, lag)
            for name in r.blocks():
                blk = r.block(name)[lag]
                s_fd = np.linalg.svd(_block(fd, r.widths, name), compute_uv=False)[:, 0]
                assert np.allclose(r.sigma(name)[lag], s_fd, rtol=1e-5, atol=1e-10)
                assert np.allclose(r.frobenius(name)[lag],
                                   np.linalg.norm(blk, axis=(-2, -1)), rtol=1e-12)
        assert np.allclose(r.J[0], np.eye(sum(r.widths)))


def _block(J, widths, name):
    if name == "state":
        return J
    i = {"h": 0, "c": 1}[name]
    lo = sum(widths[:i])
    return J[:, lo:lo + widths[i], lo:lo + widths[i]]


def test_lstm_projection_and_chunking_agree():
    m = rnncore.LSTM(3, 5, proj_size=2, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 3, 3))
    full = jacobian.module_jacobians(m, x)[0]
    small = jacobian.module_jacobians(m, x, max_bytes=1)[0]  # one row per chunk
    assert full.widths == (2, 5)
    assert np.allclose(full.J, small.J, rtol=1e-12, atol=1e-15)  # BLAS blocking may differ
    layer = m.last_cache.layers[0][0]
    p = layer_params(m.spec, m.params, 0, 0)
    assert np.allclose(full.J[5], dense_fd(m.cell, p, layer, 5), atol=1e-8)


def test_power_sigma_matches_svd():
    A = np.random.default_rng(3).standard_normal((7, 5, 4))
    assert np.allclose(jacobian.power_sigma(A, iters=2000),
                       np.linalg.svd(A, compute_uv=False)[:, 0], rtol=1e-8)
    assert np.array_equal(jacobian.power_sigma(np.zeros((2, 3, 3))), np.zeros(2))


def test_effective_memory_follows_forget_bias():
    x = np.random.default_rng(0).standard_normal((30, 2, 4))
    mem = []
    for fb in (0.0, 3.0):
        m = rnncore.LSTM(4, 8, dtype="float64", seed=0, forget_bias=fb)
        r = jacobian.module_jacobians(m, x)[0]
        mem.append(r.effective_memory("c", 1e-2))
        assert r.effective_memory("c", 0.0) == 31  # σ never below 0: T + 1
    assert mem[1] > mem[0]


def test_driver_restored_and_table():
    m = rnncore.LSTM(3, 4, dtype="float64", seed=0)
    before = m.driver
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    res = jacobian.module_jacobians(m, x)
    assert m.driver is before
    table = jacobian.format_table(res)
    assert "memory" in table and len(table.splitlines()) == 2 + 3


def test_probe_cli(tmp_path, capsys):
    from rnncore import gradflow

    res = gradflow.main(["probe", "--quick", "--T", "8", "--out", str(tmp_path)])
    assert len(res) == 2
    assert (tmp_path / "jacobian_probe.png").stat().st_size > 0
    assert "memory" in capsys.readouterr().out
