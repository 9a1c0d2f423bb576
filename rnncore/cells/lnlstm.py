"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016, eqs. 20–22), forward and backward.

With LN(v; γ) = γ ⊙ (v − μ(v)) / √(σ²(v) + ε), the mean and variance taken over the row:

    a   = LN(x W_ihᵀ; γ_ih) + LN(h_{t−1} W_hhᵀ; γ_hh) + b      (each LN over all 4H)
    i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
    c_t = f ⊙ c_{t−1} + i ⊙ g
    h_t = o ⊙ tanh(y),   y = γ_c ⊙ ĉ_t + β_c,   ĉ_t = (c_t − μ(c_t)) / √(σ²(c_t) + ε)

Which variant, and why: the paper's. Each of the two summed inputs is normalised over
the whole 4H vector (not gate by gate), and the normalised cell state is used only on the
way to h_t: the carried c_t stays unnormalised, so the additive memory path
c_{t−1} → c_t (the reason the LSTM keeps gradients alive) is untouched. The paper's shifts
of the two input normalisations are folded into the one bias b (a sum of shifts is one
shift), so no parameter is redundant. Other implementations (haste's, TensorFlow's
LayerNormBasicLSTMCell) differ in where they normalise — per gate, or carrying the
normalised c — and are different functions.

Backward of a row normalisation v̂ = (v − μ) r, r = (σ² + ε)^(−½), exact with ε:

    ∂v = r (∂v̂ − mean(∂v̂) − v̂ ⊙ mean(∂v̂ ⊙ v̂))

and of the step, from ∂h, ∂c (padded rows carried past, as in ``masking``):

    ∂y = ∂h ⊙ o ⊙ (1 − tanh²y)          ∂c ← ∂c + LN'(∂y ⊙ γ_c)
    ∂a = [∂c g i(1−i), ∂c c_{t−1} f(1−f), ∂c i (1−g²), ∂h tanh(y) o(1−o)]
    ∂(x W_ihᵀ) = LN'(∂a ⊙ γ_ih)   ∂(h W_hhᵀ) = LN'(∂a ⊙ γ_hh)   ∂c_{t−1} = ∂c ⊙ f
    ∂γ_ih = Σ ∂a ⊙ x̂   ∂γ_hh = Σ ∂a ⊙ ĥ   ∂b = Σ ∂a   ∂γ_c = Σ ∂y ⊙ ĉ   ∂β_c = Σ ∂y

``kernels/lnlstm.cu`` computes the same per row, one block of cooperating threads per
batch row (the three normalisations need the row's mean and variance).
"""

from typing import NamedTuple

from ..backend import sigmoid, sum_outer, xp_of
from . import regularise
from .base import W_HH, W_IH, Cell, KernelSpec, ParamSpec
from .masking import carry, split_grad, store
from .registry import register

EPS = 1e-5


class LayerNormParams(NamedTuple):
    g_ih: object  # γ_ih (4H,)
    g_hh: object  # γ_hh (4H,)
    b: object  # b (4H,) or None
    g_c: object  # γ_c (H,)
    s_c: object  # β_c (H,)


class LNLSTMCache(NamedTuple):
    """Saved for backward: gates (B, 4H), c_{t−1}, x̂ and ĥ (B, 4H), ĉ, tanh(y) (B, H) and
    the three rows' 1/√(σ² + ε) as (B, 3): input, recurrent, cell."""

    gates: object
    c_prev: object
    xhat: object
    hhat: object
    chat: object
    tanh_y: object
    rstd: object


def layer_norm(v, eps=EPS):
    """(v̂, r): v̂ = (v − μ) r over the last axis, r = 1/√(σ² + ε) of shape (B, 1)."""
    xp = xp_of(v)
    d = v - v.mean(axis=-1, keepdims=True)
    r = 1 / xp.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)
    return d * r, r


def layer_norm_backward(dvhat, vhat, r):
    """∂v = r (∂v̂ − mean(∂v̂) − v̂ ⊙ mean(∂v̂ ⊙ v̂))."""
    return r * (dvhat - dvhat.mean(axis=-1, keepdims=True)
                - vhat * (dvhat * vhat).mean(axis=-1, keepdims=True))


