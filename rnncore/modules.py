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

import numbers

import numpy as np

from . import backend
from .cells import REFERENCE, GRUCell, LSTMCell, RNNCell
from .cells.rnn import NONLINEARITIES
from .init import INIT_STATE_STD, INIT_STATES, init_parameters
from .stack import StackSpec, parameter_shapes, stack_backward, stack_forward

RESIDUALS = (None, "layers", "stack")
DROPOUT_MODES = ("standard", "variational")
IMPLS = ("auto", "reference", "fused")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


class _Recurrent:
    """Shared mechanics of LSTM, GRU and RNN; subclasses only say which cell."""

    mode = None  # "lstm", "gru", "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, residual=None,
                 init="pytorch", forget_bias=0.0, init_state="zeros",
                 dropout_mode="standard", device="cpu", dtype="float32", seed=None,
                 impl="auto", check_finite=False, reset_after=True, nonlinearity="tanh"):
        self.input_size = _check_int("input_size", input_size, 1)
        self.hidden_size = _check_int("hidden_size", hidden_size, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.proj_size = _check_int("proj_size", proj_size, 0)
        if self.proj_size and self.mode != "lstm":
            raise ValueError("proj_size is only supported by LSTM")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size, got {proj_size}")
        for name, flag in (("bias", bias), ("batch_first", batch_first),
                           ("bidirectional", bidirectional), ("reset_after", reset_after),
                           ("check_finite", check_finite)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real):
            raise TypeError(f"forget_bias must be a number, got {forget_bias!r}")
        if forget_bias and self.mode != "lstm":
            raise ValueError("forget_bias is only meaningful for LSTM")
        if forget_bias and not bias:
            raise ValueError("forget_bias needs bias=True")
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.reset_after, self.check_finite = reset_after, check_finite
        self.dropout = float(dropout)
        self.forget_bias = float(forget_bias)
        self.residual = _check_choice("residual", residual, RESIDUALS)
        self.init = _check_choice("init", init, ("pytorch", "xavier", "orthogonal"))
        self.init_state = _check_choice("init_state", init_state, INIT_STATES)
        self.dropout_mode = _check_choice("dropout_mode", dropout_mode, DROPOUT_MODES)
        self.nonlinearity = _check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.impl = _check_choice("impl", impl, IMPLS)
        self.dtype = backend.resolve_dtype(dtype)
        self.device = backend.parse_device(device)
        self.xp = backend.array_module(self.device)
        self.num_directions = 2 if bidirectional else 1
        self.rng = backend.Generator(seed)
        self.training = True
        self._pointwise = self._select_pointwise()
        self.spec = self._make_spec()

        shapes = parameter_shapes(self.spec)
        values = init_parameters(shapes, self.init, self.hidden_size, self.spec.cell.num_gates,
                                 self.rng.numpy, self.forget_bias)
        if self.init_state == "learned":
            LD = self.num_layers * self.num_directions
            values["h0"] = np.zeros((LD, 1, self.spec.out_size))
            if self.mode == "lstm":
                values["c0"] = np.zeros((LD, 1, self.hidden_size))
        self.params = {k: backend.to_device(v, self.device, self.dtype) for k, v in values.items()}
        self.grads = {}
        self.zero_grad()
        self._last = None

    # ----------------------------------------------------------------- structure
    def _make_cell(self, pointwise):
        if self.mode == "lstm":
            return LSTMCell(pointwise)
        if self.mode == "gru":
            return GRUCell(pointwise, self.reset_after)
        return RNNCell(pointwise, self.nonlinearity)

    def _make_spec(self):
        return StackSpec(self._make_cell(self._pointwise), self.input_size, self.hidden_size,
                         self.num_layers, self.num_directions, self.proj_size, self.residual,
                         self.bias)

    def _select_pointwise(self):
        """The pointwise implementation: the NumPy/CuPy reference or the fused kernels.

        ``auto`` means fused on a GPU. On the CPU it means the reference: NumPy's SIMD
        ufuncs beat the scalar host-compiled kernels there (the emulation exists to test
        the kernel source and launch code, and runs with ``impl="fused"``).
        """
        if self.impl == "reference":
            return REFERENCE
        from . import fused

        if self.impl == "fused" or (self.device.kind == "cuda" and fused.available(self.device)):
            return fused.pointwise_for(self.device, self.dtype)
        return REFERENCE

    @property
    def last_cache(self):
        """The ``StackCache`` of the last forward pass (what ``backward`` will use), or None.

        Read-only instruments look inside it: ``last_cache.layers[k][d].ws`` holds layer k,
        direction d's per-step buffers (gates, states) and ``last_cache.masks`` the dropout
        masks.
        """
        return None if self._last is None else self._last[0]

    @property
    def impl_in_use(self) -> str:
        """``"reference"`` or ``"fused"``: what ``impl`` resolved to on this device."""
        return self._pointwise.name

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
        self._last = None

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move parameters and gradients to ``device`` ("cpu", "cuda", "cuda:1")."""
        self.device = backend.parse_device(device)
        self.xp = backend.array_module(self.device)
        self.params = {k: backend.to_device(v, self.device) for k, v in self.params.items()}
        self.grads = {k: backend.to_device(v, self.device) for k, v in self.grads.items()}
        self._pointwise = self._select_pointwise()
        self.spec = self._make_spec()
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
        x = self.xp.array(x, order="C", copy=True)  # the cache must not see later edits
        valid = self._valid_mask(lengths, T, B)
        h0, c0, learned = self._initial_state(hx, batched, B)
        masks = self._dropout_masks(T, B)
        out, h_n, c_n, cache = stack_forward(self.spec, self.params, x, h0, c0, valid, masks)
        self._last = (cache, batched, learned)
        if not batched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        out = self.xp.array(out, order="C", copy=True)  # may be a buffer backward reads
        return (out, (h_n, c_n)) if self.mode == "lstm" else (out, h_n)

    def _initial_state(self, hx, batched, B):
        """(h0, c0, learned?) time-major and batched; an explicit hx always wins."""
        LD, xp = self.num_layers * self.num_directions, self.xp
        H, Hout = self.hidden_size, self.spec.out_size
        if hx is not None:
            if self.mode == "lstm":
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("hx for an LSTM must be a tuple (h0, c0)")
                return (self._check_state("h0", hx[0], Hout, batched, B),
                        self._check_state("c0", hx[1], H, batched, B), False)
            return self._check_state("hx", hx, Hout, batched, B), None, False
        has_c = self.mode == "lstm"
        if self.init_state == "learned":
            h0 = xp.broadcast_to(self.params["h0"], (LD, B, Hout))
            c0 = xp.broadcast_to(self.params["c0"], (LD, B, H)) if has_c else None
            return h0, c0, True
        if self.init_state == "normal":
            h0 = self.rng.normal(INIT_STATE_STD, (LD, B, Hout), self.dtype, self.device)
            c0 = self.rng.normal(INIT_STATE_STD, (LD, B, H), self.dtype, self.device) \
                if has_c else None
            return h0, c0, False
        h0 = xp.zeros((LD, B, Hout), dtype=self.dtype)
        return h0, (xp.zeros((LD, B, H), dtype=self.dtype) if has_c else None), False

    def _dropout_masks(self, T, B):
        if not self.training or self.dropout == 0.0 or self.num_layers == 1:
            return None
        width = self.spec.out_size * self.num_directions
        steps = 1 if self.dropout_mode == "variational" else T
        return [self.rng.keep_mask(self.dropout, (steps, B, width), self.dtype, self.device)
                for _ in range(self.num_layers - 1)] + [None]

    # ----------------------------------------------------------------- backward
    def backward(self, dout, dhx=None, recorder=None):
        """Gradients of a loss L given ∂L/∂output (and optionally ∂L/∂h_n, ∂L/∂c_n).

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
        has_c = self.mode == "lstm"
        if dhx is None:
            dh_n = xp.zeros((LD, B, self.spec.out_size), dtype=self.dtype)
            dc_n = xp.zeros((LD, B, self.hidden_size), dtype=self.dtype) if has_c else None
        elif has_c:
            if not isinstance(dhx, (tuple, list)) or len(dhx) != 2:
                raise TypeError("dhx for an LSTM must be a tuple (dh_n, dc_n)")
            dh_n = self._check_state("dh_n", dhx[0], self.spec.out_size, batched, B)
            dc_n = self._check_state("dc_n", dhx[1], self.hidden_size, batched, B)
        else:
            dh_n, dc_n = self._check_state("dh_n", dhx, self.spec.out_size, batched, B), None
        dx, dh0, dc0, grads = stack_backward(self.spec, self.params, cache, dout, dh_n, dc_n,
                                             recorder)
        for name, g in grads.items():
            self.grads[name] += g
        if learned:
            self.grads["h0"] += dh0.sum(axis=1, keepdims=True)
            if has_c:
                self.grads["c0"] += dc0.sum(axis=1, keepdims=True)
        if not batched:
            dx, dh0 = dx[:, 0], dh0[:, 0]
            dc0 = None if dc0 is None else dc0[:, 0]
        elif self.batch_first:
            dx = dx.transpose(1, 0, 2)
        return (dx, (dh0, dc0)) if has_c else (dx, dh0)


class LSTM(_Recurrent):
    """Long short-term memory stack (torch.nn.LSTM's constructor, plus rnncore's options)."""

    mode = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, **options):
        for key in ("reset_after", "nonlinearity"):
            if key in options:
                raise TypeError(f"LSTM does not take {key}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, **options)


class GRU(_Recurrent):
    """Gated recurrent unit stack; ``reset_after=False`` gives Cho et al.'s original form."""

    mode = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, reset_after=True, **options):
        for key in ("proj_size", "forget_bias", "nonlinearity"):
            if key in options:
                raise TypeError(f"GRU does not take {key}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, reset_after=reset_after, **options)


class RNN(_Recurrent):
    """Elman RNN stack with ``nonlinearity`` "tanh" or "relu"."""

    mode = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **options):
        for key in ("proj_size", "forget_bias", "reset_after"):
            if key in options:
                raise TypeError(f"RNN does not take {key}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, nonlinearity=nonlinearity, **options)
