"""One Elman RNN time step, forward and backward.

    h_t = φ(x W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh),   φ = tanh or relu

Backward from the saved output: ∂a = ∂h ⊙ φ'(a), with tanh' = 1 − h², relu' = [h > 0].
"""


from ..backend import bias_sum, sum_outer, xp_of
from . import regularise
from .base import Cell, CpuLoop
from .masking import carry, split_grad, store
from .registry import register

NONLINEARITIES = ("tanh", "relu")


def pointwise_forward(xg, hg, h_prev, valid, nonlinearity, out=None, zh=None):
    """Returns (h_t, h_new): h_new = φ(xg + hg) is saved for the derivative.

    ``out`` = (h, h_new) preallocated (B, H) arrays, or None.
    """
    xp = xp_of(xg)
    h, h_new = out or (None, None)
    h_new = xp.add(xg, hg, out=h_new)
    if nonlinearity == "tanh":
        xp.tanh(h_new, out=h_new)
    else:
        xp.maximum(h_new, 0, out=h_new)
    h = h_new.copy() if h is None else store(h, h_new)
    if zh is not None:
        h += zh * (h_prev - h)
    return carry(valid, h, h_prev), h_new


def pointwise_backward(dh, h_new, valid, nonlinearity, out=None, zh=None):
    """Returns (∂a (B, H), the ∂h carried past a padded step or None).

    ``out`` = (da, dh_carried) preallocated arrays (dh_carried may be None), or None.
    """
    da_out, carried_out = out or (None, None)
    dh, dh_carried = split_grad(valid, dh)
    dh, dh_carried = regularise.zoneout_grad(dh, dh_carried, zh)
    da = dh * (1 - h_new * h_new) if nonlinearity == "tanh" else dh * (h_new > 0)
    if dh_carried is not None:
        dh_carried = store(carried_out, dh_carried)
    return store(da_out, da), dh_carried


def fused_forward(k, xg, hg, h_prev, valid, nonlinearity, out=None, zh=None):
    B, H = h_prev.shape
    h, h_new = k.outputs(out, B, H, H)
    k.launch(_kernel(nonlinearity, "forward"), B, H, *k.matrix("xg", xg, B, H),
             *k.matrix("hg", hg, B, H), *k.matrix("h_prev", h_prev, B, H),
             k.valid(valid, B), *k.optional("zh", zh, B, H), h, h_new)
    return h, h_new


def fused_backward(k, dh, h_new, valid, nonlinearity, out=None, zh=None):
    B, H = h_new.shape
    da, dh_carried = k.outputs(out, B, H, None if valid is None and zh is None else H)
    k.launch(_kernel(nonlinearity, "backward"), B, H, *k.matrix("dh", dh, B, H),
             k.dense("h_new", h_new, B, H), k.valid(valid, B), *k.optional("zh", zh, B, H),
             da, dh_carried)
    return da, dh_carried


def _zoneout(inputs):
    """{"zh": mask} when zoneout is on, else {} (a replaced ``reference`` without ``zh``,
    as the vanishing experiment's linear cell, keeps working unregularised)."""
    zh = inputs.get("zoneout_h")
    return {} if zh is None else {"zh": zh}


def _kernel(nonlinearity, step):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return f"rnn_{nonlinearity}_{step}"


class RNN(Cell):
    """The Elman recurrence around the pointwise nonlinearity φ.

    ``reference`` may be replaced by another pointwise namespace with the same two
    functions (the vanishing-gradient experiment runs a linear RNN, φ(a) = a, this way).
    """

    family = "RNN"
    state = ("h",)
    gates = ("a",)
    kernels = {**{f"rnn_{act}_{step}": f"rnn_{step}<{{T}}, {str(act == 'relu').lower()}>"
                  for act in NONLINEARITIES for step in ("forward", "backward")},
               **regularise.KERNELS}
    step_inputs = ("valid", "zoneout_h", "recurrent_dropout")
    zoneout = ("h",)
    recurrent_dropout = True
    weight_drop = ("w_hh",)

    def __init__(self, nonlinearity="tanh", reference=None):
        self.nonlinearity = nonlinearity
        self.name = f"rnn_{nonlinearity}"
        self.torch_options = {"nonlinearity": nonlinearity}
        self.reference = reference or regularise.reference(rnn_forward=pointwise_forward,
                                                           rnn_backward=pointwise_backward)

    def fused_pointwise(self, launcher):
        return launcher.bind(rnn_forward=fused_forward, rnn_backward=fused_backward,
                             **regularise.FUSED)

    def cpu_loop_for(self, dims):
        if self.nonlinearity not in NONLINEARITIES:
            return None
        return CpuLoop(f"rnn_{self.nonlinearity}", saved=(("h", 1), ("h_new", 1)),
                       grads=(("dxg", 1),))

    def input_bias(self, p):
        """b_ih + b_hh: both enter the activation additively (hoisted into x W_ihᵀ)."""
        return bias_sum(p.get("b_ih"), p.get("b_hh"))

    def saved_widths(self, dims, p):
        H = dims.hidden
        return {"hg": H, "h": H, "h_new": H}

    def grad_widths(self, dims, p):
        return {"dxg": dims.hidden}

    def forward_step(self, ops, p, xg, state_prev, inputs, saved):
        (h_prev,) = state_prev
        ops.gemm(regularise.recurrent_input(ops, h_prev, inputs), p["w_hh"], saved["hg"],
                 transpose_b=True)
        ops.pw.rnn_forward(xg, saved["hg"], h_prev, inputs["valid"], self.nonlinearity,
                           out=(saved["h"], saved["h_new"]), **_zoneout(inputs))
        return (saved["h"],)

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        (dh,), (dh_prev,), valid = dstate, dstate_prev, inputs["valid"]
        zoneout = _zoneout(inputs)
        direct = valid is not None or zoneout
        carried = ops.scratch("dh_carried", dh) if direct else None
        _, carried = ops.pw.rnn_backward(dh, saved["h_new"], valid, self.nonlinearity,
                                         out=(grads["dxg"], carried), **zoneout)
        if carried is not None:
            dh_prev += carried
        regularise.recurrent_backward(ops, grads["dxg"], p["w_hh"], dh_prev, inputs)

    def weight_grads(self, p, saved, grads, h_before, db):
        """∂W_hh = Σ_t ∂a_tᵀ h_{t−1}, ∂b_hh = Σ_t ∂a_t (= ∂b_ih)."""
        return {"w_hh": sum_outer(grads["dxg"], h_before), "b_hh": db}


register(RNN("tanh"))
register(RNN("relu"))
