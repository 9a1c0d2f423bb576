"""One Elman RNN time step, forward and backward.

    h_t = φ(x W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh),   φ = tanh or relu

Backward from the saved output: ∂a = ∂h ⊙ φ'(a), with tanh' = 1 − h², relu' = [h > 0].
"""

from typing import NamedTuple

from ..backend import sum_outer, xp_of
from .masking import add_carried, carry, split_grad

NONLINEARITIES = ("tanh", "relu")


def pointwise_forward(xg, hg, h_prev, valid, nonlinearity):
    """Returns (h_t, h_new): h_new = φ(xg + hg) is saved for the derivative."""
    xp = xp_of(xg)
    a = xg + hg
    h = xp.tanh(a, out=a) if nonlinearity == "tanh" else xp.maximum(a, 0, out=a)
    return carry(valid, h, h_prev), h


def pointwise_backward(dh, h_new, valid, nonlinearity):
    """Returns (∂a (B, H), the ∂h carried past a padded step or None)."""
    dh, dh_carried = split_grad(valid, dh)
    da = dh * (1 - h_new * h_new) if nonlinearity == "tanh" else dh * (h_new > 0)
    return da, dh_carried


class RNNStepCache(NamedTuple):
    h_new: object
    h_prev: object


class RNNCell:
    """The Elman recurrence around the pointwise nonlinearity."""

    num_gates = 1
    has_cell_state = False

    def __init__(self, pointwise, nonlinearity="tanh"):
        self.pw = pointwise
        self.nonlinearity = nonlinearity

    def step_forward(self, p, xg, h_prev, valid):
        hg = h_prev @ p["w_hh"].T
        if p.get("b_hh") is not None:
            hg += p["b_hh"]
        h, h_new = self.pw.rnn_forward(xg, hg, h_prev, valid, self.nonlinearity)
        return h, RNNStepCache(h_new, h_prev)

    def step_backward(self, p, dh, cache, valid):
        da, dh_carried = self.pw.rnn_backward(dh, cache.h_new, valid, self.nonlinearity)
        return da, add_carried(da @ p["w_hh"], dh_carried), da

    def recurrent_grads(self, p, caches, saved):
        xp = xp_of(saved[0])
        da = xp.stack(saved)
        h_prev = xp.stack([c.h_prev for c in caches])
        return {"w_hh": sum_outer(da, h_prev), "b_hh": da.sum(axis=(0, 1))}