def pointwise_forward(xg, hg, h_prev, c_prev, ln, valid, out=None, zh=None, zc=None):
    """One step's normalisations and gate math: returns (h_t, c_t, cache).

    ``out`` = (h, c, gates, xhat, hhat, chat, tanh_y, rstd) preallocated, or None;
    ``zh``, ``zc`` zoneout's weights of h_{t−1}, c_{t−1} (``cells.regularise``) or None,
    applied after h̃_t = o ⊙ tanh(y(c̃_t)) is formed from the new c̃_t, as in the LSTM.
    """
    xp = xp_of(xg)
    H = c_prev.shape[-1]
    h, c, gates, xhat, hhat, chat, tanh_y, rstd = out or (None,) * 8
    x_n, r_x = layer_norm(xg)
    h_n, r_h = layer_norm(hg)
    a = ln.g_ih * x_n + ln.g_hh * h_n
    if ln.b is not None:
        a += ln.b
    gates = store(gates, a)
    sigmoid(xp, gates[:, : 2 * H], out=gates[:, : 2 * H])
    xp.tanh(gates[:, 2 * H : 3 * H], out=gates[:, 2 * H : 3 * H])
    sigmoid(xp, gates[:, 3 * H :], out=gates[:, 3 * H :])
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    c = store(c, f * c_prev + i * g)
    c_n, r_c = layer_norm(c)
    tanh_y = store(tanh_y, xp.tanh(ln.g_c * c_n + ln.s_c))
    h = store(h, o * tanh_y)
    if zc is not None:
        c += zc * (c_prev - c)
    if zh is not None:
        h += zh * (h_prev - h)
    rstd = store(rstd, xp.concatenate([r_x, r_h, r_c], axis=-1))
    cache = LNLSTMCache(gates, c_prev, store(xhat, x_n), store(hhat, h_n), store(chat, c_n),
                        tanh_y, rstd)
    return carry(valid, h, h_prev), carry(valid, c, c_prev), cache


def pointwise_backward(dh, dc, cache, ln, valid, out=None, zh=None, zc=None):
    """Returns (∂(x W_ihᵀ), ∂(h W_hhᵀ), ∂a, ∂y, the ∂h carried past a padded step or None,
    ∂c_{t−1}). ``out`` = the same six preallocated (dh_carried may be None), or None."""
    gates, c_prev, xhat, hhat, chat, tanh_y, rstd = cache
    H = chat.shape[-1]
    dxg, dhg, da, dy, dh_carried_out, dc_prev_out = out or (None,) * 6
    dh, dh_carried = split_grad(valid, dh)
    dc, dc_carried = split_grad(valid, dc)
    # zoneout: part of the gradient reaches h_{t−1}, c_{t−1} directly
    dh, dh_carried = regularise.zoneout_grad(dh, dh_carried, zh)
    dc, dc_carried = regularise.zoneout_grad(dc, dc_carried, zc)
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    dy = store(dy, dh * o * (1 - tanh_y * tanh_y))
    dcell = dc + layer_norm_backward(dy * ln.g_c, chat, rstd[:, 2:3])
    if da is None:
        da = xp_of(dh).empty_like(gates)
    da[:, :H] = dcell * g * i * (1 - i)
    da[:, H : 2 * H] = dcell * c_prev * f * (1 - f)
    da[:, 2 * H : 3 * H] = dcell * i * (1 - g * g)
    da[:, 3 * H :] = dh * tanh_y * o * (1 - o)
    dxg = store(dxg, layer_norm_backward(da * ln.g_ih, xhat, rstd[:, 0:1]))
    dhg = store(dhg, layer_norm_backward(da * ln.g_hh, hhat, rstd[:, 1:2]))
    dc_prev = dcell * f if dc_carried is None else dcell * f + dc_carried
    if dh_carried is not None:
        dh_carried = store(dh_carried_out, dh_carried)
    return dxg, dhg, da, dy, dh_carried, store(dc_prev_out, dc_prev)


# ----------------------------------------------------------------------------- fused twins
def _vectors(k, ln, H):
    def vec(name, v, n):
        return None if v is None else k.dense(name, v.reshape(1, n), 1, n)

    return (vec("g_ih", ln.g_ih, 4 * H), vec("g_hh", ln.g_hh, 4 * H), vec("b", ln.b, 4 * H),
            vec("g_c", ln.g_c, H), vec("s_c", ln.s_c, H))


def fused_forward(k, xg, hg, h_prev, c_prev, ln, valid, out=None, zh=None, zc=None):
    B, H = c_prev.shape
    outs = k.outputs(out, B, H, H, 4 * H, 4 * H, 4 * H, H, H, 3)
    k.launch_rows("lnlstm_forward", B, H, *k.matrix("xg", xg, B, 4 * H),
                  *k.matrix("hg", hg, B, 4 * H), *k.matrix("h_prev", h_prev, B, H),
                  *k.matrix("c_prev", c_prev, B, H), *_vectors(k, ln, H), k.scalar(EPS),
                  k.valid(valid, B), *k.optional("zh", zh, B, H), *k.optional("zc", zc, B, H),
                  *outs)
    h, c, gates, xhat, hhat, chat, tanh_y, rstd = outs
    return h, c, LNLSTMCache(gates, c_prev, xhat, hhat, chat, tanh_y, rstd)


def fused_backward(k, dh, dc, cache, ln, valid, out=None, zh=None, zc=None):
    gates, c_prev, xhat, hhat, chat, tanh_y, rstd = cache
    B, H = chat.shape
    direct = None if valid is None and zh is None else H
    outs = k.outputs(out, B, 4 * H, 4 * H, 4 * H, H, direct, H)
    g_ih, g_hh, _, g_c, _ = _vectors(k, ln, H)
    k.launch_rows("lnlstm_backward", B, H, *k.matrix("dh", dh, B, H), *k.matrix("dc", dc, B, H),
                  k.dense("gates", gates, B, 4 * H), *k.matrix("c_prev", c_prev, B, H),
                  k.dense("xhat", xhat, B, 4 * H), k.dense("hhat", hhat, B, 4 * H),
                  k.dense("chat", chat, B, H), k.dense("tanh_y", tanh_y, B, H),
                  k.dense("rstd", rstd, B, 3), g_ih, g_hh, g_c, k.valid(valid, B),
                  *k.optional("zh", zh, B, H), *k.optional("zc", zc, B, H), *outs)
    return tuple(outs)


