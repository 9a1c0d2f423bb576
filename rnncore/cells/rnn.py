"""One Elman RNN time step, forward and backward.

    h_t = φ(x W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh),   φ = tanh or relu

Backward from the saved output: ∂a = ∂h ⊙ φ'(a), with tanh' = 1 − h², relu' = [h > 0].
"""

from types import SimpleNamespace

from ..backend import bias_sum, gemm, sum_outer, xp_of
from .masking import carry, split_grad, store

NONLINEARITIES = ("tanh", "relu")


def pointwise_forward(xg, hg, h_prev, valid, nonlinearity, out=None):
    """Returns (h_t, h_new): h_new = φ(xg + hg) is saved for the derivative.

    ``out`` = (h, h_new) preallocated (B, H) arrays, or None.
    """
    xp = xp_of(xg)
    h, h_new = out or (None, None)
    h_new = xp.add(xg, hg, out=h_new)
    if nonlinearity == "tanh":
        xp.tanh(h_new, out=h_new)
    else:
        xp.maximum(h_new, 0, out=h_new)
    h = h_new.copy() if h is None else store(h, h_new)
    return carry(valid, h, h_prev), h_new


def pointwise_backward(dh, h_new, valid, nonlinearity, out=None):
    """Returns (∂a (B, H), the ∂h carried past a padded step or None).

    ``out`` = (da, dh_carried) preallocated arrays (dh_carried may be None), or None.
    """
    da_out, carried_out = out or (None, None)
    dh, dh_carried = split_grad(valid, dh)
    da = dh * (1 - h_new * h_new) if nonlinearity == "tanh" else dh * (h_new > 0)
    if dh_carried is not None:
        dh_carried = store(carried_out, dh_carried)
    return store(da_out, da), dh_carried


class RNNCell:
    """The Elman recurrence around the pointwise nonlinearity."""

    num_gates = 1
    has_cell_state = False

    def __init__(self, pointwise, nonlinearity="tanh"):
        self.pw = pointwise
        self.nonlinearity = nonlinearity

    def workspace(self, xp, p, T, B, dtype):
        H = p["w_hh"].shape[1]
        return SimpleNamespace(hg=xp.empty((T, B, H), dtype),
                               h=xp.empty((T, B, H), dtype), h_new=xp.empty((T, B, H), dtype))

    def input_bias(self, p):
        """b_ih + b_hh: both enter the activation additively (hoisted into x W_ihᵀ)."""
        return bias_sum(p.get("b_ih"), p.get("b_hh"))

    def state_at(self, ws, t):
        return ws.h[t]

    def step_forward(self, p, ws, t, xg, h_prev, valid):
        gemm(h_prev, p["w_hh"], ws.hg[t], transpose_b=True)
        self.pw.rnn_forward(xg, ws.hg[t], h_prev, valid, self.nonlinearity,
                            out=(ws.h[t], ws.h_new[t]))

    def backward_workspace(self, xp, ws, dstate):
        ws.dxg = xp.empty_like(ws.h)
        ws.dh_carried = xp.empty_like(ws.h[0])

    def step_backward(self, p, ws, t, dh, h_prev, valid, dh_prev):
        carried = None if valid is None else ws.dh_carried
        _, carried = self.pw.rnn_backward(dh, ws.h_new[t], valid, self.nonlinearity,
                                          out=(ws.dxg[t], carried))
        if carried is not None:
            dh_prev += carried
        gemm(ws.dxg[t], p["w_hh"], dh_prev, beta=1.0)

    def recurrent_grads(self, p, ws, h_prev, db):
        """∂W_hh = Σ_t ∂a_tᵀ h_{t−1}, ∂b_hh = Σ_t ∂a_t (= ∂b_ih)."""
        return {"w_hh": sum_outer(ws.dxg, h_prev), "b_hh": db}
