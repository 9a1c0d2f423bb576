"""``impl="auto"``: which driver runs a layer direction, chosen by its size.

    persistent   H ≤ PERSISTENT_MAX_HIDDEN and B ≤ PERSISTENT_MAX_BATCH, where the
                 persistent kernel exists for the cell and its W_hh slices fit
    graph        H ≤ GRAPH_MAX_HIDDEN: the per-step host cost dominates, a graph removes it
    fused        otherwise: the GEMMs are long enough that launching them from Python is
                 hidden behind them

The choice depends only on (cell, parameters, batch), which forward and backward both
know, so the backward always runs on the driver that made the cache.

The crossovers below are NOT YET MEASURED ON A GPU: no GPU was available when they were
written. They are the starting points the issue suggests (persistent kernels win at small
H and small B, cf. Appleyard et al. and Diamos et al.), and ``BY_SIZE_ON_CUDA`` stays False
— ``auto`` keeps meaning the fused per-step driver on CUDA — until ``scripts/gpu-check``
has run the graph and persistent drivers' GPU tests and the benchmark rows with each driver
(then set the constants from those tables and turn it on). ``RNNCORE_AUTO_BY_SIZE=1``
turns it on for a run. The user overrides the choice with ``impl="persistent"``,
``"graph"``, ``"fused"`` or ``"reference"``.
"""

from __future__ import annotations

import os

PERSISTENT_MAX_HIDDEN = 256  # not yet measured on a GPU
PERSISTENT_MAX_BATCH = 64  # not yet measured on a GPU
GRAPH_MAX_HIDDEN = 1024  # not yet measured on a GPU
BY_SIZE_ON_CUDA = False  # True once the numbers above come from a GPU


def by_size_enabled() -> bool:
    return BY_SIZE_ON_CUDA or os.environ.get("RNNCORE_AUTO_BY_SIZE") == "1"


class BySize:
    """Delegates each layer direction to ``persistent``, ``graph`` or ``fused`` by size."""

    name = "auto"

    def __init__(self, persistent, graph, fused):
        self.persistent, self.graph, self.fused = persistent, graph, fused

    def choose(self, cell, p, B):
        """The driver for a call on ``cell`` with parameters ``p`` and batch ``B``."""
        H = p["w_hh"].shape[1]
        if H <= PERSISTENT_MAX_HIDDEN and B <= PERSISTENT_MAX_BATCH and \
                self.persistent.runs(cell, p, B):
            return self.persistent
        if H <= GRAPH_MAX_HIDDEN and self.graph.runs(cell, p):
            return self.graph
        return self.fused

    def forward(self, cell, p, x, state0, inputs, reverse=False):
        return self.choose(cell, p, x.shape[1]).forward(cell, p, x, state0, inputs, reverse)

    def backward(self, cell, p, cache, dout, dstate, record=None, need_dx=True,
                 interventions=None, dstates_all=None):
        driver = self.choose(cell, p, cache.x.shape[1])
        return driver.backward(cell, p, cache, dout, dstate, record, need_dx, interventions,
                               dstates_all)

    def invalidate(self):
        self.graph.invalidate()
