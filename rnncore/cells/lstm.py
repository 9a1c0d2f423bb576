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
CUDA kernels in ``kernels/lstm.cu`` implement exactly these, ``fused_forward`` /
``fused_backward`` launch them); ``LSTM`` declares the cell and adds the recurrent GEMM
and the optional projection around the pointwise step.
"""

from typing import NamedTuple

from ..backend import bias_sum, sigmoid, sum_outer, xp_of
from . import regularise
from .base import TORCH_PARAMS, Cell, CpuLoop, ParamSpec
from .masking import carry, split_grad, store
from .registry import register


class LSTMCache(NamedTuple):
    """What one step's backward needs: activated gates (B, 4H), c_{t−1}, tanh(c_t)."""

    gates: object
    c_prev: object
    tanh_c: object


def pointwise_forward(xg, hg, h_prev, c_prev, valid, out=None, zh=None, zc=None):
    """Gate math of one step: returns (h_t, c_t, cache); padded rows keep their state.

    ``out`` = (h, c, gates, tanh_c) preallocated (B, ·) arrays to write into, or None.
    ``zh``, ``zc``: zoneout's weights of h_{t−1}, c_{t−1} (``cells.regularise``), or None;
    h̃_t = o ⊙ tanh(c̃_t) is formed from the new c̃_t before c's zoneout (Krueger et al.).
    """
    xp = xp_of(xg)
    B, H = c_prev.shape
    h, c, gates, tanh_c = out or (None, None, None, None)
    if hg is not None:
        gates = xp.add(xg, hg, out=gates)
    elif gates is None:
        gates = xg.copy()
    elif gates is not xg:  # hg None: xg already holds x_g + h_g (formed in place)
        gates[...] = xg
    sigmoid(xp, gates[:, : 2 * H], out=gates[:, : 2 * H])
    xp.tanh(gates[:, 2 * H : 3 * H], out=gates[:, 2 * H : 3 * H])
    sigmoid(xp, gates[:, 3 * H :], out=gates[:, 3 * H :])
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    c = xp.multiply(f, c_prev, out=c)
    c += i * g
    tanh_c = xp.tanh(c, out=tanh_c)
    h = xp.multiply(o, tanh_c, out=h)
    if zc is not None:
        c += zc * (c_prev - c)
    if zh is not None:
        h += zh * (h_prev - h)
    return carry(valid, h, h_prev), carry(valid, c, c_prev), LSTMCache(gates, c_prev, tanh_c)


def pointwise_backward(dh, dc, cache, valid, out=None, zh=None, zc=None):
    """Returns (∂z (B, 4H), the ∂h reaching h_{t−1} directly (carried past a padded step,
    or through zoneout) or None, ∂c_{t−1}).

    ``out`` = (dz, dh_carried, dc_prev) preallocated arrays (dh_carried may be None).
    """
    xp = xp_of(dh)
    gates, c_prev, tanh_c = cache
    H = tanh_c.shape[-1]
    dz, dh_carried_out, dc_prev_out = out or (None, None, None)
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    dh, dh_carried = split_grad(valid, dh)
    dc, dc_carried = split_grad(valid, dc)
    dh, dh_carried = regularise.zoneout_grad(dh, dh_carried, zh)
    dc, dc_carried = regularise.zoneout_grad(dc, dc_carried, zc)
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


def fused_forward(k, xg, hg, h_prev, c_prev, valid, out=None, zh=None, zc=None):
    """``pointwise_forward`` as one launch of kernels/lstm.cu's lstm_forward."""
    B, H = c_prev.shape
    if h_prev is None and (valid is not None or zh is not None):
        raise ValueError("lstm_forward needs h_prev to carry padded rows or zone out h")
    hp = k.absent() if h_prev is None else k.matrix("h_prev", h_prev, B, H)
    h, c, gates, tanh_c = k.outputs(out, B, H, H, 4 * H, H)
    k.launch("lstm_forward", B, H, *k.matrix("xg", xg, B, 4 * H),
             *k.matrix("hg", hg, B, 4 * H), *hp, *k.matrix("c_prev", c_prev, B, H),
             k.valid(valid, B), *k.optional("zh", zh, B, H), *k.optional("zc", zc, B, H),
             h, c, gates, tanh_c)
    return h, c, LSTMCache(gates, c_prev, tanh_c)


