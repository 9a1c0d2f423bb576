"""LSTM, GRU and RNN: the PyTorch-shaped front door.

A module holds parameters (dict keyed by torch.nn's names), gradients (same keys,
accumulated by ``backward``) and the cache of its last forward pass. ``forward`` checks
its input, lays it out time-major, draws what needs drawing (dropout masks, random
initial states) from the module's seeded generator, and calls ``stack_forward``;
``backward`` calls ``stack_backward`` on that cache and hands gradients back in the
caller's layout.

    lstm = rnncore.LSTM(10, 20, num_layers=2)
    out, (h_n, c_n) = lstm(x, (h0, c0))
    dx, (dh0, dc0) = lstm.backward(dout, (dh_n, dc_n))
"""

from __future__ import annotations

import math

import numpy as np

from . import backend, cells, drivers, memory
from .init import INIT_STATE_STD, init_parameters
from .options import DROPOUT_MODES, IMPLS, RESIDUALS, Options, check_int
from .stack import (
    StackSpec,
    all_states,
    parameter_count,
    parameter_shapes,
    stack_backward,
    stack_forward,
)

__all__ = ["DROPOUT_MODES", "GRU", "IMPLS", "LSTM", "RESIDUALS", "RNN", "Recurrent"]

def max_param_bytes() -> int:
    """Bytes a module may ask for its parameters, gradients and optimizer moments before it
    is refused up front: ``RNNCORE_MAX_PARAM_BYTES`` if set, else half the machine's RAM."""
    return backend.memory_bound("RNNCORE_MAX_PARAM_BYTES", 0.5)


