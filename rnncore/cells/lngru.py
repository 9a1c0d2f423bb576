"""Layer-normalised GRU, the partner of ``lnlstm``: reset-after, forward and backward.

With LN(v) = (v − μ(v)) / √(σ²(v) + ε) over the row (each of the two over all 3H values):

    a_x = γ_ih ⊙ LN(x W_ihᵀ) + b_ih          a_h = γ_hh ⊙ LN(h_{t−1} W_hhᵀ) + b_hh
    r = σ(a_x,r + a_h,r)   z = σ(a_x,z + a_h,z)   n = tanh(a_x,n + r ⊙ a_h,n)
    h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

Which variant, and why: Ba, Kiros & Hinton's recipe (normalise each summed input
separately, over the whole pre-activation vector, then gain and bias) applied to
PyTorch's and cuDNN's reset-after GRU, which is also haste's ``LayerNormGRU``. The input
and recurrent projections are normalised apart, because their scales differ and the
recurrent one drifts with h; each is normalised over all 3H values (as ``lnlstm`` does
over 4H), not gate by gate. The recurrent bias stays separate (b_hh,n sits inside
r ⊙ (…), so it cannot be folded into b_ih), exactly as in ``torch.nn.GRU``. Unlike the LSTM
there is no cell state to normalise on its way out, and h_t itself is left alone: it is
the carried state, and normalising it would cut the z ⊙ h_{t−1} path that keeps gradients
alive (the reason ``lnlstm`` leaves c_t unnormalised). Reset-before (Cho et al.) would need
a normalisation of (r ⊙ h) W_hnᵀ between two GEMMs; it is not offered.

Backward, from ∂h (padded rows carried past, zoneout as in ``cells.regularise``):

    ∂a_n = ∂h (1 − z)(1 − n²)   ∂a_r = ∂a_n ⊙ a_h,n ⊙ r(1 − r)   ∂a_z = ∂h (h_{t−1} − n) z(1 − z)
    ∂a_x = [∂a_r, ∂a_z, ∂a_n]   ∂a_h = [∂a_r, ∂a_z, ∂a_n ⊙ r]   ∂h_{t−1} = ∂h ⊙ z + ∂(h W_hhᵀ) W_hh
    ∂(x W_ihᵀ) = LN'(∂a_x ⊙ γ_ih)   ∂(h W_hhᵀ) = LN'(∂a_h ⊙ γ_hh)
    ∂γ_ih = Σ ∂a_x ⊙ x̂   ∂b_ih = Σ ∂a_x   ∂γ_hh = Σ ∂a_h ⊙ ĥ   ∂b_hh = Σ ∂a_h

``kernels/lngru.cu`` computes each step in one row-cooperative launch, like lnlstm.cu.
"""

from typing import NamedTuple

from ..backend import sigmoid, sum_outer, xp_of
from . import regularise
from .base import W_HH, W_IH, Cell, KernelSpec, ParamSpec
from .lnlstm import EPS, layer_norm, layer_norm_backward
from .masking import carry, split_grad, store
from .registry import register


class LNGRUParams(NamedTuple):
    g_ih: object  # γ_ih (3H,)
    g_hh: object  # γ_hh (3H,)
    b_x: object  # b_ih (3H,) or None
    b_h: object  # b_hh (3H,) or None


class LNGRUCache(NamedTuple):
    """Saved for backward: r, z, n, a_h,n (B, H), x̂ and ĥ (B, 3H), the rows' 1/√(σ² + ε) (B, 2)."""

    r: object
    z: object
    n: object
    ahn: object
    xhat: object
    hhat: object
    rstd: object