def fused_backward(k, dh, dc, cache, valid, out=None, zh=None, zc=None):
    """``pointwise_backward`` as one launch of kernels/lstm.cu's lstm_backward."""
    gates, c_prev, tanh_c = cache
    B, H = tanh_c.shape
    direct = None if valid is None and zh is None else H
    dz, dh_carried, dc_prev = k.outputs(out, B, 4 * H, direct, H)
    k.launch("lstm_backward", B, H, *k.matrix("dh", dh, B, H), *k.matrix("dc", dc, B, H),
             k.dense("gates", gates, B, 4 * H), *k.matrix("c_prev", c_prev, B, H),
             k.dense("tanh_c", tanh_c, B, H), k.valid(valid, B),
             *k.optional("zh", zh, B, H), *k.optional("zc", zc, B, H), dz, dh_carried, dc_prev)
    return dz, dh_carried, dc_prev


W_HR = ParamSpec("w_hr", "weight_hr", lambda d, G: (d.proj, d.hidden), "projection",
                 when="proj")


class LSTM(Cell):
    """The LSTM recurrence around the pointwise math: h W_hhᵀ, and LSTMP's W_hr.

    Both biases are added once, to the hoisted input projection (``input_bias``).
    Forward: one recurrent GEMM into h_g[t], one pointwise call (LSTMP: and the
    projection GEMM). Backward: one pointwise call writing ∂z straight into ∂x_g[t], one
    GEMM accumulating ∂z W_hh into ∂h_{t−1}.
    """

    name = "lstm"
    family = "LSTM"
    state = ("h", "c")
    gates = ("i", "f", "g", "o")
    params = TORCH_PARAMS + (W_HR,)
    forget_gate = 1
    projection = True
    kernels = {"lstm_forward": "lstm_forward<{T}>", "lstm_backward": "lstm_backward<{T}>",
               **regularise.KERNELS}
    reference = regularise.reference(lstm_forward=pointwise_forward,
                                     lstm_backward=pointwise_backward)
    step_inputs = ("valid", "zoneout_h", "zoneout_c", "recurrent_dropout")
    zoneout = ("h", "c")
    zoneout_with_projection = ("c",)  # h is W_hr's output, formed after the pointwise kernel
    recurrent_dropout = True
    weight_drop = ("w_hh",)
    # the reference driver (NumPy pointwise) may bind these saved buffers in place: "gates"
    # to the hoisted x_g (which the step overwrites), "hg" to nothing (not kept)
    in_place = {"gates": "xg", "hg": None}
    weight_grad_reads = ("h", "y")  # the saved buffers ``weight_grads`` reads (recompute)
    cpu_loop = CpuLoop("lstm", saved=(("h", 1), ("c", 1), ("gates", 4), ("tanh_c", 1)),
                       grads=(("dxg", 4),), history=True, joins_input=True)

    def cpu_loop_for(self, dims):
        return None if dims.proj else self.cpu_loop  # kernels/lstm_cpu.cpp has no projection

    def fused_pointwise(self, launcher):
        return launcher.bind(lstm_forward=fused_forward, lstm_backward=fused_backward,
                             **regularise.FUSED)

    def input_bias(self, p):
        """b_ih + b_hh: both enter z additively, so both join the hoisted input GEMM."""
        return bias_sum(p.get("b_ih"), p.get("b_hh"))

    def in_place_for(self, dims):
        """The in-place bindings that hold at ``dims`` (none with a projection)."""
        return {} if dims.proj else self.in_place

    def saved_widths(self, dims, p):
        H = dims.hidden
        widths = {"hg": 4 * H, "h": dims.out, "c": H, "gates": 4 * H, "tanh_c": H}
        if dims.proj:
            widths["y"] = H  # o ⊙ tanh(c_t) before the projection
        return widths

    def grad_widths(self, dims, p):
        widths = {"dxg": 4 * dims.hidden}
        if dims.proj:
            widths["dh_proj"] = dims.out
        return widths

    def forward_step(self, ops, p, xg, state_prev, inputs, saved):
        h_prev, c_prev = state_prev
        valid, zh, zc = inputs["valid"], inputs.get("zoneout_h"), inputs.get("zoneout_c")
        h_in = regularise.recurrent_input(ops, h_prev, inputs)
        if saved.get("hg") is None and "y" not in saved:
            # lean: the driver bound saved["gates"] to the hoisted x_g (``in_place``); the
            # recurrent product is added into it (gemm β=1 on the CPU is xg += h W_hhᵀ,
            # the same addition as xg + h_g) and the gates overwrite it
            ops.gemm(h_in, p["w_hh"], xg, transpose_b=True, beta=1.0)
            out = (saved["h"], saved["c"], xg, saved["tanh_c"])
            ops.pw.lstm_forward(xg, None, h_prev, c_prev, valid, out=out, zh=zh, zc=zc)
            return saved["h"], saved["c"]
        ops.gemm(h_in, p["w_hh"], saved["hg"], transpose_b=True)
        if "y" not in saved:
            out = (saved["h"], saved["c"], saved["gates"], saved["tanh_c"])
            ops.pw.lstm_forward(xg, saved["hg"], h_prev, c_prev, valid, out=out, zh=zh, zc=zc)
        else:
            out = (saved["y"], saved["c"], saved["gates"], saved["tanh_c"])
            ops.pw.lstm_forward(xg, saved["hg"], None, c_prev, None, out=out, zc=zc)
            ops.gemm(saved["y"], p["w_hr"], saved["h"], transpose_b=True)
            carry(valid, saved["h"], h_prev)
            carry(valid, saved["c"], c_prev)
        return saved["h"], saved["c"]

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        """∂z into ∂x_g[t]; ∂h_{t−1} added into ``dstate_prev[0]``; ∂c_{t−1} written."""
        dh, dc = dstate
        dh_prev, dc_prev = dstate_prev
        valid, zh, zc = inputs["valid"], inputs.get("zoneout_h"), inputs.get("zoneout_c")
        cache = LSTMCache(saved["gates"], state_prev[1], saved["tanh_c"])
        if "y" not in saved:
            direct = valid is not None or zh is not None
            carried = ops.scratch("dh_carried", dh) if direct else None
            _, carried, _ = ops.pw.lstm_backward(dh, dc, cache, valid,
                                                 out=(grads["dxg"], carried, dc_prev),
                                                 zh=zh, zc=zc)
        else:
            dh_new, carried = split_grad(valid, dh)
            dc_new, dc_carried = split_grad(valid, dc)
            grads["dh_proj"][...] = dh_new
            ops.pw.lstm_backward(dh_new @ p["w_hr"], dc_new, cache, None,
                                 out=(grads["dxg"], None, dc_prev), zc=zc)
            if dc_carried is not None:
                dc_prev += dc_carried
        if carried is not None:
            dh_prev += carried
        regularise.recurrent_backward(ops, grads["dxg"], p["w_hh"], dh_prev, inputs)

    def weight_grads(self, p, saved, grads, h_before, db):
        """∂W_hh = Σ_t ∂z_tᵀ h_{t−1}, ∂b_hh = Σ_t ∂z_t (= ∂b_ih), ∂W_hr = Σ_t ∂h_tᵀ y_t."""
        out = {"w_hh": sum_outer(grads["dxg"], h_before), "b_hh": db}
        if "y" in saved:
            out["w_hr"] = sum_outer(grads["dh_proj"], saved["y"])
        return out

    def gate_views(self, saved, dims):
        H, g = dims.hidden, saved["gates"]
        return {"i": g[..., :H], "f": g[..., H : 2 * H], "o": g[..., 3 * H :]}


register(LSTM())