class Recurrent:
    """A stack of any registered cell: ``Recurrent("lnlstm", 10, 20, num_layers=2)``.

    Keyword options are the fields of ``rnncore.options.Options``; the state is a tuple in
    the cell's state order when the cell has more than one state tensor (the LSTM's
    (h, c)), else the single array, as in torch.nn. With ``return_states="all"`` the
    returned state holds every step's, (L·D, T, B, width) (batch_first: (L·D, B, T, width)),
    and ``backward`` takes its gradient in that shape.
    """

    def __init__(self, cell, input_size, hidden_size, *, device="cpu", seed=None,
                 options: Options | None = None, **choices):
        if options is not None and choices:
            raise TypeError("give either options= or keyword options, not both")
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        unknown = sorted(set(choices) - set(Options.field_names()))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; options are "
                            f"{', '.join(Options.field_names()[1:])}")
        options = (options or Options(cell=cell, **choices)).validated(self.hidden_size)
        self.options = options
        self.cell = cells.get(options.cell)
        for name in Options.field_names()[1:]:
            setattr(self, name, getattr(options, name))
        self.dtype = backend.resolve_dtype(options.dtype)
        self.device = backend.parse_device(device)
        self.xp = backend.array_module(self.device)
        self.num_directions = 2 if self.bidirectional else 1
        self.rng = backend.Generator(seed)
        self.training = True
        self.spec = StackSpec(self.cell, self.input_size, self.hidden_size, self.num_layers,
                              self.num_directions, self.proj_size, self.residual, self.bias)
        self._check_size()
        shapes = parameter_shapes(self.spec)
        from .interventions import Interventions

        self.interventions = Interventions.from_options(options, self.rng)
        self.driver = self._select_driver(self.device)
        values = init_parameters(shapes, self.init, self.hidden_size, self.cell.num_gates,
                                 self.rng.numpy, self.forget_bias, self.cell.forget_gate,
                                 self._forget_bias_names())
        if self.init_state == "learned":
            LD = self.num_layers * self.num_directions
            for name, width in zip(self.cell.state, self.spec.state_widths()):
                values[name + "0"] = np.zeros((LD, 1, width))
        self.params = {k: backend.to_device(v, self.device, self.dtype) for k, v in values.items()}
        self.grads = {}
        self.zero_grad()
        self._last = None

    def _select_driver(self, device):
        """The driver for ``impl``; the reference loop when an intervention inside
        backward is on (only it implements them; ``rnncore.interventions``), and on the CPU
        when every step's states are returned (the compiled loop adds no per-step
        gradient into its second state)."""
        if self.interventions.active:
            return drivers.PythonLoop("reference")
        if self.return_states == "all" and device.kind == "cpu" and self.impl == "auto":
            return drivers.PythonLoop("reference")
        return drivers.select(self.impl, device, self.dtype, self.cell, self.spec.dims(0))

    def _check_size(self):
        """Refuse, before allocating, a model whose parameters cannot fit in memory."""
        count = parameter_count(self.spec)
        need = 4 * count * self.dtype.itemsize  # parameters, gradients, two optimizer moments
        limit = max_param_bytes()
        if need > limit:
            raise ValueError(f"this model has {count:.3g} parameters and would need about "
                             f"{need / 2**30:.3g} GiB for parameters, gradients and optimizer "
                             f"state, above the {limit / 2**30:.3g} GiB limit "
                             f"(RNNCORE_MAX_PARAM_BYTES sets it)")

    def _forget_bias_names(self):
        """Each layer direction's first gate bias: where ``forget_bias`` goes."""
        bias = next((p for p in self.cell.params if p.init == "bias"), None)
        if not self.forget_bias or bias is None:
            return ()
        spec = self.spec
        return [bias.torch + spec.suffix(k, d) for k in range(spec.num_layers)
                for d in range(spec.num_directions)]

    @property
    def mode(self) -> str:
        """The cell's registry name (``"lstm"``, ``"gru"``, …)."""
        return self.cell.name

    @property
    def last_cache(self):
        """The ``StackCache`` of the last forward pass (what ``backward`` will use), or None
        (before the first, and from the start of each forward until it returns: a new call
        frees the last one's cache first).

        Read-only instruments look inside it: ``last_cache.layers[k][d]`` is layer k,
        direction d's ``LayerCache``, whose ``saved`` holds the cell's per-step buffers by
        name (gates, states; the cell's ``gate_views`` reads them), ``last_cache.masks``
        the dropout masks, ``last_cache.step_masks`` / ``weight_masks`` the recurrent
        regularisers' masks per layer direction.
        """
        return None if self._last is None else self._last[0]

    @property
    def impl_in_use(self) -> str:
        """What ``impl`` resolved to on this device: ``"reference"``, ``"fused"``,
        ``"graph"``, ``"persistent"``, ``"wavefront"`` or ``"auto"`` (the by-size choice,
        per layer)."""
        return self.driver.name

    # ----------------------------------------------------------------- parameters
    def named_parameters(self):
        return list(self.params.items())

    def parameters(self):
        return list(self.params.values())

    def zero_grad(self):
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}

    def state_dict(self) -> dict:
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load arrays (anything ``np.asarray`` takes: numpy, torch ``.numpy()``, lists).

        Values are copied: the module never shares memory with the given arrays.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping of name to array, "
                            f"got {type(state_dict).__name__}")
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self.params]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict keys do not match: missing {missing}, "
                             f"unexpected {unexpected}")
        loaded = {}
        for name, value in state_dict.items():
            if name not in self.params:
                continue
            array = np.asarray(backend.to_numpy(value))
            if array.shape != self.params[name].shape:
                raise ValueError(f"state_dict[{name!r}] has shape {array.shape}, "
                                 f"expected {self.params[name].shape}")
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(f"state_dict[{name!r}] must hold floats, got {array.dtype}")
            loaded[name] = backend.to_device(array.astype(self.dtype, copy=True), self.device)
        self.params.update(loaded)
        drivers.invalidate(self.driver)  # captured graphs read the replaced arrays
        self._last = None

    def drop_cache(self):
        """Forget the last forward pass (its cache no longer matches the parameters)."""
        self._last = None

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move parameters and gradients to ``device`` ("cpu", "cuda", "cuda:1").

        All or nothing: when the move fails the module stays where it was.
        """
        target = backend.parse_device(device)
        xp = backend.array_module(target)
        params = {k: backend.to_device(v, target) for k, v in self.params.items()}
        grads = {k: backend.to_device(v, target) for k, v in self.grads.items()}
        driver = self._select_driver(target)
        drivers.invalidate(self.driver)  # its graphs hold the old device's buffers
        self.device, self.xp, self.params, self.grads = target, xp, params, grads
        self.driver = driver
        self._last = None
        return self

    def __repr__(self):
        opts = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            opts += ", bidirectional=True"
        if self.proj_size:
            opts += f", proj_size={self.proj_size}"
        if self.residual:
            opts += f", residual={self.residual!r}"
        return f"{type(self).__name__}({opts}, device='{self.device}', dtype={self.dtype.name})"

    # ----------------------------------------------------------------- input checks
    def _check_array(self, name, a):
        if backend.is_cupy_array(a):
            if self.device.kind != "cuda":
                raise TypeError(f"{name} is a cupy array but the module is on cpu; "
                                "move it with rnncore.backend.to_numpy or module.to('cuda')")
            if a.device.id != self.device.index:
                raise ValueError(f"{name} is on cuda:{a.device.id}, module on {self.device}")
        elif isinstance(a, np.ndarray):
            if self.device.kind != "cpu":
                raise TypeError(f"{name} is a numpy array but the module is on {self.device}; "
                                "move it with rnncore.backend.to_device")
        else:
            raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {a.dtype}; the module computes in "
                            f"{self.dtype.name}: cast it with .astype('{self.dtype.name}')")
        if self.check_finite and not bool(self.xp.isfinite(a).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        return a

    def _check_state(self, name, a, width, batched, B):
        self._check_array(name, a)
        LD = self.num_layers * self.num_directions
        want = (LD, B, width) if batched else (LD, width)
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(a.shape)}")
        a = a.copy()  # kept in the cache for backward: later edits by the caller must not leak in
        return a if batched else a[:, None, :]

    def _valid_mask(self, lengths, T, B):
        if lengths is None:
            return None
        lens = np.asarray(backend.to_numpy(lengths))
        if lens.ndim != 1 or lens.shape[0] != B:
            raise ValueError(f"lengths must hold one int per sequence ({B}), "
                             f"got shape {lens.shape}")
        if not np.issubdtype(lens.dtype, np.integer):
            raise TypeError(f"lengths must be integers, got dtype {lens.dtype}")
        if lens.min() < 1 or lens.max() > T:
            raise ValueError(f"lengths must lie in [1, {T}] (the sequence length), "
                             f"got min {lens.min()}, max {lens.max()}")
        valid = np.arange(T)[:, None, None] < lens[None, :, None]
        return backend.to_device(valid, self.device)

    # ----------------------------------------------------------------- forward
    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def forward(self, x, hx=None, lengths=None):
        x = self._check_array("input", x)
        if x.ndim not in (2, 3):
            raise ValueError(f"input must be 3-D (seq, batch, feature) or 2-D unbatched, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected input_size="
                             f"{self.input_size}")
        batched = x.ndim == 3
        if lengths is not None and not batched:
            raise ValueError("lengths needs batched (3-D) input; unbatched input is one "
                             "sequence of its own length")
        if not batched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, _ = x.shape
        if T == 0 or B == 0:
            raise ValueError(f"input must have at least one step and one sequence, "
                             f"got shape {tuple(x.shape)}")
        # the cache must not see the caller's later edits: a copy, unless the driver keeps
        # its own (and the stack itself keeps none: a projected stack residual reads x)
        protected = getattr(self.driver, "protects_cache", False) \
            and not self.spec.stack_residual_projected()
        x = self.xp.ascontiguousarray(x) if protected else self.xp.array(x, order="C",
                                                                         copy=True)
        valid = self._valid_mask(lengths, T, B)
        state0, learned = self._initial_state(hx, batched, B)
        masks = self._dropout_masks(T, B)
        step_masks, weight_masks = self._regulariser_masks(T, B)
        every = self.checkpoint_steps(T)
        memory.check_activations(self.spec, T, B, self.dtype.itemsize, every)
        drivers.set_checkpointing(self.driver, every)
        # the last call's cache is freed before this call makes its own (its buffers reused):
        # a loop of calls holds one call's activations, not two
        self._last = None
        out, state_n, cache = stack_forward(self.spec, self.driver, self.params, x, state0,
                                            valid, masks, step_masks, weight_masks)
        self._last = (cache, batched, learned)
        if self.return_states == "all":  # (L·D, T, B, ·): every step's state, every layer
            state_n = all_states(self.spec, cache)
            if not batched:
                state_n = tuple(s[:, :, 0] for s in state_n)
            elif self.batch_first:
                state_n = tuple(s.transpose(0, 2, 1, 3) for s in state_n)
            state_n = tuple(self.xp.array(s, order="C", copy=True) for s in state_n)
        elif not batched:
            state_n = tuple(s[:, 0] for s in state_n)
        if not batched:
            out = out[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return self._handed_out(out, protected), self.pack_state(state_n)

    def _handed_out(self, out, protected: bool):
        """The output as the caller gets it. It may be a buffer the backward reads: on the
        CPU it is read-only (NumPy refuses an in-place edit, as torch refuses the backward
        after one), a view where the driver protects its caches, else a copy; on a GPU
        (CuPy has no read-only arrays) a copy."""
        if protected and self.xp is np:
            out = np.ascontiguousarray(out).view()
        else:
            out = self.xp.array(out, order="C", copy=True)
        if self.xp is np:
            out.flags.writeable = False
        return out

    def checkpoint_steps(self, T) -> int:
        """The recompute segment length for a forward of T steps (0: keep every step)."""
        if self.memory == "sqrt":
            return max(1, math.isqrt(T - 1) + 1) if T > 1 else 0
        return self.checkpoint_every

    def pack_state(self, states):
        """The caller's form of a state tuple: the tuple, or its one array."""
        return states if len(states) > 1 else states[0]

    def _unpack(self, name, given, widths, batched, B):
        """The checked, batched tuple of a state the caller gave: ``hx`` (names h0, c0, …)
        or ``dhx`` (dh_n, dc_n, …)."""
        names = [f"{s}0" if name == "hx" else f"d{s}_n" for s in self.cell.state]
        if len(widths) > 1:
            if not isinstance(given, (tuple, list)) or len(given) != len(widths):
                raise TypeError(f"{name} for the {self.cell.name} cell must be a tuple "
                                f"({', '.join(names)})")
        else:
            given, names = (given,), [name if name == "hx" else names[0]]
        return tuple(self._check_state(n, a, w, batched, B)
                     for n, a, w in zip(names, given, widths))

    def _unpack_all(self, dhx, widths, batched, T, B):
        """``dhx`` under return_states="all": ∂L/∂(every step's state), checked, as a tuple
        of time-major (L·D, T, B, width) arrays."""
        names = [f"d{s}_all" for s in self.cell.state]
        given = dhx if len(widths) > 1 else (dhx,)
        if len(widths) > 1 and (not isinstance(dhx, (tuple, list)) or len(dhx) != len(widths)):
            raise TypeError(f"dhx for the {self.cell.name} cell must be a tuple "
                            f"({', '.join(names)})")
        LD, out = self.num_layers * self.num_directions, []
        for name, a, w in zip(names, given, widths):
            self._check_array(name, a)
            lead = (B, T) if self.batch_first else (T, B)
            want = (LD,) + (lead if batched else (T,)) + (w,)
            if tuple(a.shape) != want:
                raise ValueError(f"{name} must have the returned states' shape {want}, "
                                 f"got {tuple(a.shape)}")
            a = a[:, :, None] if not batched else a.transpose(0, 2, 1, 3) \
                if self.batch_first else a
            out.append(a)
        return tuple(out)

    def _initial_state(self, hx, batched, B):
        """(state0 tuple, learned?) time-major and batched; an explicit hx always wins."""
        LD, xp = self.num_layers * self.num_directions, self.xp
        widths = self.spec.state_widths()
        if hx is not None:
            return self._unpack("hx", hx, widths, batched, B), False
        if self.init_state == "learned":
            return tuple(xp.broadcast_to(self.params[name + "0"], (LD, B, w))
                         for name, w in zip(self.cell.state, widths)), True
        if self.init_state == "normal":
            return tuple(self.rng.normal(INIT_STATE_STD, (LD, B, w), self.dtype, self.device,
                                         batch_axis=1)
                         for w in widths), False
        return tuple(xp.zeros((LD, B, w), dtype=self.dtype) for w in widths), False

    def _dropout_masks(self, T, B):
        if not self.training or self.dropout == 0.0 or self.num_layers == 1:
            return None
        width = self.spec.out_size * self.num_directions
        steps = 1 if self.dropout_mode == "variational" else T
        return [self.rng.keep_mask(self.dropout, (steps, B, width), self.dtype, self.device,
                                   batch_axis=1)
                for _ in range(self.num_layers - 1)] + [None]

    def _regulariser_masks(self, T, B):
        """The recurrent regularisers' masks, drawn from the module's generator:
        ([k·D + d] {step input: (T, B, W)}, [k·D + d] {parameter key: mask}), or Nones.

        zoneout: 1 (keep the previous state) with probability p per unit and step in
        training, the constant p at evaluation; recurrent dropout: one inverted mask per
        sequence, broadcast over the steps, none at evaluation; weight-drop: one inverted
        mask per recurrent weight per forward pass, none at evaluation.
        """
        if not self.options.regularised:
            return None, None
        xp, dtype, dev, rng = self.xp, self.dtype, self.device, self.rng
        steps, weights = [], []
        for k in range(self.num_layers):
            dims = self.spec.dims(k)
            widths = dict(zip(self.cell.state, self.cell.state_widths(dims)))
            shapes = self.cell.param_shapes(dims, self.bias)
            for _ in range(self.num_directions):
                step, weight = {}, {}
                for state in self.cell.zoneout:
                    p = getattr(self, f"zoneout_{state}")
                    if not p:
                        continue
                    shape = (T, B, widths[state])
                    step[f"zoneout_{state}"] = rng.bernoulli(p, shape, dtype, dev, batch_axis=1) \
                        if self.training else xp.broadcast_to(xp.full(shape[-1:], p, dtype), shape)
                if self.recurrent_dropout and self.training:
                    m = rng.keep_mask(self.recurrent_dropout, (B, widths["h"]), dtype, dev,
                                       batch_axis=0)
                    step["recurrent_dropout"] = xp.broadcast_to(m, (T, B, widths["h"]))
                if self.weight_drop and self.training:
                    for key in self.cell.weight_drop:
                        weight[key] = rng.keep_mask(self.weight_drop, shapes[key], dtype, dev)
                steps.append(step)
                weights.append(weight)
        return steps, weights

    # ----------------------------------------------------------------- backward
    def backward(self, dout, dhx=None, recorder=None):
        """Gradients of a loss L given ∂L/∂output (and optionally ∂L/∂ the final state).

        Accumulates ∂L/∂parameter into ``self.grads``; returns ∂L/∂input and ∂L/∂hx in
        the layout the forward call used. ``recorder`` is the optional gradient-flow
        instrument (see ``rnncore.stack.stack_backward``).
        """
        if self._last is None:
            raise RuntimeError("backward called before forward (or after to()/load)")
        cache, batched, learned = self._last
        T, B, _ = cache.x.shape
        width = self.spec.out_size * self.num_directions
        dout = self._check_array("dout", dout)
        want = ((B, T, width) if self.batch_first else (T, B, width)) if batched else (T, width)
        if tuple(dout.shape) != want:
            raise ValueError(f"dout must have the output's shape {want}, got {dout.shape}")
        if not batched:
            dout = dout[:, None, :]
        elif self.batch_first:
            dout = dout.transpose(1, 0, 2)
        LD, xp = self.num_layers * self.num_directions, self.xp
        widths = self.spec.state_widths()
        dstates_all = None
        if self.return_states == "all" and dhx is not None:
            dstates_all = self._unpack_all(dhx, widths, batched, T, B)
            dhx = None
        if dhx is None:
            dstate_n = tuple(xp.zeros((LD, B, w), dtype=self.dtype) for w in widths)
        else:
            dstate_n = self._unpack("dhx", dhx, widths, batched, B)
        dx, dstate0, grads = stack_backward(self.spec, self.driver, self.params, cache, dout,
                                            dstate_n, recorder, self.input_grad,
                                            self.interventions if self.interventions.active
                                            else None, dstates_all, accumulate_into=self.grads)
        for name, g in grads.items():  # those the driver did not add into self.grads itself
            self.grads[name] += g
        if learned:
            for name, d in zip(self.cell.state, dstate0):
                self.grads[name + "0"] += d.sum(axis=1, keepdims=True)
        if not batched:
            dx, dstate0 = None if dx is None else dx[:, 0], tuple(d[:, 0] for d in dstate0)
        elif self.batch_first and dx is not None:
            dx = dx.transpose(1, 0, 2)
        return dx, self.pack_state(dstate0)


TORCH_ARGS = ("num_layers", "bias", "batch_first", "dropout", "bidirectional")


class LSTM(Recurrent):
    """Long short-term memory stack (torch.nn.LSTM's constructor, plus rnncore's options)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, **options):
        super().__init__("lstm", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, **options)


class GRU(Recurrent):
    """Gated recurrent unit stack; ``reset_after=False`` gives Cho et al.'s original form
    (the ``gru_reset_before`` cell)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, reset_after=True, **options):
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {reset_after!r}")
        cell = "gru" if reset_after else "gru_reset_before"
        super().__init__(cell, input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         **options)


class RNN(Recurrent):
    """Elman RNN stack with ``nonlinearity`` "tanh" or "relu" (the ``rnn_tanh`` and
    ``rnn_relu`` cells)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **options):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be one of ('tanh', 'relu'), "
                             f"got {nonlinearity!r}")
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers=num_layers,
                         bias=bias, batch_first=batch_first, dropout=dropout,
                         bidirectional=bidirectional, **options)
