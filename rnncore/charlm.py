"""A character language model: embedding → rnncore stack → linear head → softmax loss.

Shapes are time-major: ids (T, B) integers, targets (T, B). With N = T·B positions,
vocabulary V, embedding width E and the stack's output width H:

    x_tb   = E[ids_tb]                          embedding lookup        (T, B, E)
    h, s'  = RNN(x, s)                          rnncore LSTM/GRU/RNN    (T, B, H)
    z_tb   = h_tb Wᵀ + b                        linear head             (T, B, V)
    L      = −(1/N) Σ_tb log softmax(z_tb)[y_tb]                        nats

Backward, every step by hand:

    ∂z = (softmax(z) − onehot(y)) / N
    ∂W = Σ_tb ∂z_tbᵀ h_tb      ∂b = Σ_tb ∂z_tb      ∂h = ∂z W
    ∂x = RNN.backward(∂h)      (no gradient enters through the final state: truncated BPTT)
    ∂E = onehot(ids)ᵀ ∂x       (a scatter-add written as one (V, N) × (N, E) GEMM)

Parameters live in one flat dict with torch-like names: ``embed.weight``, ``rnn.<torch
name>``, ``head.weight``, ``head.bias``; the RNN's own entries are the engine module's
arrays (shared, not copied), so an optimizer sees a single dict.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import backend
from .modules import Recurrent
from .options import Options

RNN_PREFIX = "rnn."


def log_softmax(xp, z):
    """log softmax along the last axis, shifted by the max for stability."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def one_hot(xp, ids, V, dtype):
    """(…,) integer ids → (…, V) one-hot rows."""
    return (ids[..., None] == xp.arange(V)).astype(dtype)


def cross_entropy_forward(z, targets, positions=None):
    """Mean negative log-likelihood (nats) of integer targets under logits z (N, V).

    ``positions`` (default N) is what the sum is divided by: a data-parallel rank holding
    part of a batch passes the whole batch's count, so the ranks' losses and gradients
    add up to the batch's. Returns (loss as a 0-d device array, cache for the backward).
    """
    xp = backend.xp_of(z)
    logp = log_softmax(xp, z)
    picked = xp.take_along_axis(logp, targets[:, None], axis=1)
    loss = -picked.mean() if positions is None else -picked.sum() / positions
    return loss, (logp, targets, positions)


def cross_entropy_backward(cache):
    """∂L/∂z = (softmax(z) − onehot(y)) / N for the mean loss above."""
    logp, targets, positions = cache
    xp = backend.xp_of(logp)
    N, V = logp.shape
    dz = xp.exp(logp)
    dz -= one_hot(xp, targets, V, dz.dtype)
    dz /= N if positions is None else positions
    return dz


