"""The divergence localiser names the place a kernel or reference formula was broken."""

import numpy as np
import pytest

import rnncore
from rnncore import localise
from rnncore.cells import lstm as L

T, B, H = 5, 2, 4


def module():
    return rnncore.Recurrent("lstm", 3, H, num_layers=2, bidirectional=True,
                             dtype="float64", seed=0)


def x():
    return np.random.default_rng(0).standard_normal((T, B, 3))


def backward_place(n):
    """(layer, direction, step) of the n-th backward step call (top layer first; forward
    direction steps T−1..0, then the reverse direction's 0..T−1)."""
    k = 1 - n // (2 * T)
    d = (n // T) % 2
    i = n % T
    return k, d, (T - 1 - i) if d == 0 else i


def forward_place(n):
    k = n // (2 * T)
    d = (n // T) % 2
    i = n % T
    return k, d, i if d == 0 else T - 1 - i


def counting(fn, target, edit):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        result = fn(*args, **kwargs)
        if calls["n"] == target:
            edit(result)
        calls["n"] += 1
        return result
    return wrapped


def test_agreement_and_spot_checks():
    report = localise.localise(module(), x())
    assert report.divergence is None
    # forward buffers (h_g not kept by the reference: 4 compared) + (dh, dc, dz)
    assert report.checked == 2 * 2 * T * (4 + 3)
    for _, ref, fd in report.spot:
        assert ref == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n", [0, 7, 13])
def test_broken_reference_backward_is_named(monkeypatch, n):
    def edit(result):
        dz = result[0]
        dz[1, H + 2] += 1e-3  # forget gate, unit 2, batch row 1

    ns = L.LSTM.reference
    monkeypatch.setattr(ns, "lstm_backward", counting(ns.lstm_backward, n, edit))
    d = localise.localise(module(), x()).divergence
    assert d is not None and d.stage == "backward"
    assert (d.layer, d.direction, d.step) == backward_place(n)
    assert (d.buffer, d.gate, d.unit, d.row) == ("dz", "f", 2, 1)
    assert "reference is wrong" in d.verdict


def test_broken_fused_backward_is_named(monkeypatch):
    n = 16

    def edit(result):
        result[0][0, 3 * H + 1] *= 1.01  # output gate, unit 1, row 0

    monkeypatch.setattr(L, "fused_backward", counting(L.fused_backward, n, edit))
    d = localise.localise(module(), x()).divergence
    assert (d.stage, d.layer, d.direction, d.step) == ("backward", *backward_place(n))
    assert (d.buffer, d.gate, d.unit, d.row) == ("dz", "o", 1, 0)
    assert "fused kernel is wrong" in d.verdict
    assert "layer 0" in str(d)


def test_broken_fused_forward_is_named(monkeypatch):
    n = 8

    def edit(result):
        result[2].gates[1, 0] += 1e-4  # input gate, unit 0, row 1

    monkeypatch.setattr(L, "fused_forward", counting(L.fused_forward, n, edit))
    d = localise.localise(module(), x()).divergence
    assert (d.stage, d.layer, d.direction, d.step) == ("forward", *forward_place(n))
    assert (d.buffer, d.gate, d.unit, d.row) == ("gates", "i", 0, 1)


def test_cli(capsys):
    from rnncore import gradcheck

    assert gradcheck.main(["--localise", "--T", "3", "--layers", "1"]) == 0
    assert "agree" in capsys.readouterr().out
