"""impl="auto"'s by-size choice on a GPU (rnncore/drivers/auto.py), with stand-in drivers:
the rule itself, the fallbacks, and that forward and backward land on the same driver."""

from types import SimpleNamespace

import numpy as np
import pytest

from rnncore.drivers import auto, set_checkpointing
from rnncore.drivers.python_loop import LayerCache


class Stub:
    def __init__(self, name, runs=True):
        self.name, self._runs, self.calls, self.checkpoint_every = name, runs, [], 0

    def runs(self, cell, p, B=None):
        return self._runs

    def forward(self, cell, p, x, state0, inputs, reverse=False):
        self.calls.append("forward")
        return x, state0, LayerCache(x, inputs, reverse, state0, {}, None)

    def backward(self, cell, p, cache, *args):
        self.calls.append("backward")
        return None, (), {}


def _choice(H, B, persistent_runs=True, graph_runs=True):
    d = auto.BySize(Stub("persistent", persistent_runs), Stub("graph", graph_runs),
                    Stub("fused"))
    return d.choose(SimpleNamespace(name="lstm"), {"w_hh": np.zeros((4 * H, H))}, B).name


@pytest.mark.parametrize("H,B,want", [
    (32, 8, "persistent"), (32, 64, "persistent"), (16, 32, "persistent"),
    (32, 1, "graph"), (32, 128, "graph"), (64, 32, "graph"), (1024, 64, "graph"),
])
def test_the_measured_crossovers(H, B, want):
    assert _choice(H, B) == want


def test_what_a_driver_cannot_run_goes_to_the_next():
    assert _choice(32, 8, persistent_runs=False) == "graph"
    assert _choice(512, 64, graph_runs=False) == "fused"


def test_recompute_runs_the_fused_loop_and_both_passes_agree():
    d = auto.BySize(Stub("persistent"), Stub("graph"), Stub("fused"))
    set_checkpointing(d, 5)
    assert d.fused.checkpoint_every == 5
    cell, p = SimpleNamespace(name="lstm"), {"w_hh": np.zeros((128, 32))}
    x = np.zeros((6, 16, 3))
    _, _, cache = d.forward(cell, p, x, (), {})
    d.backward(cell, p, cache, None, ())
    assert d.fused.calls == ["forward", "backward"] and not d.persistent.calls
    set_checkpointing(d, 0)
    _, _, cache = d.forward(cell, p, x, (), {})
    d.backward(cell, p, cache, None, ())
    assert d.persistent.calls == ["forward", "backward"]
