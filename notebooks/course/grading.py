"""The checks behind the exercises of notebook 8.

Each ``check_*`` takes the learner's function, runs it at a generic random point (random
states, several steps, float64) and compares what it returns with

* central finite differences of the forward pass (``rnncore.gradcheck.central_difference``,
  element by element: the independent check, which needs no reference solution), and
* rnncore's own hand-written backward (to tell *how* an answer is wrong),

gate block by gate block for a step, step by step for a layer, layer by layer for a
stack, and names the first block, step or layer that is wrong. A check returns a
:class:`Verdict` and prints it; it never raises for a wrong answer in student mode, so a
notebook runs to the end and shows every message. With ``RNNCORE_COURSE_SOLUTIONS=1`` (the
tests) the reference solutions of ``course.solutions`` stand in for the learner's functions
and a failing check raises ``AssertionError``.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field

import numpy as np

import rnncore
from rnncore.cells import gru, lstm
from rnncore.gradcheck import GradcheckReport, central_difference

SOLUTIONS_ENV = "RNNCORE_COURSE_SOLUTIONS"
TOLERANCE = 1e-6          # relative error, float64, against central differences
LSTM_GATES = ("i", "f", "g", "o")
LSTM_GATE_NAMES = {"i": "input gate i", "f": "forget gate f", "g": "cell candidate g",
                   "o": "output gate o"}
GRU_GATES = ("r", "u", "n")
GRU_GATE_NAMES = {"r": "reset gate r", "u": "update gate u", "n": "candidate n"}


def solutions_mode() -> bool:
    return os.environ.get(SOLUTIONS_ENV, "") not in ("", "0")


def exercise(fn):
    """Mark a learner's function. In solutions mode it is replaced by the reference
    solution of the same name (``course.solutions``); otherwise it is returned as it is."""
    if not solutions_mode():
        return fn
    from . import solutions

    return getattr(solutions, fn.__name__)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0.0 else float(np.linalg.norm(a - b) / scale)


def numeric_gradient(loss, array, eps=1e-6):
    """∂loss/∂array by central differences, every element (rnncore.gradcheck's)."""
    grad = np.empty(array.shape)
    for index in np.ndindex(array.shape):
        grad[index] = central_difference(loss, array, index, eps)
    return grad


@dataclass
class Verdict:
    """The outcome of one check: passed or not, the first wrong part, and a report."""

    exercise: str
    passed: bool
    first_wrong: str | None = None
    message: str = ""
    rows: list = field(default_factory=list)  # (part, error vs numeric, error vs rnncore)
    report: GradcheckReport = field(default_factory=GradcheckReport)

    def __str__(self) -> str:
        head = f"{self.exercise}: " + ("✓ passed" if self.passed else "✗ not yet")
        lines = [head]
        with_ref = any(ref is not None for _, _, ref in self.rows)
        if self.rows:
            lines.append(f"  {'part':<40}{'rel. error vs finite diff.':>27}"
                         + (f"{'vs rnncore':>12}" if with_ref else ""))
            for part, numeric, ref in self.rows:
                mark = "✓" if numeric < TOLERANCE else "✗"
                versus = f"{ref:>12.1e}" if with_ref else ""
                lines.append(f"  {part:<40}{numeric:>27.1e}{versus}  {mark}")
        if self.message:
            lines += ["  " + line for line in self.message.splitlines()]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython shows the same text as print
        p.text(str(self))


def _finish(verdict: Verdict, show: bool) -> Verdict:
    if show:
        print(verdict)
    if solutions_mode() and not verdict.passed:
        raise AssertionError(f"a reference solution failed its check:\n{verdict}")
    return verdict


def _call(name, fn, *args):
    """(result, None) or (None, a Verdict saying what went wrong in the call)."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, Verdict(name, False, "not written",
                             "Not written yet: replace `raise NotImplementedError` with your code.")
    except Exception as error:  # the learner's code: show the error, keep the notebook going
        where = traceback.extract_tb(error.__traceback__)[-1]
        return None, Verdict(name, False, "raised",
                             f"Your function raised {type(error).__name__}: {error}\n"
                             f"(line {where.lineno}: {where.line})")


def _shape_problem(name, what, got, want):
    got_shape = getattr(got, "shape", None)
    if got_shape != want:
        return Verdict(name, False, what,
                       f"{what} should have shape {want}, got {got_shape} "
                       f"({type(got).__name__}).")
    return None


def _blocks(array, names):
    H = array.shape[-1] // len(names)
    return {name: array[..., k * H:(k + 1) * H] for k, name in enumerate(names)}


# ------------------------------------------------------------------ exercise 1: LSTM step
LSTM_HINTS = {
    "i": "∂z_i = ∂c_t ⊙ g ⊙ i(1 − i), with ∂c_t the TOTAL gradient at c_t.",
    "f": "∂z_f = ∂c_t ⊙ c_{t−1} ⊙ f(1 − f): check the sign and the factor c_{t−1}.",
    "g": "∂z_g = ∂c_t ⊙ i ⊙ (1 − g²): g is a tanh, not a sigmoid.",
    "o": "∂z_o = ∂h_t ⊙ tanh(c_t) ⊙ o(1 − o): the output gate sees ∂h_t only.",
}


def _lstm_point(seed=0, B=3, H=4):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, 4 * H))
    c_prev = rng.standard_normal((B, H))
    dh, dc = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    return z, c_prev, dh, dc


def _lstm_loss(z, c_prev, dh, dc):
    """L = Σ ∂h ⊙ h_t + Σ ∂c ⊙ c_t, so ∂L/∂h_t = ∂h and ∂L/∂c_t = ∂c."""
    def loss():
        h, c, _ = lstm.pointwise_forward(z, np.zeros_like(z), c_prev, c_prev, None)
        return float((dh * h).sum() + (dc * c).sum())
    return loss


def check_lstm_step_backward(fn, show=True, seed=0) -> Verdict:
    """Exercise 1: ``fn(dh, dc, cache) -> (∂L/∂z (B, 4H), ∂L/∂c_{t−1} (B, H))``."""
    name = "Exercise 1 · LSTM step backward"
    z, c_prev, dh, dc = _lstm_point(seed)
    B, H = c_prev.shape
    _, _, cache = lstm.pointwise_forward(z, np.zeros_like(z), c_prev, c_prev, None)
    cache = lstm.LSTMCache(cache.gates.copy(), c_prev.copy(), cache.tanh_c.copy())
    result, failed = _call(name, fn, dh.copy(), dc.copy(), cache)
    if failed:
        return _finish(failed, show)
    if not isinstance(result, tuple) or len(result) != 2:
        return _finish(Verdict(name, False, "return", "Return a pair (dz, dc_prev)."), show)
    dz, dc_prev = result
    problem = (_shape_problem(name, "dz", dz, (B, 4 * H))
               or _shape_problem(name, "dc_prev", dc_prev, (B, H)))
    if problem:
        return _finish(problem, show)

    loss = _lstm_loss(z, c_prev, dh, dc)
    numeric_dz = numeric_gradient(loss, z)
    numeric_dc = numeric_gradient(loss, c_prev)
    ref_dz, _, ref_dc = lstm.pointwise_backward(dh, dc, cache, None)
    verdict = Verdict(name, True)
    yours, numeric, ref = (_blocks(a, LSTM_GATES) for a in (dz, numeric_dz, ref_dz))
    wrong = []
    for gate in LSTM_GATES:
        part = f"∂z_{gate} ({LSTM_GATE_NAMES[gate]})"
        err = relative_error(yours[gate], numeric[gate])
        verdict.report.errors[part], verdict.report.methods[part] = err, "elementwise"
        verdict.rows.append((part, err, relative_error(yours[gate], ref[gate])))
        if err >= TOLERANCE:
            wrong.append(gate)
    err_c = relative_error(dc_prev, numeric_dc)
    verdict.report.errors["∂c_{t−1}"], verdict.report.methods["∂c_{t−1}"] = err_c, "elementwise"
    verdict.rows.append(("∂c_{t−1}", err_c, relative_error(dc_prev, ref_dc)))
    if wrong:
        first = wrong[0]
        verdict.passed, verdict.first_wrong = False, first
        text = (f"First wrong gate: {LSTM_GATE_NAMES[first]} (columns {LSTM_GATES.index(first)}H"
                f" to {LSTM_GATES.index(first) + 1}H of dz). {LSTM_HINTS[first]}")
        if set(wrong) == {"i", "f", "g"}:
            text += ("\ni, f and g are wrong and o is right: did you add the path through h_t,"
                     " ∂h ⊙ o ⊙ (1 − tanh² c_t), to ∂c before using it?")
        verdict.message = text
    elif err_c >= TOLERANCE:
        verdict.passed, verdict.first_wrong = False, "c_prev"
        verdict.message = ("Every gate is right but ∂c_{t−1} is wrong: c_{t−1} reaches c_t "
                           "through f, so ∂c_{t−1} = (total ∂c_t) ⊙ f.")
    return _finish(verdict, show)


# ------------------------------------------------------------------- exercise 2: GRU step
GRU_HINTS = {
    "r": "∂a_r = (∂pre_n ⊙ a^h_n) ⊙ r(1 − r), with ∂pre_n = ∂h ⊙ (1 − u) ⊙ (1 − n²).",
    "u": "∂a_u = ∂h ⊙ (h_{t−1} − n) ⊙ u(1 − u): h_t = (1 − u) ⊙ n + u ⊙ h_{t−1}.",
    "n": "∂a^x_n = ∂h ⊙ (1 − u) ⊙ (1 − n²); in ∂a^h the n block is that times r.",
}


def _gru_point(seed=0, B=3, H=4):
    rng = np.random.default_rng(seed + 100)
    a_x = rng.standard_normal((B, 3 * H))
    h_prev = rng.standard_normal((B, H))
    W_hh = 0.5 * rng.standard_normal((3 * H, H))
    b_hh = 0.5 * rng.standard_normal(3 * H)
    dh = rng.standard_normal((B, H))
    return a_x, h_prev, W_hh, b_hh, dh


def check_gru_step_backward(fn, show=True, seed=0) -> Verdict:
    """Exercise 2: ``fn(dh, h_prev, cache, W_hh) -> (∂a^x (B, 3H), ∂a^h (B, 3H),
    ∂h_{t−1} (B, H))`` with cache = (r, u, n, a^h_n)."""
    name = "Exercise 2 · GRU step backward"
    a_x, h_prev, W_hh, b_hh, dh = _gru_point(seed)
    B, H = h_prev.shape
    a_h = h_prev @ W_hh.T + b_hh
    _, cache = gru.pointwise_forward(a_x, a_h, h_prev, None)
    cache = tuple(np.array(c) for c in cache)
    result, failed = _call(name, fn, dh.copy(), h_prev.copy(), cache, W_hh.copy())
    if failed:
        return _finish(failed, show)
    if not isinstance(result, tuple) or len(result) != 3:
        return _finish(Verdict(name, False, "return",
                               "Return a triple (da_x, da_h, dh_prev)."), show)
    da_x, da_h, dh_prev = result
    problem = (_shape_problem(name, "da_x", da_x, (B, 3 * H))
               or _shape_problem(name, "da_h", da_h, (B, 3 * H))
               or _shape_problem(name, "dh_prev", dh_prev, (B, H)))
    if problem:
        return _finish(problem, show)

    a_h_in = a_h.copy()

    def loss_given(a_h_fixed=None):
        def loss():
            ah = h_prev @ W_hh.T + b_hh if a_h_fixed is None else a_h_fixed
            h, _ = gru.pointwise_forward(a_x, ah, h_prev, None)
            return float((dh * h).sum())
        return loss

    numeric_x = numeric_gradient(loss_given(a_h_in), a_x)
    numeric_h = numeric_gradient(loss_given(a_h_in), a_h_in)
    numeric_prev = numeric_gradient(loss_given(None), h_prev)
    ref_x, ref_h, through_u = gru.pointwise_backward(dh, h_prev, gru.GRUCache(*cache), None)
    ref_prev = through_u + ref_h @ W_hh
    verdict = Verdict(name, True)
    wrong = []
    for label, yours, numeric, ref in (("a^x", da_x, numeric_x, ref_x),
                                       ("a^h", da_h, numeric_h, ref_h)):
        yb, nb, rb = (_blocks(a, GRU_GATES) for a in (yours, numeric, ref))
        for gate in GRU_GATES:
            part = f"∂{label}_{gate} ({GRU_GATE_NAMES[gate]})"
            err = relative_error(yb[gate], nb[gate])
            verdict.report.errors[part], verdict.report.methods[part] = err, "elementwise"
            verdict.rows.append((part, err, relative_error(yb[gate], rb[gate])))
            if err >= TOLERANCE:
                wrong.append((label, gate))
    err_prev = relative_error(dh_prev, numeric_prev)
    verdict.report.errors["∂h_{t−1}"], verdict.report.methods["∂h_{t−1}"] = err_prev, "elementwise"
    verdict.rows.append(("∂h_{t−1}", err_prev, relative_error(dh_prev, ref_prev)))
    if wrong:
        label, gate = wrong[0]
        verdict.passed, verdict.first_wrong = False, gate
        verdict.message = (f"First wrong block: the {GRU_GATE_NAMES[gate]} block of ∂{label}. "
                           f"{GRU_HINTS[gate]}")
    elif err_prev >= TOLERANCE:
        verdict.passed, verdict.first_wrong = False, "h_prev"
        verdict.message = ("Every gate block is right but ∂h_{t−1} is wrong: it has two "
                           "terms, ∂h ⊙ u (the direct path) and ∂a^h W_hh (through the "
                           "recurrent product).")
    return _finish(verdict, show)


# ------------------------------------------------------------- exercise 3: one layer's BPTT
def lstm_layer_forward(xg, W_hh, b_hh, h0, c0):
    """One LSTM layer from its hoisted input products xg (T, B, 4H): (outputs, (h_T, c_T),
    caches), caches[t] = (the step's LSTMCache, h_{t−1})."""
    h, c, outs, caches = h0, c0, [], []
    for t in range(len(xg)):
        h_prev = h
        h, c, cache = lstm.pointwise_forward(xg[t], h @ W_hh.T + b_hh, h, c, None)
        outs.append(h)
        caches.append((lstm.LSTMCache(cache.gates.copy(), cache.c_prev, cache.tanh_c), h_prev))
    return np.stack(outs), (h, c), caches


def reference_step_backward(dh, dc, cache):
    """rnncore's LSTM step backward with the signature of exercise 1."""
    dz, _, dc_prev = lstm.pointwise_backward(dh, dc, cache, None)
    return dz, dc_prev


def _layer_point(seed=0, T=5, B=2, H=3):
    rng = np.random.default_rng(seed + 200)
    xg = rng.standard_normal((T, B, 4 * H))
    W_hh = 0.6 * rng.standard_normal((4 * H, H))
    b_hh = 0.5 * rng.standard_normal(4 * H)
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w_out = rng.standard_normal((T, B, H))
    w_h, w_c = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    return xg, W_hh, b_hh, h0, c0, w_out, w_h, w_c


def check_lstm_layer_backward(fn, show=True, seed=0) -> Verdict:
    """Exercise 3: ``fn(dout, (dh_T, dc_T), W_hh, caches, step_backward) ->
    (∂z (T, B, 4H), ∂W_hh, (∂h_0, ∂c_0))``."""
    name = "Exercise 3 · BPTT through one layer"
    xg, W_hh, b_hh, h0, c0, w_out, w_h, w_c = _layer_point(seed)
    T, B, G = xg.shape
    _, _, caches = lstm_layer_forward(xg, W_hh, b_hh, h0, c0)
    result, failed = _call(name, fn, w_out.copy(), (w_h.copy(), w_c.copy()), W_hh.copy(),
                           caches, reference_step_backward)
    if failed:
        return _finish(failed, show)
    if not isinstance(result, tuple) or len(result) != 3 or len(result[2]) != 2:
        return _finish(Verdict(name, False, "return",
                               "Return (dz, dW_hh, (dh0, dc0))."), show)
    dz, dW_hh, (dh0, dc0) = result
    H = G // 4
    problem = (_shape_problem(name, "dz", dz, (T, B, G))
               or _shape_problem(name, "dW_hh", dW_hh, (G, H)))
    if problem:
        return _finish(problem, show)

    def loss():
        outs, (h, c), _ = lstm_layer_forward(xg, W_hh, b_hh, h0, c0)
        return float((w_out * outs).sum() + (w_h * h).sum() + (w_c * c).sum())

    numeric_z = numeric_gradient(loss, xg)  # z_t = xg_t + (recurrent part): ∂L/∂xg_t = ∂L/∂z_t
    verdict = Verdict(name, True)
    wrong_step = None
    for t in reversed(range(T)):
        part = f"∂z_t at step t={t}"
        err = relative_error(dz[t], numeric_z[t])
        verdict.report.errors[part], verdict.report.methods[part] = err, "elementwise"
        verdict.rows.append((part, err, None))
        if err >= TOLERANCE and wrong_step is None:
            wrong_step = t
    others = {"∂W_hh": (dW_hh, W_hh), "∂h_0": (dh0, h0), "∂c_0": (dc0, c0)}
    wrong_other = None
    for part, (yours, theta) in others.items():
        numeric = numeric_gradient(loss, theta)
        err = relative_error(yours, numeric)
        verdict.report.errors[part], verdict.report.methods[part] = err, "elementwise"
        verdict.rows.append((part, err, None))
        if err >= TOLERANCE and wrong_other is None:
            wrong_other = part
    if wrong_step is not None:
        verdict.passed, verdict.first_wrong = False, f"t={wrong_step}"
        text = (f"Walking back from t={T - 1}, step t={wrong_step} is the first wrong one"
                + (f" (steps {T - 1}..{wrong_step + 1} are right)." if wrong_step < T - 1
                   else "."))
        if wrong_step == T - 1:
            text += ("\nThe last step is wrong already: does ∂h start from ∂L/∂h_T and ∂c "
                     "from ∂L/∂c_T, and is dout[T−1] added to ∂h?")
        else:
            text += (f"\nWhat step {wrong_step} gets from step {wrong_step + 1} is wrong: "
                     "∂h_{t−1} = ∂z_t W_hh plus dout[t−1], and ∂c_{t−1} from the step.")
        shifted = [s for s in range(T - 1) if relative_error(dz[s], numeric_z[s + 1]) < 1e-6]
        if shifted:
            text += "\nSome of your ∂z_t equal the true ∂z_{t+1}: an index off by one?"
        verdict.message = text
    elif wrong_other is not None:
        verdict.passed, verdict.first_wrong = False, wrong_other
        hints = {"∂W_hh": "∂W_hh = Σ_t ∂z_tᵀ h_{t−1}: use each step's own h_{t−1}.",
                 "∂h_0": "∂h_0 is ∂z_0 W_hh, what step 0 sends back.",
                 "∂c_0": "∂c_0 is what the step backward at t=0 returns as ∂c_{t−1}."}
        verdict.message = f"Every step's ∂z is right but {wrong_other} is wrong. " + \
            hints[wrong_other]
    return _finish(verdict, show)


# ------------------------------------------------------ exercise 4: depth, with residuals
class Layer:
    """One LSTM layer of a stack (a 1-layer rnncore.LSTM), as exercise 4 sees it.

    ``backward(dy, dstate_n)`` takes ∂L/∂(this layer's output sequence) (T, B, H) and
    ∂L/∂(its final state) (dh_n, dc_n), each (B, H); it adds the layer's parameter
    gradients into ``module.grads`` and returns (∂L/∂(its input), (∂h_0, ∂c_0)).
    """

    def __init__(self, module):
        self.module = module
        self.calls = []

    def forward(self, u, state0):
        out, (h, c) = self.module(u, (state0[0][None], state0[1][None]))
        return out, (h[0], c[0])

    def backward(self, dy, dstate_n):
        self.calls.append(np.array(dy, copy=True))
        du, (dh0, dc0) = self.module.backward(dy, (dstate_n[0][None], dstate_n[1][None]))
        return du, (dh0[0], dc0[0])


def _stack_point(seed=0, L=3, T=4, B=2, H=3):
    rng = np.random.default_rng(seed + 300)
    modules = [rnncore.LSTM(H, H, dtype="float64", seed=seed + k) for k in range(L)]
    x = rng.standard_normal((T, B, H))
    states0 = [(0.5 * rng.standard_normal((B, H)), 0.5 * rng.standard_normal((B, H)))
               for _ in range(L)]
    w_out = rng.standard_normal((T, B, H))
    w_final = [(rng.standard_normal((B, H)), rng.standard_normal((B, H))) for _ in range(L)]
    return modules, x, states0, w_out, w_final


def stack_forward(layers, x, states0, residual, start=0):
    """(out, final states of layers start..L−1) from the input u_start = x of layer start."""
    u, finals = x, []
    for layer, state0 in zip(layers[start:], states0[start:]):
        y, final = layer.forward(u, state0)
        u = y + u if residual else y
        finals.append(final)
    return u, finals


def check_stack_backward(fn, show=True, seed=0) -> Verdict:
    """Exercise 4: ``fn(dout, dstates_n, layers, residual) -> (∂L/∂x, [∂L/∂state_0 per
    layer])``, checked without and with residual connections."""
    name = "Exercise 4 · backprop through depth"
    verdict = Verdict(name, True)
    for residual in (False, True):
        modules, x, states0, w_out, w_final = _stack_point(seed)
        L = len(modules)
        layers = [Layer(m) for m in modules]

        def loss_from(k, u, layers=layers, states0=states0, w_out=w_out, w_final=w_final,
                      residual=residual):
            def loss():
                out, finals = stack_forward(layers, u, states0, residual, start=k)
                total = float((w_out * out).sum())
                for (h, c), (wh, wc) in zip(finals, w_final[k:]):
                    total += float((wh * h).sum() + (wc * c).sum())
                return total
            return loss

        # the inputs u_k of every layer (u_0 = x), from one forward pass
        us, u = [x], x
        for layer, state0 in zip(layers, states0):
            y, _ = layer.forward(u, state0)
            u = y + u if residual else y
            us.append(u)
        for m in modules:
            m.zero_grad()
        layers_fresh = [Layer(m) for m in modules]
        stack_forward(layers_fresh, x, states0, residual)  # the caches backward reads
        result, failed = _call(name, fn, w_out.copy(), [tuple(w) for w in w_final],
                               layers_fresh, residual)
        if failed:
            return _finish(failed, show)
        if not isinstance(result, tuple) or len(result) != 2:
            return _finish(Verdict(name, False, "return",
                                   "Return (dx, dstates_0), a list of (dh0, dc0) per layer."),
                           show)
        dx, _ = result
        tag = "residual" if residual else "plain"
        # what each layer was handed must be ∂L/∂u_{k+1}; walk down from the top
        for k in reversed(range(L)):
            part = f"{tag}: ∂L/∂u_{k + 1} handed to layer {k}"
            calls = layers_fresh[k].calls
            if len(calls) != 1:
                verdict.passed, verdict.first_wrong = False, f"layer {k}"
                verdict.message = (f"({tag} stack) layer {k}'s backward was called "
                                   f"{len(calls)} times; call it exactly once (it adds its "
                                   "parameter gradients on every call).")
                return _finish(verdict, show)
            u_next = np.array(us[k + 1], copy=True)
            numeric = numeric_gradient(loss_from(k + 1, u_next), u_next)
            err = relative_error(calls[0], numeric)
            verdict.report.errors[part], verdict.report.methods[part] = err, "elementwise"
            verdict.rows.append((part, err, None))
            if err >= TOLERANCE and verdict.passed:
                verdict.passed, verdict.first_wrong = False, f"layer {k}"
                text = (f"({tag} stack) Going down from the top, the gradient you handed to "
                        f"layer {k} (∂L/∂u_{k + 1}, its output's gradient) is the first wrong "
                        "one.")
                if k == L - 1:
                    text += " The top layer's output is the stack's output: hand it dout."
                elif residual:
                    text += (f" With residuals u_{k + 2} = layer_{k + 1}(u_{k + 1}) + u_{k + 1},"
                             f" so ∂L/∂u_{k + 1} = (what layer {k + 1} returns) + "
                             f"∂L/∂u_{k + 2}: did you add the identity path?")
                else:
                    text += (f" Without residuals it is exactly what layer {k + 1}'s backward "
                             "returned: is a residual term added when `residual` is False?")
                verdict.message = text
        x_copy = np.array(x, copy=True)
        numeric_x = numeric_gradient(loss_from(0, x_copy), x_copy)
        err = relative_error(dx, numeric_x)
        part = f"{tag}: ∂L/∂x"
        verdict.report.errors[part], verdict.report.methods[part] = err, "elementwise"
        verdict.rows.append((part, err, None))
        if err >= TOLERANCE and verdict.passed:
            verdict.passed, verdict.first_wrong = False, "input"
            verdict.message = (f"({tag} stack) every layer got the right gradient, but ∂L/∂x is "
                               "wrong: it is what layer 0 returns"
                               + (" plus the residual path." if residual else "."))
    return _finish(verdict, show)
