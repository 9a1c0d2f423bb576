"""One GRU time step, forward and backward (gate order r, z, n as in PyTorch).

With x_* = x W_i*ᵀ + b_i* and h_* = h_{t−1} W_h*ᵀ + b_h* (blocks of H):

    r = σ(x_r + h_r)      z = σ(x_z + h_z)
    n = tanh(x_n + r ⊙ h_n)                       reset_after=True  (PyTorch, cuDNN)
    n = tanh(x_n + (r ⊙ h_{t−1}) W_hnᵀ + b_hn)   reset_after=False (Cho et al. 2014)
    h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

Backward, from ∂L/∂h_t:

    ∂n = ∂h ⊙ (1 − z)      ∂z = ∂h ⊙ (h_{t−1} − n)      ∂h_{t−1} ← ∂h ⊙ z
    ∂a_n = ∂n ⊙ (1 − n²)   (a_n: the tanh argument)
    reset_after:  ∂r = ∂a_n ⊙ h_n,  ∂h_n = ∂a_n ⊙ r
    original:     ∂(r⊙h) = ∂a_n W_hn,  ∂r = ∂(r⊙h) ⊙ h_{t−1},  ∂h_{t−1} ← ∂(r⊙h) ⊙ r
    ∂a_r = ∂r ⊙ r(1 − r)   ∂a_z = ∂z ⊙ z(1 − z)
"""

from typing import NamedTuple

from ..backend import sigmoid, sum_outer, xp_of
from .masking import add_carried, carry, split_grad


class GRUCache(NamedTuple):
    """Saved for backward: r, z, n (B, H each), h_n (the recurrent n-block, reset-after)."""

    r: object
    z: object
    n: object
    hn: object


def pointwise_forward(xg, hg, h_prev, valid):
    """Reset-after gate math: xg, hg are (B, 3H) with biases in; returns (h_t, cache)."""
    xp = xp_of(xg)
    H = h_prev.shape[-1]
    rz = sigmoid(xp, xg[:, : 2 * H] + hg[:, : 2 * H])
    r, z = rz[:, :H], rz[:, H:]
    hn = hg[:, 2 * H :]
    n = xp.tanh(xg[:, 2 * H :] + r * hn)
    h = n + z * (h_prev - n)
    return carry(valid, h, h_prev), GRUCache(r, z, n, hn)


def pointwise_backward(dh, h_prev, cache, valid):
    """Returns (∂xg (B, 3H), ∂hg (B, 3H), ∂h_{t−1} through z and the carry)."""
    xp = xp_of(dh)
    H = dh.shape[-1]
    r, z, n, hn = cache
    dh, dh_carried = split_grad(valid, dh)
    da_n = dh * (1 - z) * (1 - n * n)
    dxg = xp.empty(dh.shape[:-1] + (3 * H,), dtype=dh.dtype)
    dxg[:, :H] = da_n * hn * r * (1 - r)
    dxg[:, H : 2 * H] = dh * (h_prev - n) * z * (1 - z)
    dxg[:, 2 * H :] = da_n
    dhg = dxg.copy()
    dhg[:, 2 * H :] = da_n * r
    return dxg, dhg, add_carried(dh * z, dh_carried)


def gates_forward(xg_rz, hg_rz):
    """Original-GRU first half: r, z = σ(x_rz + h_rz)."""
    xp = xp_of(xg_rz)
    H = xg_rz.shape[-1] // 2
    rz = sigmoid(xp, xg_rz + hg_rz)
    return rz[:, :H], rz[:, H:]


def candidate_forward(xg_n, rhg_n, z, h_prev, valid):
    """Original-GRU second half: n = tanh(x_n + (r⊙h) W_hnᵀ + b_hn), h = (1−z) n + z h."""
    xp = xp_of(xg_n)
    n = xp.tanh(xg_n + rhg_n)
    return carry(valid, n + z * (h_prev - n), h_prev), n


class GRUStepCache(NamedTuple):
    pointwise: GRUCache
    h_prev: object
    rh: object  # r ⊙ h_{t−1} (original GRU only)


class GRUCell:
    """The GRU recurrence: reset-after (one recurrent GEMM) or original (two)."""

    num_gates = 3
    has_cell_state = False

    def __init__(self, pointwise, reset_after=True):
        self.pw = pointwise
        self.reset_after = reset_after

    def step_forward(self, p, xg, h_prev, valid):
        w_hh, b_hh = p["w_hh"], p.get("b_hh")
        if self.reset_after:
            hg = h_prev @ w_hh.T
            if b_hh is not None:
                hg += b_hh
            h, cache = self.pw.gru_forward(xg, hg, h_prev, valid)
            return h, GRUStepCache(cache, h_prev, None)
        H = h_prev.shape[-1]
        hg_rz = h_prev @ w_hh[: 2 * H].T
        if b_hh is not None:
            hg_rz += b_hh[: 2 * H]
        r, z = self.pw.gru_gates_forward(xg[:, : 2 * H], hg_rz)
        rh = r * h_prev
        rhg_n = rh @ w_hh[2 * H :].T
        if b_hh is not None:
            rhg_n += b_hh[2 * H :]
        h, n = self.pw.gru_candidate_forward(xg[:, 2 * H :], rhg_n, z, h_prev, valid)
        return h, GRUStepCache(GRUCache(r, z, n, None), h_prev, rh)

    def step_backward(self, p, dh, cache, valid):
        """Returns (∂xg, ∂h_{t−1}, ∂hg for the hoisted weight gradients)."""
        w_hh = p["w_hh"]
        if self.reset_after:
            dxg, dhg, dh_prev = self.pw.gru_backward(dh, cache.h_prev, cache.pointwise, valid)
            return dxg, dh_prev + dhg @ w_hh, dhg
        xp = xp_of(dh)
        H = dh.shape[-1]
        r, z, n, _ = cache.pointwise
        dh, dh_carried = split_grad(valid, dh)
        dxg = xp.empty(dh.shape[:-1] + (3 * H,), dtype=dh.dtype)
        da_n = dh * (1 - z) * (1 - n * n)
        drh = da_n @ w_hh[2 * H :]
        dxg[:, :H] = drh * cache.h_prev * r * (1 - r)
        dxg[:, H : 2 * H] = dh * (cache.h_prev - n) * z * (1 - z)
        dxg[:, 2 * H :] = da_n
        dh_prev = dh * z + drh * r + dxg[:, : 2 * H] @ w_hh[: 2 * H]
        return dxg, add_carried(dh_prev, dh_carried), dxg

    def recurrent_grads(self, p, caches, saved):
        """∂W_hh = Σ_t ∂h_gᵀ (h_{t−1}, or r⊙h_{t−1} for the original n-block)."""
        xp = xp_of(saved[0])
        dhg = xp.stack(saved)
        h_prev = xp.stack([c.h_prev for c in caches])
        if self.reset_after:
            return {"w_hh": sum_outer(dhg, h_prev), "b_hh": dhg.sum(axis=(0, 1))}
        H = h_prev.shape[-1]
        rh = xp.stack([c.rh for c in caches])
        w = xp.concatenate([sum_outer(dhg[..., : 2 * H], h_prev), sum_outer(dhg[..., 2 * H :], rh)])
        return {"w_hh": w, "b_hh": dhg.sum(axis=(0, 1))}
