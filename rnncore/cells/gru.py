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

The original form needs the second recurrent GEMM between two pointwise halves, forward
(``gates_forward``, GEMM, ``candidate_forward``) and backward (``candidate_backward``,
GEMM, ``gates_backward``); each half is one kernel of kernels/gru.cu.
"""

from typing import NamedTuple

from ..backend import sigmoid, sum_outer, xp_of
from . import regularise
from .base import Cell, CpuLoop
from .masking import carry, split_grad, store
from .registry import register


class GRUCache(NamedTuple):
    """Saved for backward: r, z, n (B, H each), h_n (the recurrent n-block, reset-after)."""

    r: object
    z: object
    n: object
    hn: object


def pointwise_forward(xg, hg, h_prev, valid, out=None, zh=None):
    """Reset-after gate math: xg, hg are (B, 3H) with biases in; returns (h_t, cache).

    ``out`` = (h, r, z, n) preallocated (B, H) arrays, or None; ``zh`` zoneout's weight of
    h_{t−1} (``cells.regularise``) or None.
    """
    xp = xp_of(xg)
    H = h_prev.shape[-1]
    h, r, z, n = out or (None, None, None, None)
    r = sigmoid(xp, xg[:, :H] + hg[:, :H], out=r)
    z = sigmoid(xp, xg[:, H : 2 * H] + hg[:, H : 2 * H], out=z)
    hn = hg[:, 2 * H :]
    n = xp.tanh(xg[:, 2 * H :] + r * hn, out=n)
    h = xp.add(n, z * (h_prev - n), out=h)
    if zh is not None:
        h += zh * (h_prev - h)
    return carry(valid, h, h_prev), GRUCache(r, z, n, hn)



def pointwise_backward(dh, h_prev, cache, valid, out=None, zh=None):
    """Returns (∂xg (B, 3H), ∂hg (B, 3H), ∂h_{t−1} through z and the carry).

    ``out`` = (dxg, dhg, dh_prev) preallocated arrays, or None.
    """
    xp = xp_of(dh)
    H = dh.shape[-1]
    r, z, n, hn = cache
    dxg, dhg, dh_prev = out or (None, None, None)
    dh, dh_carried = regularise.zoneout_grad(*split_grad(valid, dh), zh)
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


def gates_forward(xg_rz, hg_rz, h_prev, out=None):
    """Original-GRU first half: r, z = σ(x_rz + h_rz), and r ⊙ h_{t−1} for the n-block GEMM.

    ``out`` = (r, z, rh) or None.
    """
    xp = xp_of(xg_rz)
    H = xg_rz.shape[-1] // 2
    r, z, rh = out or (None, None, None)
    r = sigmoid(xp, xg_rz[:, :H] + hg_rz[:, :H], out=r)
    z = sigmoid(xp, xg_rz[:, H:] + hg_rz[:, H:], out=z)
    rh = xp.multiply(r, h_prev, out=rh)
    return r, z, rh


def candidate_forward(xg_n, rhg_n, z, h_prev, valid, out=None, zh=None):
    """Original-GRU second half: n = tanh(x_n + (r⊙h) W_hnᵀ + b_hn), h = (1−z) n + z h.

    ``out`` = (h, n) or None.
    """
    xp = xp_of(xg_n)
    h, n = out or (None, None)
    n = xp.tanh(xg_n + rhg_n, out=n)
    h = xp.add(n, z * (h_prev - n), out=h)
    if zh is not None:
        h += zh * (h_prev - h)
    return carry(valid, h, h_prev), n


def candidate_backward(dh, z, n, valid, out=None, zh=None):
    """Original-GRU backward, first half: ∂a_n = ∂h (1 − z)(1 − n²). ``out`` = ∂a_n or None."""
    dh, _ = regularise.zoneout_grad(*split_grad(valid, dh), zh)
    return store(out, dh * (1 - z) * (1 - n * n))


def gates_backward(dh, drh, h_prev, r, z, n, valid, out, zh=None):
    """Original-GRU backward, second half, given ∂(r⊙h) = ∂a_n W_hn:

        ∂a_r = ∂(r⊙h) h_{t−1} r(1 − r)     ∂a_z = ∂h (h_{t−1} − n) z(1 − z)
        ∂h_{t−1} += ∂h z + ∂(r⊙h) r  (+ the ∂h carried past a padded step)

    ``out`` = (∂x_rz (B, 2H), ∂h_{t−1}): the first written, the second added to.
    """
    H = dh.shape[-1]
    dxg_rz, dh_prev = out
    dh, dh_carried = regularise.zoneout_grad(*split_grad(valid, dh), zh)
    dxg_rz[:, :H] = drh * h_prev * r * (1 - r)
    dxg_rz[:, H:] = dh * (h_prev - n) * z * (1 - z)
    dh_prev += dh * z + drh * r
    if dh_carried is not None:
        dh_prev += dh_carried
    return dxg_rz, dh_prev


# ----------------------------------------------------------------------------- fused twins
def fused_forward(k, xg, hg, h_prev, valid, out=None, zh=None):
    B, H = h_prev.shape
    h, r, z, n = k.outputs(out, B, H, H, H, H)
    k.launch("gru_forward", B, H, *k.matrix("xg", xg, B, 3 * H), *k.matrix("hg", hg, B, 3 * H),
             *k.matrix("h_prev", h_prev, B, H), k.valid(valid, B), *k.optional("zh", zh, B, H),
             h, r, z, n)
    return h, GRUCache(r, z, n, hg[:, 2 * H:])


def fused_backward(k, dh, h_prev, cache, valid, out=None, zh=None):
    r, z, n, hn = cache
    B, H = r.shape
    dxg, dhg, dh_prev = k.outputs(out, B, 3 * H, 3 * H, H)
    k.launch("gru_backward", B, H, *k.matrix("dh", dh, B, H),
             *k.matrix("h_prev", h_prev, B, H),
             *(k.dense(name, v, B, H) for name, v in (("r", r), ("z", z), ("n", n))),
             *k.matrix("hn", hn, B, H), k.valid(valid, B), *k.optional("zh", zh, B, H),
             dxg, dhg, dh_prev)
    return dxg, dhg, dh_prev


def fused_gates_forward(k, xg_rz, hg_rz, h_prev, out=None):
    B, H = h_prev.shape
    r, z, rh = k.outputs(out, B, H, H, H)
    k.launch("gru_gates_forward", B, H, *k.matrix("xg_rz", xg_rz, B, 2 * H),
             *k.matrix("hg_rz", hg_rz, B, 2 * H), *k.matrix("h_prev", h_prev, B, H), r, z, rh)
    return r, z, rh


def fused_candidate_forward(k, xg_n, rhg_n, z, h_prev, valid, out=None, zh=None):
    B, H = h_prev.shape
    h, n = k.outputs(out, B, H, H)
    k.launch("gru_candidate_forward", B, H, *k.matrix("xg_n", xg_n, B, H),
             *k.matrix("rhg_n", rhg_n, B, H), *k.matrix("z", z, B, H),
             *k.matrix("h_prev", h_prev, B, H), k.valid(valid, B),
             *k.optional("zh", zh, B, H), h, n)
    return h, n


def fused_candidate_backward(k, dh, z, n, valid, out=None, zh=None):
    B, H = z.shape
    da_n = k.strided_output(out, B, H)
    k.launch("gru_candidate_backward", B, H, *k.matrix("dh", dh, B, H),
             *k.matrix("z", z, B, H), *k.matrix("n", n, B, H), k.valid(valid, B),
             *k.optional("zh", zh, B, H), *da_n)
    return da_n[0]


def fused_gates_backward(k, dh, drh, h_prev, r, z, n, valid, out, zh=None):
    B, H = r.shape
    dxg_rz, dh_prev = out
    k.launch("gru_gates_backward", B, H, *k.matrix("dh", dh, B, H),
             *k.matrix("drh", drh, B, H), *k.matrix("h_prev", h_prev, B, H),
             *k.matrix("r", r, B, H), *k.matrix("z", z, B, H), *k.matrix("n", n, B, H),
             k.valid(valid, B), *k.optional("zh", zh, B, H), *k.strided_output(dxg_rz, B, 2 * H),
             *k.strided_output(dh_prev, B, H))
    return dxg_rz, dh_prev


REFERENCE = regularise.reference(
    gru_forward=pointwise_forward, gru_backward=pointwise_backward,
    gru_gates_forward=gates_forward, gru_candidate_forward=candidate_forward,
    gru_candidate_backward=candidate_backward, gru_gates_backward=gates_backward)
FUSED = dict(
    gru_forward=fused_forward, gru_backward=fused_backward,
    gru_gates_forward=fused_gates_forward, gru_candidate_forward=fused_candidate_forward,
    gru_candidate_backward=fused_candidate_backward, gru_gates_backward=fused_gates_backward)
KERNELS = {name: name + "<{T}>" for name in FUSED}
FUSED.update(regularise.FUSED)
KERNELS.update(regularise.KERNELS)


class GRU(Cell):
    """The GRU recurrence: reset-after (one recurrent GEMM per step, PyTorch's and cuDNN's
    form) or reset-before (Cho et al.'s original: two GEMMs per step, r ⊙ h_{t−1} between).
    """

    family = "GRU"
    state = ("h",)
    gates = ("r", "z", "n")
    kernels = KERNELS
    reference = REFERENCE

    step_inputs = ("valid", "zoneout_h", "recurrent_dropout")
    zoneout = ("h",)
    weight_drop = ("w_hh",)

    def __init__(self, reset_after=True):
        self.reset_after = reset_after
        self.name = "gru" if reset_after else "gru_reset_before"
        # recurrent dropout masks h_{t−1} where it enters h W_hhᵀ; the original form also
        # multiplies h_{t−1} by r before its second GEMM, where this engine has no mask
        self.recurrent_dropout = reset_after
        if not reset_after:
            self.family = ""  # torch.nn.GRU has no reset-before form
            self.step_inputs = ("valid", "zoneout_h")

    def fused_pointwise(self, launcher):
        return launcher.bind(**FUSED)

    def cpu_loop_for(self, dims):
        if not self.reset_after:
            return None  # kernels/gru_cpu.cpp is the reset-after form
        return CpuLoop("gru", saved=(("h", 1), ("r", 1), ("z", 1), ("n", 1), ("hn", 1)),
                       grads=(("dxg", 3), ("dhg", 3)), recurrent_bias=True)

    def input_bias(self, p):
        """b_ih only: b_hn sits inside r ⊙ (…), so b_hh stays with the recurrent product."""
        return p.get("b_ih")

    def saved_widths(self, dims, p):
        H = dims.hidden
        widths = {"h": H, "r": H, "z": H, "n": H}
        if self.reset_after:
            widths["hg"] = 3 * H
        else:  # h_rz = h W_hrzᵀ + b_hrz and h_n = (r ⊙ h) W_hnᵀ + b_hn, kept apart
            widths.update(hg_rz=2 * H, hg_n=H, rh=H)
        return widths

    def prefill(self, p):
        """The recurrent GEMMs accumulate onto b_hh (zeros without biases)."""
        b = p.get("b_hh")
        if self.reset_after:
            return {"hg": b}
        H = p["w_hh"].shape[1]
        return {"hg_rz": None if b is None else b[: 2 * H],
                "hg_n": None if b is None else b[2 * H :]}

    def grad_widths(self, dims, p):
        H = dims.hidden
        return {"dxg": 3 * H, "dhg": 3 * H} if self.reset_after else {"dxg": 3 * H}

    def forward_step(self, ops, p, xg, h_prev, inputs, saved):
        (h_prev,), w_hh, valid, zh = h_prev, p["w_hh"], inputs["valid"], inputs.get("zoneout_h")
        if self.reset_after:
            ops.gemm(regularise.recurrent_input(ops, h_prev, inputs), w_hh, saved["hg"],
                     transpose_b=True, beta=1.0)
            ops.pw.gru_forward(xg, saved["hg"], h_prev, valid,
                               out=(saved["h"], saved["r"], saved["z"], saved["n"]), zh=zh)
            return (saved["h"],)
        H = h_prev.shape[-1]
        ops.gemm(h_prev, w_hh[: 2 * H], saved["hg_rz"], transpose_b=True, beta=1.0)
        ops.pw.gru_gates_forward(xg[:, : 2 * H], saved["hg_rz"], h_prev,
                                 out=(saved["r"], saved["z"], saved["rh"]))
        ops.gemm(saved["rh"], w_hh[2 * H :], saved["hg_n"], transpose_b=True, beta=1.0)
        ops.pw.gru_candidate_forward(xg[:, 2 * H :], saved["hg_n"], saved["z"], h_prev, valid,
                                     out=(saved["h"], saved["n"]), zh=zh)
        return (saved["h"],)

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        """∂x_g[t] (and ∂h_g[t]) into the buffers; ∂h_{t−1} added into ``dstate_prev``."""
        (dh,), (h_prev,), (dh_prev,) = dstate, state_prev, dstate_prev
        w_hh, valid, zh = p["w_hh"], inputs["valid"], inputs.get("zoneout_h")
        H = dh.shape[-1]
        dxg = grads["dxg"]
        if self.reset_after:
            cache = GRUCache(saved["r"], saved["z"], saved["n"], saved["hg"][:, 2 * H :])
            dh_direct = ops.scratch("dh_direct", dh)
            ops.pw.gru_backward(dh, h_prev, cache, valid, out=(dxg, grads["dhg"], dh_direct),
                                zh=zh)
            dh_prev += dh_direct
            regularise.recurrent_backward(ops, grads["dhg"], w_hh, dh_prev, inputs)
            return
        r, z, n = saved["r"], saved["z"], saved["n"]
        da_n = ops.pw.gru_candidate_backward(dh, z, n, valid, out=dxg[:, 2 * H :], zh=zh)
        drh = ops.scratch("drh", dh)
        ops.gemm(da_n, w_hh[2 * H :], drh)
        ops.pw.gru_gates_backward(dh, drh, h_prev, r, z, n, valid, out=(dxg[:, : 2 * H], dh_prev),
                                  zh=zh)
        ops.gemm(dxg[:, : 2 * H], w_hh[: 2 * H], dh_prev, beta=1.0)

    def weight_grads(self, p, saved, grads, h_before, db):
        """∂W_hh = Σ_t ∂h_gᵀ (h_{t−1}, or r⊙h_{t−1} for the original n-block)."""
        if self.reset_after:
            dhg = grads["dhg"]
            return {"w_hh": sum_outer(dhg, h_before), "b_hh": dhg.sum(axis=(0, 1))}
        H = h_before.shape[-1]
        xp = xp_of(h_before)
        dxg = grads["dxg"]
        w = xp.concatenate([sum_outer(dxg[..., : 2 * H], h_before),
                            sum_outer(dxg[..., 2 * H :], saved["rh"])])
        return {"w_hh": w, "b_hh": db}

    def gate_views(self, saved, dims):
        return {"r": saved["r"], "z": saved["z"]}


register(GRU(reset_after=True))
register(GRU(reset_after=False))
