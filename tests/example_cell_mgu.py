"""A minimal gated unit (Zhou et al. 2016, reset-after form), as a user adds a cell."""
from types import SimpleNamespace

from rnncore.backend import sigmoid, sum_outer, xp_of
from rnncore.cells import Cell, register
from rnncore.cells.masking import carry, split_grad


class MGU(Cell):
    """f = σ(x_f + h_f),  n = tanh(x_n + f ⊙ h_n),  h_t = h_{t−1} + f ⊙ (n − h_{t−1}),
    with x_* = x W_i*ᵀ + b_i* (hoisted by the driver), h_* = h_{t−1} W_h*ᵀ + b_h*."""

    name, state, gates = "mgu", ("h",), ("f", "n")
    reference = SimpleNamespace()  # no separate pointwise functions: the steps below

    def input_bias(self, p):
        return p.get("b_ih")

    def prefill(self, p):  # the recurrent GEMM accumulates onto b_hh
        return {"hg": p.get("b_hh")}

    def saved_widths(self, dims, p):
        H = dims.hidden
        return {"hg": 2 * H, "h": H, "f": H, "n": H}

    def grad_widths(self, dims, p):
        return {"dxg": 2 * dims.hidden, "dhg": 2 * dims.hidden}

    def forward_step(self, ops, p, xg, state_prev, inputs, saved):
        (h_prev,), xp = state_prev, xp_of(xg)
        H, hg, f, n, h = h_prev.shape[-1], saved["hg"], saved["f"], saved["n"], saved["h"]
        ops.gemm(h_prev, p["w_hh"], hg, transpose_b=True, beta=1.0)
        sigmoid(xp, xg[:, :H] + hg[:, :H], out=f)
        xp.tanh(xg[:, H:] + f * hg[:, H:], out=n)
        h[...] = h_prev + f * (n - h_prev)
        return (carry(inputs["valid"], h, h_prev),)

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        (dh,), (h_prev,), (dh_prev,) = dstate, state_prev, dstate_prev
        dh, dh_carried = split_grad(inputs["valid"], dh)
        H, f, n = h_prev.shape[-1], saved["f"], saved["n"]
        da_n = dh * f * (1 - n * n)                                       # ∂(x_n + f ⊙ h_n)
        da_f = (dh * (n - h_prev) + da_n * saved["hg"][:, H:]) * f * (1 - f)
        grads["dxg"][:, :H], grads["dxg"][:, H:] = da_f, da_n
        grads["dhg"][:, :H], grads["dhg"][:, H:] = da_f, da_n * f
        dh_prev += dh * (1 - f) if dh_carried is None else dh * (1 - f) + dh_carried
        ops.gemm(grads["dhg"], p["w_hh"], dh_prev, beta=1.0)

    def weight_grads(self, p, saved, grads, h_before, db):
        return {"w_hh": sum_outer(grads["dhg"], h_before), "b_hh": grads["dhg"].sum(axis=(0, 1))}


register(MGU())