class CharLM:
    """Embedding, a recurrent stack (any engine option) and a linear softmax head."""

    def __init__(self, vocab_size, embed_size=64, hidden_size=256, num_layers=2, cell="lstm",
                 *, device="cpu", dtype="float32", seed=0, options: Options | None = None,
                 **rnn_options):
        """``options`` (an ``rnncore.Options``) replaces cell, num_layers, dtype and the
        keyword options when given."""
        if options is None:
            options = Options(cell=cell, num_layers=num_layers, dtype=dtype, **rnn_options)
        elif rnn_options:
            raise TypeError("give either options= or keyword options, not both")
        if options.bidirectional:
            raise ValueError("a language model predicts the next character from the past "
                             "only: bidirectional=True cannot be used")
        self.vocab_size, self.embed_size, self.cell = vocab_size, embed_size, options.cell
        self.rnn = Recurrent(options.cell, embed_size, hidden_size, device=device, seed=seed,
                             options=options)
        self.device, self.dtype, self.xp = self.rnn.device, self.rnn.dtype, self.rnn.xp
        out_size = self.rnn.spec.out_size
        init = self.rnn.rng.numpy
        bound = 1.0 / np.sqrt(out_size)
        own = {
            "embed.weight": init.standard_normal((vocab_size, embed_size)),
            "head.weight": init.uniform(-bound, bound, (vocab_size, out_size)),
            "head.bias": init.uniform(-bound, bound, vocab_size),
        }
        self.own = {k: backend.to_device(v, self.device, self.dtype) for k, v in own.items()}
        self._cache = None
        self.zero_grad()

    MODEL_KEYS = ("cell", "embed", "hidden", "layers", "proj_size", "residual", "dropout",
                  "dropout_mode", "init", "init_state", "forget_bias", "nonlinearity", "dtype",
                  "impl", "seed", "zoneout_h", "zoneout_c", "recurrent_dropout", "weight_drop")

    @classmethod
    def from_config(cls, config: dict, vocab_size: int, device="cpu"):
        """The model a training config (``rnncore.train``'s flags) describes."""
        return cls(vocab_size, config["embed"], config["hidden"], device=device,
                   seed=config["seed"], options=Options.from_config(config))

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> dict:
        """Every trainable array by name (the RNN's arrays are the module's own)."""
        merged = dict(self.own)
        merged.update({RNN_PREFIX + k: v for k, v in self.rnn.params.items()})
        return merged

    @property
    def grads(self) -> dict:
        merged = dict(self.own_grads)
        merged.update({RNN_PREFIX + k: v for k, v in self.rnn.grads.items()})
        return merged

    def zero_grad(self):
        self.own_grads = {k: self.xp.zeros_like(v) for k, v in self.own.items()}
        self.rnn.zero_grad()

    def set_params(self, arrays: dict):
        """Replace parameters in place (optimizers and checkpoints call this)."""
        for name, value in arrays.items():
            if name.startswith(RNN_PREFIX):
                self.rnn.params[name[len(RNN_PREFIX):]] = value
            else:
                self.own[name] = value

    def load_arrays(self, arrays: dict):
        """Load host arrays by name, checking names and shapes; raises ValueError."""
        params = self.params
        missing = sorted(set(params) - set(arrays))
        unexpected = sorted(set(arrays) - set(params))
        if missing or unexpected:
            raise ValueError(f"parameters do not match the model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        for name, value in arrays.items():
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"parameter {name} has shape {tuple(value.shape)}, the model "
                                 f"expects {tuple(params[name].shape)}")
        self.set_params({k: backend.to_device(v, self.device, self.dtype)
                         for k, v in arrays.items()})
        self.rnn.drop_cache()

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    def train(self, mode=True):
        self.rnn.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def inference(self):
        """Eval mode (no dropout) whose random draws leave the training RNG where it was.

        Evaluation and sampling happen between training steps; restoring the generator
        (used by init_state="normal") keeps a run's losses independent of how often it
        evaluates, which is what makes ``--resume`` exact.
        """
        was_training, saved = self.rnn.training, self.rnn.rng.get_state()
        self.eval()
        try:
            yield self
        finally:
            self.rnn.rng.set_state(saved)
            self.train(was_training)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size):
        """A zero carried state for ``batch_size`` streams (passing None instead lets the
        module's ``init_state`` choose)."""
        LD = self.rnn.num_layers
        return self.rnn.pack_state(tuple(self.xp.zeros((LD, batch_size, w), dtype=self.dtype)
                                         for w in self.rnn.spec.state_widths()))

    # ------------------------------------------------------------------ forward / backward
    def forward(self, ids, state=None):
        """ids (T, B) ints → (logits (T, B, V), carried state); caches for ``backward``."""
        xp = self.xp
        T, B = ids.shape
        x = xp.take(self.own["embed.weight"], ids, axis=0)
        out, new_state = self.rnn(x, state)
        logits = out.reshape(T * B, -1) @ self.own["head.weight"].T + self.own["head.bias"]
        self._cache = (ids, out)
        return logits.reshape(T, B, -1), new_state

    def loss(self, ids, targets, state=None, positions=None):
        """Forward and mean cross-entropy (nats, 0-d device array); returns (loss, state).

        ``positions``: divide the summed loss by this count instead of T·B (see
        ``cross_entropy_forward``)."""
        logits, new_state = self.forward(ids, state)
        loss, self._loss_cache = cross_entropy_forward(
            logits.reshape(-1, self.vocab_size), targets.reshape(-1), positions)
        return loss, new_state

    def backward(self, recorder=None):
        """Accumulate ∂loss/∂parameter for the last ``loss`` call into ``grads``.

        ``recorder`` (optional) is passed to the stack's backward: the gradient-flow
        instrument (``rnncore.gradflow.GradFlowRecorder``).
        """
        if self._cache is None:
            raise RuntimeError("backward called before loss")
        ids, out = self._cache
        T, B, H = out.shape
        dz = cross_entropy_backward(self._loss_cache)
        dout = self.head_backward(dz, out.reshape(T * B, H)).reshape(T, B, H)
        dx = self.rnn.backward(dout, recorder=recorder)[0]
        self.embedding_backward(ids, dx)
        self._cache = None

    def head_backward(self, dz, h):
        """∂W += ∂zᵀ h, ∂b += Σ ∂z; returns ∂h = ∂z W."""
        self.own_grads["head.weight"] += dz.T @ h
        self.own_grads["head.bias"] += dz.sum(axis=0)
        return dz @ self.own["head.weight"]

    def embedding_backward(self, ids, dx):
        """∂E += onehot(ids)ᵀ ∂x (rows of E that were looked up collect their gradients)."""
        flat = ids.reshape(-1)
        onehot = one_hot(self.xp, flat, self.vocab_size, dx.dtype)
        self.own_grads["embed.weight"] += onehot.T @ dx.reshape(flat.shape[0], -1)
