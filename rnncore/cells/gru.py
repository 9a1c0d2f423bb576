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

from types import SimpleNamespace
from typing import NamedTuple

from ..backend import filled, gemm, sigmoid, sum_outer, xp_of
from .masking import carry, split_grad, store


class GRUCache(NamedTuple):
    """Saved for backward: r, z, n (B, H each), h_n (the recurrent n-block, reset-after)."""

    r: object
    z: object
    n: object
    hn: object


def pointwise_forward(xg, hg, h_prev, valid, out=None):
    """Reset-after gate math: xg, hg are (B, 3H) with biases in; returns (h_t, cache).

    ``out`` = (h, r, z, n) preallocated (B, H) arrays, or None.
    """
    xp = xp_of(xg)
    H = h_prev.shape[-1]
    h, r, z, n = out or (None, None, None, None)
    r = sigmoid(xp, xg[:, :H] + hg[:, :H], out=r)
    z = sigmoid(xp, xg[:, H : 2 * H] + hg[:, H : 2 * H], out=z)
    hn = hg[:, 2 * H :]
    n = xp.tanh(xg[:, 2 * H :] + r * hn, out=n)
    h = xp.add(n, z * (h_prev - n), out=h)
    return carry(valid, h, h_prev), GRUCache(r, z, n, hn)


def pointwise_backward(dh, h_prev, cache, valid, out=None):
    """Returns (∂xg (B, 3H), ∂hg (B, 3H), ∂h_{t−1} through z and the carry).

    ``out`` = (dxg, dhg, dh_prev) preallocated arrays, or None.
    """
    xp = xp_of(dh)
    H = dh.shape[-1]
    r, z, n, hn = cache
    dxg, dhg, dh_prev = out or (None, None, None)
    dh, dh_carried = split_grad(valid, dh)
    da_n = dh * (1 - z) * (1 - n * n)
    if dxg is None:
        dxg = xp.empty(dh.shape[:-1] + (3 * H,), dtype=dh.dtype)
    dxg[:, :H] = da_n * hn * r * (1 - r)
    dxg[:, H : 2 * H] = dh * (h_prev - n) * z * (1 - z)
    dxg[:, 2 * H :] = da_n
    if dhg is None:
        dhg = xp.empty_like(dxg)
    dhg[:, : 2 * H] = dxg[:, : 2 * H]
    dhg[:, 2 * H :] = da_n * r
    through_z = dh * z
    return dxg, dhg, store(dh_prev, through_z if dh_carried is None else through_z + dh_carried)


def gates_forward(xg_rz, hg_rz, out=None):
    """Original-GRU first half: r, z = σ(x_rz + h_rz). ``out`` = (r, z) or None."""
    xp = xp_of(xg_rz)
    H = xg_rz.shape[-1] // 2
    r, z = out or (None, None)
    r = sigmoid(xp, xg_rz[:, :H] + hg_rz[:, :H], out=r)
    z = sigmoid(xp, xg_rz[:, H:] + hg_rz[:, H:], out=z)
    return r, z


def candidate_forward(xg_n, rhg_n, z, h_prev, valid, out=None):
    """Original-GRU second half: n = tanh(x_n + (r⊙h) W_hnᵀ + b_hn), h = (1−z) n + z h.

    ``out`` = (h, n) or None.
    """
    xp = xp_of(xg_n)
    h, n = out or (None, None)
    n = xp.tanh(xg_n + rhg_n, out=n)
    h = xp.add(n, z * (h_prev - n), out=h)
    return carry(valid, h, h_prev), n


