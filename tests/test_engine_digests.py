"""Refactors keep results bitwise: outputs and gradients equal the stored digests.

The digests were computed at commit 9a95f40, before the cell registry and the driver
boundary; see ``engine_digests.py`` for the configurations (every cell × depth ×
direction × residual × dropout × lengths × initial state, reference and fused, float32
and float64).
"""

import json

import engine_digests
import pytest

STORED = json.loads(engine_digests.PATH.read_text())
CASES = dict(engine_digests.cases())


def test_every_stored_case_is_still_computed():
    assert set(STORED) == set(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_bitwise_equal_to_stored_digest(key):
    got = engine_digests.run_case(*CASES[key])
    want = STORED[key]
    assert set(got) == set(want), f"{key}: outputs/gradients named differently"
    differing = sorted(name for name in want if got[name] != want[name])
    assert not differing, f"{key}: not bitwise equal: {differing}"