def pointwise_forward(xg, hg, h_prev, ln, valid, out=None, zh=None):
    """Returns (h_t, cache). ``out`` = (h, r, z, n, ahn, xhat, hhat, rstd) or None."""
    xp = xp_of(xg)
    H = h_prev.shape[-1]
    h, r, z, n, ahn, xhat, hhat, rstd = out or (None,) * 8
    x_n, r_x = layer_norm(xg)
    h_n, r_h = layer_norm(hg)
    ax = ln.g_ih * x_n
    ah = ln.g_hh * h_n
    if ln.b_x is not None:
        ax += ln.b_x
    if ln.b_h is not None:
        ah += ln.b_h
    r = sigmoid(xp, ax[:, :H] + ah[:, :H], out=r)
    z = sigmoid(xp, ax[:, H : 2 * H] + ah[:, H : 2 * H], out=z)
    n = xp.tanh(ax[:, 2 * H :] + r * ah[:, 2 * H :], out=n)
    h = xp.add(n, z * (h_prev - n), out=h)
    if zh is not None:
        h += zh * (h_prev - h)
    cache = LNGRUCache(r, z, n, store(ahn, ah[:, 2 * H :]), store(xhat, x_n), store(hhat, h_n),
                       store(rstd, xp.concatenate([r_x, r_h], axis=-1)))
    return carry(valid, h, h_prev), cache


def pointwise_backward(dh, h_prev, cache, ln, valid, out=None, zh=None):
    """Returns (∂(x W_ihᵀ), ∂(h W_hhᵀ), ∂a_x, ∂a_h, ∂h_{t−1} not through W_hh).

    ``out`` = the same five preallocated arrays, or None.
    """
    xp = xp_of(dh)
    r, z, n, ahn, xhat, hhat, rstd = cache
    H = dh.shape[-1]
    dxg, dhg, dax, dah, dh_prev = out or (None,) * 5
    dh, dh_carried = regularise.zoneout_grad(*split_grad(valid, dh), zh)
    da_n = dh * (1 - z) * (1 - n * n)
    if dax is None:
        dax = xp.empty(dh.shape[:-1] + (3 * H,), dtype=dh.dtype)
    if dah is None:
        dah = xp.empty_like(dax)
    dax[:, :H] = da_n * ahn * r * (1 - r)
    dax[:, H : 2 * H] = dh * (h_prev - n) * z * (1 - z)
    dax[:, 2 * H :] = da_n
    dah[:, : 2 * H] = dax[:, : 2 * H]
    dah[:, 2 * H :] = da_n * r
    dxg = store(dxg, layer_norm_backward(dax * ln.g_ih, xhat, rstd[:, 0:1]))
    dhg = store(dhg, layer_norm_backward(dah * ln.g_hh, hhat, rstd[:, 1:2]))
    through_z = dh * z
    dh_prev = store(dh_prev, through_z if dh_carried is None else through_z + dh_carried)
    return dxg, dhg, dax, dah, dh_prev


# ----------------------------------------------------------------------------- fused twins
def _vectors(k, ln, H):
    def vec(name, v):
        return None if v is None else k.dense(name, v.reshape(1, 3 * H), 1, 3 * H)

    return vec("g_ih", ln.g_ih), vec("g_hh", ln.g_hh), vec("b_ih", ln.b_x), vec("b_hh", ln.b_h)


def fused_forward(k, xg, hg, h_prev, ln, valid, out=None, zh=None):
    B, H = h_prev.shape
    outs = k.outputs(out, B, H, H, H, H, H, 3 * H, 3 * H, 2)
    k.launch_rows("lngru_forward", B, H, *k.matrix("xg", xg, B, 3 * H),
                  *k.matrix("hg", hg, B, 3 * H), *k.matrix("h_prev", h_prev, B, H),
                  *_vectors(k, ln, H), k.scalar(EPS), k.valid(valid, B),
                  *k.optional("zh", zh, B, H), *outs)
    h, r, z, n, ahn, xhat, hhat, rstd = outs
    return h, LNGRUCache(r, z, n, ahn, xhat, hhat, rstd)


def fused_backward(k, dh, h_prev, cache, ln, valid, out=None, zh=None):
    r, z, n, ahn, xhat, hhat, rstd = cache
    B, H = r.shape
    outs = k.outputs(out, B, 3 * H, 3 * H, 3 * H, 3 * H, H)
    g_ih, g_hh, _, _ = _vectors(k, ln, H)
    k.launch_rows("lngru_backward", B, H, *k.matrix("dh", dh, B, H),
                  *k.matrix("h_prev", h_prev, B, H),
                  *(k.dense(name, v, B, H) for name, v in (("r", r), ("z", z), ("n", n),
                                                           ("ahn", ahn))),
                  k.dense("xhat", xhat, B, 3 * H), k.dense("hhat", hhat, B, 3 * H),
                  k.dense("rstd", rstd, B, 2), g_ih, g_hh, k.valid(valid, B),
                  *k.optional("zh", zh, B, H), *outs)
    return tuple(outs)