class GRUCell:
    """The GRU recurrence: reset-after (one recurrent GEMM) or original (two per step).

    Per-step buffers are allocated once per layer by ``workspace``; steps write slice [t].
    """

    num_gates = 3
    has_cell_state = False

    def __init__(self, pointwise, reset_after=True):
        self.pw = pointwise
        self.reset_after = reset_after

    def workspace(self, xp, p, T, B, dtype):
        H = p["w_hh"].shape[1]
        b = p.get("b_hh")
        ws = SimpleNamespace(**{k: xp.empty((T, B, H), dtype) for k in ("h", "r", "z", "n")})
        if self.reset_after:
            ws.hg = filled(xp, b, (T, B, 3 * H), dtype)
        else:  # h_rz = h W_hrzᵀ + b_hrz and h_n = (r ⊙ h) W_hnᵀ + b_hn, kept apart
            ws.hg_rz = filled(xp, None if b is None else b[: 2 * H], (T, B, 2 * H), dtype)
            ws.hg_n = filled(xp, None if b is None else b[2 * H :], (T, B, H), dtype)
            ws.rh = xp.empty((T, B, H), dtype)
        return ws

    def input_bias(self, p):
        """b_ih only: b_hn sits inside r ⊙ (…), so b_hh stays with the recurrent product."""
        return p.get("b_ih")

    def state_at(self, ws, t):
        return ws.h[t]

    def step_forward(self, p, ws, t, xg, h_prev, valid):
        w_hh = p["w_hh"]
        if self.reset_after:
            gemm(h_prev, w_hh, ws.hg[t], transpose_b=True, beta=1.0)
            self.pw.gru_forward(xg, ws.hg[t], h_prev, valid,
                                out=(ws.h[t], ws.r[t], ws.z[t], ws.n[t]))
            return
        H = h_prev.shape[-1]
        gemm(h_prev, w_hh[: 2 * H], ws.hg_rz[t], transpose_b=True, beta=1.0)
        self.pw.gru_gates_forward(xg[:, : 2 * H], ws.hg_rz[t], out=(ws.r[t], ws.z[t]))
        xp_of(h_prev).multiply(ws.r[t], h_prev, out=ws.rh[t])
        gemm(ws.rh[t], w_hh[2 * H :], ws.hg_n[t], transpose_b=True, beta=1.0)
        self.pw.gru_candidate_forward(xg[:, 2 * H :], ws.hg_n[t], ws.z[t], h_prev, valid,
                                      out=(ws.h[t], ws.n[t]))

    def backward_workspace(self, xp, ws, dstate):
        T, B, H = ws.h.shape
        ws.dxg = xp.empty((T, B, 3 * H), ws.h.dtype)
        ws.dhg = xp.empty_like(ws.dxg) if self.reset_after else ws.dxg
        ws.dh_direct = xp.empty((B, H), ws.h.dtype)

    def step_backward(self, p, ws, t, dh, h_prev, valid, dh_prev):
        """∂x_g[t], ∂h_g[t] into the buffers; ∂h_{t−1} added into ``dh_prev``."""
        w_hh = p["w_hh"]
        H = dh.shape[-1]
        if self.reset_after:
            cache = GRUCache(ws.r[t], ws.z[t], ws.n[t], ws.hg[t][:, 2 * H :])
            self.pw.gru_backward(dh, h_prev, cache, valid,
                                 out=(ws.dxg[t], ws.dhg[t], ws.dh_direct))
            dh_prev += ws.dh_direct
            gemm(ws.dhg[t], w_hh, dh_prev, beta=1.0)
            return
        r, z, n = ws.r[t], ws.z[t], ws.n[t]
        dh, dh_carried = split_grad(valid, dh)
        dxg = ws.dxg[t]
        da_n = dh * (1 - z) * (1 - n * n)
        drh = da_n @ w_hh[2 * H :]
        dxg[:, :H] = drh * h_prev * r * (1 - r)
        dxg[:, H : 2 * H] = dh * (h_prev - n) * z * (1 - z)
        dxg[:, 2 * H :] = da_n
        dh_prev += dh * z + drh * r
        if dh_carried is not None:
            dh_prev += dh_carried
        gemm(dxg[:, : 2 * H], w_hh[: 2 * H], dh_prev, beta=1.0)

    def recurrent_grads(self, p, ws, h_prev, db):
        """∂W_hh = Σ_t ∂h_gᵀ (h_{t−1}, or r⊙h_{t−1} for the original n-block)."""
        if self.reset_after:
            return {"w_hh": sum_outer(ws.dhg, h_prev), "b_hh": ws.dhg.sum(axis=(0, 1))}
        H = h_prev.shape[-1]
        xp = xp_of(h_prev)
        w = xp.concatenate([sum_outer(ws.dxg[..., : 2 * H], h_prev),
                            sum_outer(ws.dxg[..., 2 * H :], ws.rh)])
        return {"w_hh": w, "b_hh": db}
