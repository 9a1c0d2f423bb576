"""What a cell declares, and the contract between a cell and the time-loop driver.

A cell is one object that *declares* everything the engine needs to know about it:

- ``state``: the names of its state tensors, e.g. ("h", "c") for the LSTM, ("h",) for the
  GRU; ``state[0]`` is always the output h. ``state_widths(dims)`` gives their widths.
- ``gates``: its gate layout along the G·H axis of the pre-activations.
- ``params``: its parameters (torch name, shape rule, initialiser rule), as ``ParamSpec``s.
- ``step_inputs``: the per-step inputs it takes beyond the gate pre-activations
  (``"valid"``, the lengths mask; the regularisers' masks ``"zoneout_h"``,
  ``"zoneout_c"``, ``"recurrent_dropout"`` where it takes them).
- ``zoneout`` / ``recurrent_dropout`` / ``weight_drop``: which recurrent regularisers it
  takes (``regularisers``): the states a zoneout rate applies to, whether its recurrent
  GEMM takes a dropout mask on h_{t−1}, the recurrent weights DropConnect may mask.
- ``saved_widths`` / ``grad_widths``: the per-step buffers its forward saves for backward
  and its backward writes, as widths of (T, B, width) arrays. The driver allocates them
  once per layer direction, so nothing is allocated per step.
- ``forward_step`` / ``backward_step``: one time step, written against a pointwise
  namespace (the NumPy reference or the fused kernels) and the ``gemm`` it is handed;
  pure functions of their arguments that write into the step's slices of the buffers.
- ``reference`` / ``fused_pointwise``: the pointwise functions and their CUDA twins;
  ``kernels``: the kernel names and C++ template expressions compiled from kernels/*.cu.
- ``gate_views``: its sigmoid gates, for the instruments (saturation).

The driver (``rnncore.drivers``) owns the time loop and the buffers; the stack and the
modules see only these declarations, so nothing outside ``cells/`` branches on the kind
of cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple


class Dims(NamedTuple):
    """The sizes a cell's shapes are written in."""

    input: int  # I: the width of the layer's input
    hidden: int  # H
    proj: int = 0  # P: LSTMP's projection size, 0 when none

    @property
    def out(self) -> int:
        """The width of h (the projection's when there is one)."""
        return self.proj or self.hidden


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of one layer direction.

    ``key`` is the short name the cell's math uses (``w_ih``); ``torch`` the torch.nn name
    stem (``weight_ih``; the layer suffix ``_l0``/``_l0_reverse`` is added by the stack);
    ``shape`` maps (dims, num_gates) to the shape; ``init`` names the initialiser rule
    (``rnncore.init.RULES``); ``when`` is "always", "bias" (only with bias=True) or
    "proj" (only with proj_size > 0).
    """

    key: str
    torch: str
    shape: Callable[[Dims, int], tuple]
    init: str
    when: str = "always"

    def present(self, bias: bool, proj: int) -> bool:
        return {"always": True, "bias": bias, "proj": proj > 0}[self.when]


def _input_weight(d, G):
    return (G * d.hidden, d.input)


def _recurrent_weight(d, G):
    return (G * d.hidden, d.out)


def _gate_vector(d, G):
    return (G * d.hidden,)


# The parameters every torch.nn recurrent layer has, in torch.nn's order.
W_IH = ParamSpec("w_ih", "weight_ih", _input_weight, "input_weight")
W_HH = ParamSpec("w_hh", "weight_hh", _recurrent_weight, "recurrent_weight")
B_IH = ParamSpec("b_ih", "bias_ih", _gate_vector, "bias", when="bias")
B_HH = ParamSpec("b_hh", "bias_hh", _gate_vector, "bias", when="bias")
TORCH_PARAMS = (W_IH, W_HH, B_IH, B_HH)


class KernelSpec(NamedTuple):
    """A kernel a cell declares: its C++ template expression ("{T}" the scalar type) and
    whether its threads cooperate (barriers, shared memory: ``kernels/cooperate.cuh``)."""

    template: str
    cooperative: bool = False

    @classmethod
    def of(cls, kernel) -> KernelSpec:
        return kernel if isinstance(kernel, cls) else cls(kernel)


class CpuLoop(NamedTuple):
    """A cell's time loop compiled for the CPU (``kernels/<name>_cpu.cpp``), as the compiled
    CPU driver runs it: the exported names ``<name>_cpu_forward_f32`` …, the feature-major
    (width·H, T, B) buffers it saves and writes (widths in units of H, in the order of the
    C++ ``saved[]`` / ``grads[]``), and which biases go where."""

    name: str
    saved: tuple  # ((name, width in H), …); must hold the cell's state names
    grads: tuple  # (("dxg", G), …) and ("dhg", G) when ∂h_g differs from ∂x_g
    recurrent_bias: bool = False  # b_hh stays with the recurrent product (GRU), not hoisted
    history: bool = False  # keeps the second state's gradient per step for the recorder
    # takes W_ih x_t into the step's product at every batch but 1 (Args::x), so the driver
    # hoists no input projection then
    joins_input: bool = False


class Cell:
    """Base of every cell declaration; subclasses fill in the attributes and methods."""

    name: str = ""  # the registry key: CLI choice, bench row, gradcheck case
    family: str = ""  # the torch.nn class it is compatible with ("LSTM", "GRU", "RNN", "")
    torch_options: dict = {}  # what that torch.nn class needs to compute the same cell
    state: tuple = ("h",)
    gates: tuple = ()
    params: tuple = TORCH_PARAMS
    step_inputs: tuple = ("valid",)
    forget_gate: int | None = None  # gate index that ``forget_bias`` shifts, if any
    projection: bool = False  # accepts proj_size (LSTMP)
    kernels: dict = {}  # kernel name stem → C++ template ("{T}" the scalar type) or KernelSpec
    cpu_loop: CpuLoop | None = None  # its compiled CPU time loop, if it has one
    # the recurrent regularisers it takes (``rnncore.options`` refuses the others):
    zoneout: tuple = ()  # states a zoneout rate applies to: "h" → zoneout_h, "c" → zoneout_c
    zoneout_with_projection: tuple = ()  # the same, with proj_size > 0 (LSTMP)
    recurrent_dropout: bool = False  # a dropout mask on h_{t−1} where it enters the GEMM
    weight_drop: tuple = ()  # parameter keys DropConnect masks (once per forward pass)

    def regularisers(self, proj: int = 0) -> tuple:
        """The regulariser options this cell takes (with a projection of size ``proj``)."""
        states = self.zoneout_with_projection if proj else self.zoneout
        taken = tuple(f"zoneout_{s}" for s in states)
        if self.recurrent_dropout:
            taken += ("recurrent_dropout",)
        if self.weight_drop:
            taken += ("weight_drop",)
        return taken

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    def state_widths(self, dims: Dims) -> tuple:
        """The width of each state tensor; h first."""
        return (dims.out,) + (dims.hidden,) * (len(self.state) - 1)

    def param_shapes(self, dims: Dims, bias: bool) -> dict:
        """{short key: shape} of one layer direction's parameters, in declaration order."""
        return {p.key: p.shape(dims, self.num_gates) for p in self.params
                if p.present(bias, dims.proj)}

    # ------------------------------------------------------------------ the step contract
    def input_bias(self, p):
        """The bias added to the hoisted input projection x W_ihᵀ (None for none)."""
        raise NotImplementedError

    def saved_widths(self, dims: Dims, p) -> dict:
        """{name: width} of the (T, B, width) buffers the forward saves; must hold "h"."""
        raise NotImplementedError

    def grad_widths(self, dims: Dims, p) -> dict:
        """{name: width} of the (T, B, width) buffers the backward writes; must hold "dxg",
        the gradient of the hoisted input projection."""
        raise NotImplementedError

    def prefill(self, p) -> dict:
        """{saved name: value} for buffers that start as a broadcast value (a bias that
        a recurrent GEMM then accumulates into; None: zeros); the rest start empty."""
        return {}

    def forward_step(self, ops, p, xg, state_prev, inputs, saved):
        """One step: write the step's slices ``saved`` and return the new state tuple.

        ``ops`` has ``ops.pw`` (the pointwise namespace) and ``ops.gemm``; ``xg`` is the
        step's (B, G·H) input projection; ``inputs`` the step's per-step inputs by name
        (None where absent); ``saved`` {name: (B, width) slice}.
        """
        raise NotImplementedError

    def backward_step(self, ops, p, dstate, state_prev, inputs, saved, grads, dstate_prev):
        """One step back: write the step's gradient slices ``grads`` (``grads["dxg"]``
        included) and the gradient of the previous state into ``dstate_prev``.

        ``dstate`` is ∂L/∂state_t (a tuple like ``state``). ``dstate_prev[0]`` already holds
        ∂L/∂out_{t−1} and is *added* to; the other entries are *written*.
        """
        raise NotImplementedError

    def weight_grads(self, p, saved, grads, h_before, db) -> dict:
        """Gradients of the recurrent parameters after the loop (short keys).

        ``h_before`` (T, B, ·) is h_{t−1} for every step in time order; ``db`` = Σ ∂x_g,
        the gradient of the hoisted bias. The driver adds ``w_ih`` and ``b_ih`` itself.
        """
        raise NotImplementedError

    def cpu_loop_for(self, dims: Dims):
        """The compiled CPU loop that runs this cell at ``dims``, or None."""
        return self.cpu_loop

    def state_at(self, saved, t) -> tuple:
        """The state after step t, from the saved (T, B, ·) buffers."""
        return tuple(saved[name][t] for name in self.state)

    # ------------------------------------------------------------------ pointwise twins
    reference = None  # SimpleNamespace of the NumPy/CuPy pointwise functions

    def fused_pointwise(self, launcher):
        """The fused twins of ``reference`` bound to a kernel launcher (same names)."""
        raise NotImplementedError(f"cell {self.name!r} has no fused kernels")

    # ------------------------------------------------------------------ instruments
    def gate_views(self, saved, dims: Dims) -> dict:
        """{gate name: (T, B, H) view} of the activated sigmoid gates (empty for none)."""
        return {}

    def __repr__(self):
        return f"<cell {self.name}>"
