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
recurrent GEMM and the optional projection around them, reading and writing the
layer's preallocated per-step buffers.
"""

from types import SimpleNamespace
from typing import NamedTuple

from ..backend import bias_sum, gemm, sigmoid, sum_outer, xp_of
from .masking import carry, split_grad, store


class LSTMCache(NamedTuple):
    """What one step's backward needs: activated gates (B, 4H), c_{t−1}, tanh(c_t)."""

    gates: object
    c_prev: object
    tanh_c: object


def pointwise_forward(xg, hg, h_prev, c_prev, valid, out=None):
    """Gate math of one step: returns (h_t, c_t, cache); padded rows keep their state.

    ``out`` = (h, c, gates, tanh_c) preallocated (B, ·) arrays to write into, or None.
    """
    xp = xp_of(xg)
    B, H = c_prev.shape
    h, c, gates, tanh_c = out or (None, None, None, None)
    gates = xp.add(xg, hg, out=gates)
    sigmoid(xp, gates[:, : 2 * H], out=gates[:, : 2 * H])
    xp.tanh(gates[:, 2 * H : 3 * H], out=gates[:, 2 * H : 3 * H])
    sigmoid(xp, gates[:, 3 * H :], out=gates[:, 3 * H :])
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    c = xp.multiply(f, c_prev, out=c)
    c += i * g
    tanh_c = xp.tanh(c, out=tanh_c)
    h = xp.multiply(o, tanh_c, out=h)
    return carry(valid, h, h_prev), carry(valid, c, c_prev), LSTMCache(gates, c_prev, tanh_c)


def pointwise_backward(dh, dc, cache, valid, out=None):
    """Returns (∂z (B, 4H), the ∂h carried past a padded step or None, ∂c_{t−1}).

    ``out`` = (dz, dh_carried, dc_prev) preallocated arrays (dh_carried may be None).
    """
    xp = xp_of(dh)
    gates, c_prev, tanh_c = cache
    H = tanh_c.shape[-1]
    dz, dh_carried_out, dc_prev_out = out or (None, None, None)
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    dh, dh_carried = split_grad(valid, dh)
    dc, dc_carried = split_grad(valid, dc)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    if dz is None:
        dz = xp.empty_like(gates)
    dz[:, :H] = dc * g * i * (1 - i)
    dz[:, H : 2 * H] = dc * c_prev * f * (1 - f)
    dz[:, 2 * H : 3 * H] = dc * i * (1 - g * g)
    dz[:, 3 * H :] = dh * tanh_c * o * (1 - o)
    dc_prev = dc * f if dc_carried is None else dc * f + dc_carried
    if dh_carried is not None:
        dh_carried = store(dh_carried_out, dh_carried)
    return dz, dh_carried, store(dc_prev_out, dc_prev)


class LSTMCell:
    """The LSTM recurrence around the pointwise math: h W_hhᵀ, and LSTMP's W_hr.

    ``workspace`` allocates every per-step buffer of a layer once; a step reads and
    writes its slice [t]. Both biases are added once, to the hoisted input projection
    (``input_bias``). Forward: one recurrent GEMM into h_g[t], one pointwise call.
    Backward: one pointwise call writing ∂z straight into ∂x_g[t], one GEMM accumulating
    ∂z W_hh into ∂h_{t−1}.
    """

    num_gates = 4
    has_cell_state = True

    def __init__(self, pointwise):
        self.pw = pointwise

    def workspace(self, xp, p, T, B, dtype):
        H, width = p["w_hh"].shape[0] // 4, p["w_hh"].shape[1]
        ws = SimpleNamespace(
            hg=xp.empty((T, B, 4 * H), dtype),
            h=xp.empty((T, B, width), dtype), c=xp.empty((T, B, H), dtype),
            gates=xp.empty((T, B, 4 * H), dtype), tanh_c=xp.empty((T, B, H), dtype),
            y=None,  # LSTMP only: o ⊙ tanh(c_t) before the projection
        )
        if p.get("w_hr") is not None:
            ws.y = xp.empty((T, B, H), dtype)
        return ws

    def input_bias(self, p):
        """b_ih + b_hh: both enter z additively, so both join the hoisted input GEMM."""
        return bias_sum(p.get("b_ih"), p.get("b_hh"))

    def state_at(self, ws, t):
        return ws.h[t], ws.c[t]

    def step_forward(self, p, ws, t, xg, state_prev, valid):
        h_prev, c_prev = state_prev
        gemm(h_prev, p["w_hh"], ws.hg[t], transpose_b=True)
        if ws.y is None:
            out = (ws.h[t], ws.c[t], ws.gates[t], ws.tanh_c[t])
            self.pw.lstm_forward(xg, ws.hg[t], h_prev, c_prev, valid, out=out)
            return
        out = (ws.y[t], ws.c[t], ws.gates[t], ws.tanh_c[t])
        self.pw.lstm_forward(xg, ws.hg[t], None, c_prev, None, out=out)
        gemm(ws.y[t], p["w_hr"], ws.h[t], transpose_b=True)
        carry(valid, ws.h[t], h_prev)
        carry(valid, ws.c[t], c_prev)

    def backward_workspace(self, xp, ws, dstate):
        """Buffers of the backward pass; the cell-state gradient starts at ∂L/∂c_T."""
        T, B, H = ws.c.shape
        ws.dxg = xp.empty_like(ws.gates)
        ws.dc = [dstate[1].copy(), xp.empty((B, H), ws.c.dtype)]  # ping-pong ∂c buffers
        ws.dh_carried = xp.empty((B, ws.h.shape[-1]), ws.c.dtype)
        ws.dh_proj = None if ws.y is None else xp.empty_like(ws.h)
        ws.dc_step = 0

    def step_backward(self, p, ws, t, dh, state_prev, valid, dh_prev):
        """∂z into ∂x_g[t]; ∂h_{t−1} (+= into ``dh_prev``); ∂c_{t−1} into the other ∂c."""
        h_prev, c_prev = state_prev
        cache = LSTMCache(ws.gates[t], c_prev, ws.tanh_c[t])
        dc, dc_prev = ws.dc[ws.dc_step % 2], ws.dc[(ws.dc_step + 1) % 2]
        ws.dc_step += 1
        carried = None if valid is None else ws.dh_carried
        if ws.y is None:
            _, carried, _ = self.pw.lstm_backward(dh, dc, cache, valid,
                                                  out=(ws.dxg[t], carried, dc_prev))
        else:
            dh_new, carried = split_grad(valid, dh)
            dc_new, dc_carried = split_grad(valid, dc)
            ws.dh_proj[t] = dh_new
            self.pw.lstm_backward(dh_new @ p["w_hr"], dc_new, cache, None,
                                  out=(ws.dxg[t], None, dc_prev))
            if dc_carried is not None:
                dc_prev += dc_carried
        if carried is not None:
            dh_prev += carried
        gemm(ws.dxg[t], p["w_hh"], dh_prev, beta=1.0)

    def cell_grad(self, ws):
        """∂L/∂c at the step about to be processed (∂L/∂c_0 once the loop has ended)."""
        return ws.dc[ws.dc_step % 2]

    def recurrent_grads(self, p, ws, h_prev, db):
        """∂W_hh = Σ_t ∂z_tᵀ h_{t−1}, ∂b_hh = Σ_t ∂z_t (= ∂b_ih), ∂W_hr = Σ_t ∂h_tᵀ y_t."""
        grads = {"w_hh": sum_outer(ws.dxg, h_prev), "b_hh": db}
        if ws.y is not None:
            grads["w_hr"] = sum_outer(ws.dh_proj, ws.y)
        return grads
