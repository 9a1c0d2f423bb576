"""``impl="auto"`` on a GPU: which driver runs a layer direction, chosen by its size.

    persistent   H ≤ PERSISTENT_MAX_HIDDEN and PERSISTENT_BATCH[0] ≤ B ≤ PERSISTENT_BATCH[1],
                 where the cell has a persistent kernel and its W_hh slices fit
    graph        wherever the graph driver runs (not LSTMP; a backward that records every
                 step runs the fused loop inside it)
    fused        otherwise, and under ``checkpoint_every`` (only the per-step loop recomputes)

The crossovers were measured on an H100 (``scripts/gpu-crossover``: one LSTM layer, T 100,
forward + backward, H 32…1024 × B 1…128; docs/bench/gpu-h100-crossover.md). The graph
driver was the fastest in 25 of the 30 cells, 5–10× the fused per-step loop: with the host
out of the loop nothing else comes close. The persistent kernel won at H 32 with B 8–64 (by
7–15 %); at H ≥ 64 it lost everywhere, by up to 10× at H 1024 (each block walks its units'
weights once per batch row), except one cell (H 128, B 8) where the graph's time was an
outlier against its neighbours and is not taken as a crossover. The user overrides the
choice with ``impl="persistent"``, ``"graph"``, ``"fused"`` or ``"reference"``.

The choice depends only on (cell, parameters, batch), which forward and backward both
know, so the backward always runs on the driver that made the cache.
"""

from __future__ import annotations

PERSISTENT_MAX_HIDDEN = 32
PERSISTENT_BATCH = (8, 64)


class BySize:
    """Delegates each layer direction to ``persistent``, ``graph`` or ``fused`` by size."""

    name = "auto"

    def __init__(self, persistent, graph, fused):
        self.persistent, self.graph, self.fused = persistent, graph, fused

    @property
    def checkpoint_every(self):
        return self.fused.checkpoint_every

    @checkpoint_every.setter
    def checkpoint_every(self, every):
        self.fused.checkpoint_every = every

    def choose(self, cell, p, B):
        """The driver for a call on ``cell`` with parameters ``p`` and batch ``B``."""
        if self.fused.checkpoint_every:
            return self.fused
        H = p["w_hh"].shape[1]
        if H <= PERSISTENT_MAX_HIDDEN and PERSISTENT_BATCH[0] <= B <= PERSISTENT_BATCH[1] \
                and self.persistent.runs(cell, p, B):
            return self.persistent
        if self.graph.runs(cell, p):
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