def _gate_vector(d, G):
    return (G * d.hidden,)


def _unit_vector(d, G):
    return (d.hidden,)


class LNLSTM(Cell):
    """The layer-normalised LSTM: one recurrent GEMM and one row-cooperative pointwise
    kernel per step; the bias sits after the normalisations, so nothing joins the hoisted
    input GEMM."""

    name = "lnlstm"
    state = ("h", "c")
    gates = ("i", "f", "g", "o")
    params = (W_IH, W_HH,
              ParamSpec("b", "bias", _gate_vector, "bias", when="bias"),
              ParamSpec("g_ih", "ln_ih_gain", _gate_vector, "ones"),
              ParamSpec("g_hh", "ln_hh_gain", _gate_vector, "ones"),
              ParamSpec("g_c", "ln_c_gain", _unit_vector, "ones"),
              ParamSpec("s_c", "ln_c_shift", _unit_vector, "zeros"))
    forget_gate = 1
    kernels = {"lnlstm_forward": KernelSpec("lnlstm_forward<{T}>", cooperative=True),
               "lnlstm_backward": KernelSpec("lnlstm_backward<{T}>", cooperative=True),
               **regularise.KERNELS}
    reference = regularise.reference(lnlstm_forward=pointwise_forward,
                                     lnlstm_backward=pointwise_backward)
    step_inputs = ("valid", "zoneout_h", "zoneout_c", "recurrent_dropout")
    zoneout = ("h", "c")
    recurrent_dropout = True
    weight_drop = ("w_hh",)

    def fused_pointwise(self, launcher):
        return launcher.bind(lnlstm_forward=fused_forward, lnlstm_backward=fused_backward,
                             **regularise.FUSED)

    def input_bias(self, p):
        return None

    def saved_widths(self, dims, p):
        H = dims.hidden
        return {"hg": 4 * H, "h": H, "c": H, "gates": 4 * H, "xhat": 4 * H, "hhat": 4 * H,
                "chat": H, "tanh_y": H, "rstd": 3}

    def grad_widths(self, dims, p):
        H = dims.hidden
        return {"dxg": 4 * H, "dhg": 4 * H, "da": 4 * H, "dy": H}

    @staticmethod
    def _ln(p):
        return LayerNormParams(p["g_ih"], p["g_hh"], p.get("b"), p["g_c"], p["s_c"])

    def forward_step(self, ops, p, xg, state_prev, inputs, saved):
        h_prev, c_prev = state_prev
        ops.gemm(regularise.recurrent_input(ops, h_prev, inputs), p["w_hh"], saved["hg"],
                 transpose_b=True)
        out = tuple(saved[k] for k in ("h", "c", "gates", "xhat", "hhat", "chat", "tanh_y",
                                       "rstd"))
        ops.pw.lnlstm_forward(xg, saved["hg"], h_prev, c_prev, self._ln(p), inputs["valid"],
                              out=out, zh=inputs.get("zoneout_h"), zc=inputs.get("zoneout_c"))
        return saved["h"], saved["c"]

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        (dh, dc), (dh_prev, dc_prev), valid = dstate, dstate_prev, inputs["valid"]
        cache = LNLSTMCache(saved["gates"], state_prev[1], saved["xhat"], saved["hhat"],
                            saved["chat"], saved["tanh_y"], saved["rstd"])
        zh, zc = inputs.get("zoneout_h"), inputs.get("zoneout_c")
        direct = valid is not None or zh is not None
        carried = ops.scratch("dh_carried", dh) if direct else None
        out = (grads["dxg"], grads["dhg"], grads["da"], grads["dy"], carried, dc_prev)
        carried = ops.pw.lnlstm_backward(dh, dc, cache, self._ln(p), valid, out=out, zh=zh,
                                         zc=zc)[4]
        if carried is not None:
            dh_prev += carried
        regularise.recurrent_backward(ops, grads["dhg"], p["w_hh"], dh_prev, inputs)

    def weight_grads(self, p, saved, grads, h_before, db):
        da, dy = grads["da"], grads["dy"]
        return {"w_hh": sum_outer(grads["dhg"], h_before), "b": da.sum(axis=(0, 1)),
                "g_ih": (da * saved["xhat"]).sum(axis=(0, 1)),
                "g_hh": (da * saved["hhat"]).sum(axis=(0, 1)),
                "g_c": (dy * saved["chat"]).sum(axis=(0, 1)), "s_c": dy.sum(axis=(0, 1))}

    def gate_views(self, saved, dims):
        H, g = dims.hidden, saved["gates"]
        return {"i": g[..., :H], "f": g[..., H : 2 * H], "o": g[..., 3 * H :]}


register(LNLSTM())
