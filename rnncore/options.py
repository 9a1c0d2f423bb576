"""The module's choices, in one object shared by the modules, the character model and
the command line: which cell, how deep, which regularisers and initialisers.

    Options(cell="lstm", num_layers=2, dropout=0.2).validated(hidden_size=256)

Every choice is checked here, against the cell's declaration where it depends on the
cell (``proj_size`` needs a cell with a projection, ``forget_bias`` one with a forget
gate, each recurrent regulariser a cell that declares it: ``Cell.regularisers``), so the
constructor, ``CharLM`` and the training CLI give the same one-line errors.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from . import cells
from .drivers import IMPLS  # the one list of implementations, beside the drivers
from .init import INIT_STATES, INITS

RESIDUALS = (None, "layers", "stack")
DROPOUT_MODES = ("standard", "variational")
DTYPES = ("float32", "float64")
RETURN_STATES = ("last", "all")
# the recurrent regularisers: each a rate in [0, 1), each taken only by cells that declare it
# (``Cell.regularisers``): zoneout on h and on c (Krueger et al. 2016), dropout on h_{t−1}
# inside the recurrence (Gal & Ghahramani 2016), DropConnect on W_hh (Merity et al. 2017)
REGULARISERS = ("zoneout_h", "zoneout_c", "recurrent_dropout", "weight_drop")
MEMORY_MODES = (None, "sqrt")

# the training CLI's (and its checkpoints') names for the fields that it names differently
CONFIG_NAMES = {"layers": "num_layers"}


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_choice(name, value, choices):
    if not any(value is c or (value == c and type(value) is type(c)) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_real(name, value, low=-math.inf, high=math.inf, high_open=False):
    """A finite real number in [low, high] (or [low, high) when ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or value < low or above:
        if math.isinf(low) and math.isinf(high):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}{bracket}, "
                         f"got {value!r}")
    return value


@dataclass(frozen=True)
class Options:
    """A recurrent stack's choices besides its sizes, device and seed."""

    cell: str = "lstm"
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    residual: str | None = None
    init: str = "pytorch"
    forget_bias: float = 0.0
    init_state: str = "zeros"
    dropout_mode: str = "standard"
    dtype: str = "float32"
    impl: str = "auto"
    check_finite: bool = False
    input_grad: bool = True  # False: backward returns None for ∂x and skips its GEMMs
    # interventions inside backward (rnncore.interventions): modified gradients, off at 0
    gate_clip: float = 0.0
    h_detach: float = 0.0
    truncate: int = 0
    grad_noise: float = 0.0
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    recurrent_dropout: float = 0.0
    weight_drop: float = 0.0
    return_states: str = "last"
    checkpoint_every: int = 0  # k > 0: keep the state every k steps, recompute in backward
    memory: str | None = None  # "sqrt": checkpoint_every ≈ √T, chosen per forward

    @property
    def regularised(self) -> bool:
        """Whether any recurrent regulariser is on."""
        return any(getattr(self, name) for name in REGULARISERS)

    def validated(self, hidden_size: int) -> Options:
        """These options checked (raises TypeError/ValueError naming the option)."""
        cell = cells.get(self.cell)
        check_int("num_layers", self.num_layers, 1)
        check_int("proj_size", self.proj_size, 0)
        if self.proj_size and not cell.projection:
            raise TypeError(f"proj_size: the {cell.name} cell does not take it "
                            f"(it has no projection)")
        if self.proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size, got {self.proj_size}")
        for name in ("bias", "batch_first", "bidirectional", "check_finite", "input_grad"):
            check_flag(name, getattr(self, name))
        check_real("dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_real("forget_bias", self.forget_bias)
        if self.forget_bias and cell.forget_gate is None:
            raise TypeError(f"forget_bias: the {cell.name} cell does not take it "
                            f"(it has no forget gate)")
        if self.forget_bias and not self.bias:
            raise ValueError("forget_bias needs bias=True")
        check_choice("residual", self.residual, RESIDUALS)
        check_choice("init", self.init, INITS)
        check_choice("init_state", self.init_state, INIT_STATES)
        check_choice("dropout_mode", self.dropout_mode, DROPOUT_MODES)
        check_choice("impl", self.impl, IMPLS)
        check_real("gate_clip", self.gate_clip, 0.0)
        check_real("h_detach", self.h_detach, 0.0, 1.0)
        check_int("truncate", self.truncate, 0)
        check_real("grad_noise", self.grad_noise, 0.0)
        from .interventions import Interventions

        Interventions.from_options(self, None).check(cell)
        check_choice("return_states", self.return_states, RETURN_STATES)
        rates = {name: check_real(name, getattr(self, name), 0.0, 1.0, high_open=True)
                 for name in REGULARISERS}
        taken = cell.regularisers(self.proj_size)
        for name, rate in rates.items():
            if rate and name not in taken:
                what = ", ".join(taken) if taken else "no recurrent regulariser"
                with_proj = " with proj_size" if self.proj_size else ""
                raise TypeError(f"{name}: the {cell.name} cell{with_proj} does not take it "
                                f"(it takes {what})")
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_choice("memory", self.memory, MEMORY_MODES)
        if self.memory is not None and self.checkpoint_every:
            raise ValueError("memory='sqrt' chooses checkpoint_every itself; give one of them")
        return dataclasses.replace(self, **rates, dropout=float(self.dropout),
                                   forget_bias=float(self.forget_bias),
                                   num_layers=int(self.num_layers),
                                   proj_size=int(self.proj_size),
                                   gate_clip=float(self.gate_clip),
                                   h_detach=float(self.h_detach),
                                   truncate=int(self.truncate),
                                   grad_noise=float(self.grad_noise),
                                   checkpoint_every=int(self.checkpoint_every))

    @classmethod
    def field_names(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, config: dict) -> Options:
        """The options a training config names (its keys outside the options ignored)."""
        names = set(cls.field_names())
        config = dict(config)
        if config.get("cell") == "rnn":  # checkpoints before the cell registry
            config["cell"] = f"rnn_{config.get('nonlinearity', 'tanh')}"
        if config.get("residual") == "none":  # the command line's spelling of None
            config["residual"] = None
        values = {}
        for key, value in config.items():
            field = CONFIG_NAMES.get(key, key)
            if field in names:
                values[field] = value
        return cls(**values)
