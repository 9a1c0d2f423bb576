"""One LSTM time step, forward and backward (gate order i, f, g, o as in PyTorch).

With z = x W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh split into four blocks of H:

    i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
    c_t = f ⊙ c_{t−1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)                     (LSTMP: h_t = W_hr (o ⊙ tanh(c_t)))

Backward, from ∂L/∂h_t and ∂L/∂c_t (derivatives written from the saved outputs):

    ∂o = ∂h ⊙ tanh(c)                ∂c ← ∂c + ∂h ⊙ o ⊙ (1 − tanh²(c))
    ∂i = ∂c ⊙ g    ∂f = ∂c ⊙ c_{t−1}    ∂g = ∂c ⊙ i    ∂c_{t−1} = ∂c ⊙ f
    ∂z = [∂i ⊙ i(1−i), ∂f ⊙ f(1−f), ∂g ⊙ (1−g²), ∂o ⊙ o(1−o)]

``pointwise_forward`` / ``pointwise_backward`` are the fusable element-wise part (the
CUDA kernels in ``kernels/lstm.cu`` implement exactly these); ``LSTMCell`` adds the
recurrent GEMM and the optional projection around them.
"""

from typing import NamedTuple

from ..backend import sigmoid, sum_outer, xp_of
from .masking import add_carried, carry, split_grad


class LSTMCache(NamedTuple):
    """What one step's backward needs: activated gates (B, 4H), c_{t−1}, tanh(c_t)."""

    gates: object
    c_prev: object
    tanh_c: object


def pointwise_forward(xg, hg, h_prev, c_prev, valid):
    """Gate math of one step: returns (h_t, c_t, cache); padded rows keep their state."""
    xp = xp_of(xg)
    H = c_prev.shape[-1]
    gates = xg + hg
    sigmoid(xp, gates[:, : 2 * H], out=gates[:, : 2 * H])
    xp.tanh(gates[:, 2 * H : 3 * H], out=gates[:, 2 * H : 3 * H])
    sigmoid(xp, gates[:, 3 * H :], out=gates[:, 3 * H :])
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    c = f * c_prev + i * g
    tanh_c = xp.tanh(c)
    h = o * tanh_c
    return carry(valid, h, h_prev), carry(valid, c, c_prev), LSTMCache(gates, c_prev, tanh_c)


def pointwise_backward(dh, dc, cache, valid):
    """Returns (∂z (B, 4H), the ∂h carried past a padded step or None, ∂c_{t−1})."""
    xp = xp_of(dh)
    H = dh.shape[-1]
    gates, c_prev, tanh_c = cache
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    dh, dh_carried = split_grad(valid, dh)
    dc, dc_carried = split_grad(valid, dc)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dz = xp.empty_like(gates)
    dz[:, :H] = dc * g * i * (1 - i)
    dz[:, H : 2 * H] = dc * c_prev * f * (1 - f)
    dz[:, 2 * H : 3 * H] = dc * i * (1 - g * g)
    dz[:, 3 * H :] = dh * tanh_c * o * (1 - o)
    return dz, dh_carried, add_carried(dc * f, dc_carried)


class LSTMStepCache(NamedTuple):
    pointwise: LSTMCache
    h_prev: object
    y: object  # o ⊙ tanh(c_t) before the projection (LSTMP only)


class LSTMCell:
    """The LSTM recurrence around the pointwise math: h W_hhᵀ, and LSTMP's W_hr."""

    num_gates = 4
    has_cell_state = True

    def __init__(self, pointwise):
        self.pw = pointwise

    def step_forward(self, p, xg, state, valid):
        h_prev, c_prev = state
        hg = h_prev @ p["w_hh"].T
        if p.get("b_hh") is not None:
            hg += p["b_hh"]
        if p.get("w_hr") is None:
            h, c, cache = self.pw.lstm_forward(xg, hg, h_prev, c_prev, valid)
            return (h, c), LSTMStepCache(cache, h_prev, None)
        y, c, cache = self.pw.lstm_forward(xg, hg, None, c_prev, None)
        h = carry(valid, y @ p["w_hr"].T, h_prev)
        return (h, carry(valid, c, c_prev)), LSTMStepCache(cache, h_prev, y)

    def step_backward(self, p, dstate, cache, valid):
        """Returns (∂xg, (∂h_{t−1}, ∂c_{t−1}), what the hoisted weight gradients need)."""
        dh, dc = dstate
        if p.get("w_hr") is None:
            dz, dh_carried, dc_prev = self.pw.lstm_backward(dh, dc, cache.pointwise, valid)
            dh_proj = None
        else:
            dh_proj, dh_carried = split_grad(valid, dh)
            dc, dc_carried = split_grad(valid, dc)
            dz, _, dc_prev = self.pw.lstm_backward(dh_proj @ p["w_hr"], dc, cache.pointwise, None)
            dc_prev = add_carried(dc_prev, dc_carried)
        dh_prev = add_carried(dz @ p["w_hh"], dh_carried)
        return dz, (dh_prev, dc_prev), (dz, dh_proj)

    def recurrent_grads(self, p, caches, saved):
        """∂W_hh = Σ_t ∂z_tᵀ h_{t−1}, ∂b_hh = Σ_t ∂z_t, ∂W_hr = Σ_t ∂h_tᵀ y_t: one GEMM each."""
        xp = xp_of(saved[0][0])
        dz = xp.stack([s[0] for s in saved])
        h_prev = xp.stack([c.h_prev for c in caches])
        grads = {"w_hh": sum_outer(dz, h_prev), "b_hh": dz.sum(axis=(0, 1))}
        if p.get("w_hr") is not None:
            dh_proj = xp.stack([s[1] for s in saved])
            grads["w_hr"] = sum_outer(dh_proj, xp.stack([c.y for c in caches]))
        return grads