def _gate_vector(d, G):
    return (G * d.hidden,)


class LNGRU(Cell):
    """The layer-normalised GRU: one recurrent GEMM and one row-cooperative pointwise
    kernel per step; both biases sit after the normalisations (nothing joins the hoisted
    input GEMM)."""

    name = "lngru"
    state = ("h",)
    gates = ("r", "z", "n")
    params = (W_IH, W_HH,
              ParamSpec("b_x", "bias_ih", _gate_vector, "bias", when="bias"),
              ParamSpec("b_h", "bias_hh", _gate_vector, "bias", when="bias"),
              ParamSpec("g_ih", "ln_ih_gain", _gate_vector, "ones"),
              ParamSpec("g_hh", "ln_hh_gain", _gate_vector, "ones"))
    kernels = {"lngru_forward": KernelSpec("lngru_forward<{T}>", cooperative=True),
               "lngru_backward": KernelSpec("lngru_backward<{T}>", cooperative=True),
               **regularise.KERNELS}
    reference = regularise.reference(lngru_forward=pointwise_forward,
                                     lngru_backward=pointwise_backward)
    step_inputs = ("valid", "zoneout_h", "recurrent_dropout")
    zoneout = ("h",)
    recurrent_dropout = True
    weight_drop = ("w_hh",)

    def fused_pointwise(self, launcher):
        return launcher.bind(lngru_forward=fused_forward, lngru_backward=fused_backward,
                             **regularise.FUSED)

    def input_bias(self, p):
        return None

    def saved_widths(self, dims, p):
        H = dims.hidden
        return {"hg": 3 * H, "h": H, "r": H, "z": H, "n": H, "ahn": H, "xhat": 3 * H,
                "hhat": 3 * H, "rstd": 2}

    def grad_widths(self, dims, p):
        H = dims.hidden
        return {"dxg": 3 * H, "dhg": 3 * H, "dax": 3 * H, "dah": 3 * H}

    @staticmethod
    def _ln(p):
        return LNGRUParams(p["g_ih"], p["g_hh"], p.get("b_x"), p.get("b_h"))

    def forward_step(self, ops, p, xg, state_prev, inputs, saved):
        (h_prev,) = state_prev
        ops.gemm(regularise.recurrent_input(ops, h_prev, inputs), p["w_hh"], saved["hg"],
                 transpose_b=True)
        out = tuple(saved[k] for k in ("h", "r", "z", "n", "ahn", "xhat", "hhat", "rstd"))
        ops.pw.lngru_forward(xg, saved["hg"], h_prev, self._ln(p), inputs["valid"], out=out,
                             zh=inputs.get("zoneout_h"))
        return (saved["h"],)

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        (dh,), (h_prev,), (dh_prev,) = dstate, state_prev, dstate_prev
        cache = LNGRUCache(*(saved[k] for k in ("r", "z", "n", "ahn", "xhat", "hhat", "rstd")))
        direct = ops.scratch("dh_direct", dh)
        ops.pw.lngru_backward(dh, h_prev, cache, self._ln(p), inputs["valid"],
                              out=(grads["dxg"], grads["dhg"], grads["dax"], grads["dah"],
                                   direct), zh=inputs.get("zoneout_h"))
        dh_prev += direct
        regularise.recurrent_backward(ops, grads["dhg"], p["w_hh"], dh_prev, inputs)

    def weight_grads(self, p, saved, grads, h_before, db):
        dax, dah = grads["dax"], grads["dah"]
        return {"w_hh": sum_outer(grads["dhg"], h_before), "b_x": dax.sum(axis=(0, 1)),
                "b_h": dah.sum(axis=(0, 1)),
                "g_ih": (dax * saved["xhat"]).sum(axis=(0, 1)),
                "g_hh": (dah * saved["hhat"]).sum(axis=(0, 1))}

    def gate_views(self, saved, dims):
        return {"r": saved["r"], "z": saved["z"]}


register(LNGRU())
