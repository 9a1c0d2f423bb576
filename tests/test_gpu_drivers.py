"""The graph, persistent and wavefront drivers on a real GPU (``pytest -m gpu``): they equal
the NumPy reference, replay correctly, and their backward is bitwise deterministic
(scripts/gpu-check; all of them passed on a lent H100 at 214b90e, docs/bench/gpu-h100-214b90e)."""

import numpy as np
import pytest
from test_gpu import _forward_backward, _make, _problem

import rnncore
from rnncore import backend
from rnncore.stack import layer_params

pytestmark = [pytest.mark.gpu]

TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=1e-4, atol=1e-4)}
CONFIGS = [
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("lstm", dict(num_layers=3, dropout=0.25, residual="layers")),
    ("gru", dict(num_layers=2, bidirectional=True)),
    ("rnn", dict(num_layers=2, nonlinearity="relu")),
]


@pytest.mark.parametrize("kind,options", CONFIGS, ids=str)
@pytest.mark.parametrize("impl", ["graph", "persistent", "wavefront"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_driver_matches_numpy(kind, options, impl, dtype):
    cpu = _make(kind, options, "cpu", "reference", dtype)
    gpu = _make(kind, options, "cuda", impl, dtype)
    assert gpu.impl_in_use == impl
    for seed in (0, 1):  # the second call replays the captured graphs
        problem = _problem(cpu, seed=seed)
        want, got = _forward_backward(cpu, problem), _forward_backward(gpu, problem)
        for (name, a), (_, b) in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, err_msg=f"{kind} {impl} {name}", **TOL[dtype])


@pytest.mark.parametrize("impl", ["graph", "persistent", "wavefront"])
@pytest.mark.parametrize("hidden", [32, 128, 257])
def test_driver_backward_is_bitwise_deterministic(impl, hidden):
    module = _make("lstm", dict(num_layers=2), "cuda", impl, "float32", hidden=hidden)
    problem = _problem(module, T=20, B=16, seed=2)
    first, second = _forward_backward(module, problem), _forward_backward(module, problem)
    for (name, a), (_, b) in zip(first, second, strict=True):
        assert np.array_equal(a, b), f"{name} differs between two identical runs"


def test_graphs_are_captured_once_and_invalidated():
    m = rnncore.LSTM(8, 16, num_layers=2, device="cuda", impl="graph", seed=0)
    x = backend.to_device(np.random.default_rng(0).standard_normal((7, 4, 8)), "cuda",
                          m.dtype)
    for _ in range(3):
        out, _ = m(x)
        m.backward(out)
    assert m.driver.cache.captures == 4 and len(m.driver.cache) == 2
    m.load_state_dict(m.state_dict())
    assert len(m.driver.cache) == 0


def test_persistent_runs_itself_at_the_sizes_of_the_issue():
    """The persistent driver really runs (not its fallback) for LSTM 1×128 (B 32) and
    the seed configuration; its plan fits this GPU's resident blocks and shared memory."""
    for hidden, batch in ((128, 32), (256, 64)):
        m = rnncore.LSTM(hidden, hidden, device="cuda", impl="persistent")
        assert m.driver.runs(m.cell, layer_params(m.spec, m.params, 0, 0), batch)


def test_auto_by_size_picks_a_driver_per_layer():
    m = rnncore.LSTM(8, 32, num_layers=2, device="cuda")
    assert m.impl_in_use == "auto"
    p = layer_params(m.spec, m.params, 0, 0)
    assert m.driver.choose(m.cell, p, 4).name == "graph"
    assert m.driver.choose(m.cell, p, 16).name == "persistent"
    problem = _problem(m, seed=3)
    ref = rnncore.LSTM(8, 32, num_layers=2, impl="reference", seed=None)
    ref.load_state_dict({k: backend.to_numpy(v) for k, v in m.params.items()})
    for (name, a), (_, b) in zip(_forward_backward(m, problem), _forward_backward(ref, problem),
                                 strict=True):
        np.testing.assert_allclose(a, b, err_msg=name, **TOL["float32"])


def test_graph_replays_see_in_place_parameter_updates():
    """An optimizer updates the parameters in place: the replayed graphs (which read W_hh
    at its address) and the biases summed outside them must both see the new values."""
    graph = _make("lstm", dict(num_layers=2), "cuda", "graph", "float32", hidden=32)
    fused = _make("lstm", dict(num_layers=2), "cuda", "fused", "float32", hidden=32)
    problem = _problem(graph, T=10, B=8, seed=5)
    _forward_backward(graph, problem)  # captured here
    for module in (graph, fused):
        for name, p in module.params.items():
            p += 0.05 * (1 + len(name) % 7)  # the same in-place step on both
    for (name, a), (_, b) in zip(_forward_backward(graph, problem),
                                 _forward_backward(fused, problem), strict=True):
        np.testing.assert_allclose(a, b, err_msg=name, **TOL["float32"])
