"""The recurrent regularisers' step mechanics, shared by the cells that declare them.

Masks reach a cell as per-step inputs (``inputs[name]``, a (B, W) slice of a (T, B, W)
array drawn by the module from its seeded generator; ``None`` when the regulariser is off):

- ``zoneout_h`` / ``zoneout_c`` (Krueger et al. 2016): d_t, the weight of the previous
  state, 0 or 1 per unit and step in training (1 with probability p), the constant p at
  evaluation (the expected value). With s̃_t the cell's new state,

      s_t = s̃_t + d_t ⊙ (s_{t−1} − s̃_t)          ∂s̃_t = (1 − d_t) ∂s_t,  ∂s_{t−1} += d_t ∂s_t

  Each cell applies it inside its own pointwise functions and kernels (``zh=``, ``zc=``).
- ``recurrent_dropout`` (Gal & Ghahramani 2016): m, one inverted mask (1/(1−p) or 0) per
  sequence, the same at every step, on h_{t−1} where it enters the recurrent GEMM:

      h_g = (m ⊙ h_{t−1}) W_hhᵀ          ∂h_{t−1} += m ⊙ (∂h_g W_hh)

  ``recurrent_input`` and ``recurrent_backward`` below, one elementwise kernel each
  (``kernels/regularise.cu``); the driver hands ``weight_grads`` the masked h_{t−1}.
- ``weight_drop`` (DropConnect on W_hh, Merity et al. 2017) masks a parameter once per
  forward pass; the stack applies it (``rnncore.stack``), nothing here.

With every mask ``None`` the steps run exactly the arithmetic they ran before.
"""

from types import SimpleNamespace

from ..backend import xp_of

ZONEOUT = {"h": "zoneout_h", "c": "zoneout_c"}


def mask_multiply(h, m, out=None):
    """out = h ⊙ m."""
    return xp_of(h).multiply(h, m, out=out)


def mask_accumulate(acc, g, m):
    """acc += g ⊙ m, in place."""
    acc += g * m
    return acc


def fused_mask_multiply(k, h, m, out=None):
    B, H = h.shape
    (out,) = k.outputs(None if out is None else (out,), B, H)
    k.launch("mask_multiply", B, H, *k.matrix("h", h, B, H), *k.matrix("mask", m, B, H), out)
    return out


def fused_mask_accumulate(k, acc, g, m):
    B, H = g.shape
    k.launch("mask_accumulate", B, H, *k.matrix("g", g, B, H), *k.matrix("mask", m, B, H),
             *k.strided_output(acc, B, H))
    return acc


REFERENCE = dict(mask_multiply=mask_multiply, mask_accumulate=mask_accumulate)
FUSED = dict(mask_multiply=fused_mask_multiply, mask_accumulate=fused_mask_accumulate)
KERNELS = {name: name + "<{T}>" for name in FUSED}


def zoneout_grad(d, carried, z):
    """Zoneout's backward split: (the part of ∂s_t reaching the new value s̃_t, the part
    reaching s_{t−1} directly added to ``carried``); s_t = s̃_t + z ⊙ (s_{t−1} − s̃_t)."""
    if z is None:
        return d, carried
    through = d * z
    return d - through, through if carried is None else carried + through


def reference(**functions):
    """A cell's reference namespace, with the regularisers' functions beside its own."""
    return SimpleNamespace(**functions, **REFERENCE)


def recurrent_input(ops, h_prev, inputs):
    """The recurrent GEMM's operand: m ⊙ h_{t−1} under recurrent dropout, else h_{t−1}."""
    m = inputs.get("recurrent_dropout")
    if m is None:
        return h_prev
    return ops.pw.mask_multiply(h_prev, m, out=ops.scratch("h_dropped", h_prev))


def recurrent_backward(ops, dg, w, dh_prev, inputs):
    """∂h_{t−1} += ∂h_g W (⊙ m under recurrent dropout)."""
    m = inputs.get("recurrent_dropout")
    if m is None:
        ops.gemm(dg, w, dh_prev, beta=1.0)
        return
    through = ops.scratch("dh_dropped", dh_prev)
    ops.gemm(dg, w, through)
    ops.pw.mask_accumulate(dh_prev, through, m)
