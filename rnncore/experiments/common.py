"""Shared mechanics of the experiments: one training loop, small task heads, the char-LM
data, tables and figures.

Every experiment trains through ``fit``:

    for step in 0..S−1:
        x, y = batches(step)
        L = model.loss(x, y);  model.backward()          (hand-written backward passes)
        ‖g‖ = global gradient norm; g ← g · min(1, clip / ‖g‖)   (rnncore.optim)
        optimizer step (rnncore.optim: SGD, Adam, …)

A *model* here is anything with ``params``/``grads`` dicts, ``zero_grad``, ``loss(x, y)``
and ``backward()``: ``SequenceModel`` (an rnncore stack with a linear readout, for the
synthetic tasks) or ``LMTrainee`` (``rnncore.charlm.CharLM`` carrying its state across
windows, as ``rnncore.train`` does).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .. import corpora, optim
from ..charlm import CharLM, cross_entropy_backward, cross_entropy_forward
from ..gradflow import GradFlowRecorder
from ..train import Streams, Vocab, evaluate, split_text
from .executors import InProcess

LN2 = math.log(2.0)


# ============================================================================ reporting
@dataclass
class Report:
    """What an experiment hands back: the printed table, its figure and its seeds."""

    name: str
    table: str
    pngs: list
    seeds: list
    rows: list = field(default_factory=list)  # raw numbers, for tests and the docs
    # (claim, holds?) pairs: the direction of the experiment's claim, checked in --quick
    # mode wherever it is stable over seeds at that size (``rnncore.experiments.run``
    # raises ClaimFailed when one does not hold)
    checks: list = field(default_factory=list)
    # the verdict on the claim, computed from a test across seeds (rnncore.experiments.stats:
    # Welch's t-test), and one line per comparison with its statistics
    verdicts: list = field(default_factory=list)

    def __str__(self):
        files = ", ".join(self.pngs)
        lines = [self.table]
        lines += [f"{'✓' if ok else '✗'} {claim}" for claim, ok in self.checks]
        lines += self.verdicts
        return "\n".join(lines + [f"seeds: {self.seeds}", f"wrote {files}"])


def format_table(headers, rows) -> str:
    """A plain-text table; cells are already strings or numbers (shown with %.4g)."""
    cells = [[c if isinstance(c, str) else f"{c:.4g}" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def mean_sd(values, fmt="{:.3f}") -> str:
    """'mean ± sd' over seeds (sd with ddof=1; just the value for one seed)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"


def verdicts(claim, seeds, comparisons) -> list[str]:
    """The verdict lines for ``claim``: ``comparisons()`` returns the Welch tests
    (rnncore.experiments.stats); one seed gives no test, and says so."""
    from . import stats

    if len(seeds) < 2:
        return [f"verdict: no test with one seed — {claim}"]
    return stats.verdict_lines(claim, comparisons())


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir, name) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=80)
    pyplot().close(fig)
    return path


# ============================================================================ parallel runs
def parallel_map(fn, tasks, executor=None) -> list:
    """``[fn(*task) for task in tasks]``, in order, on ``executor`` (``rnncore.experiments.
    executors``: a local process pool, a Dask cluster; None: in this process).

    Every task is one independent, seeded run, so the results do not depend on where it ran.
    """
    return (executor or InProcess()).map(fn, list(tasks))


# ============================================================================ heads
class Readout:
    """A linear readout z = h Wᵀ + b with its backward ∂W = ∂zᵀ h, ∂b = Σ ∂z, ∂h = ∂z W."""

    def __init__(self, in_size, out_size, rng, dtype):
        bound = 1.0 / math.sqrt(in_size)
        self.params = {"readout.weight": rng.uniform(-bound, bound, (out_size, in_size))
                       .astype(dtype),
                       "readout.bias": np.zeros(out_size, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, h):
        self._h = h
        return h @ self.params["readout.weight"].T + self.params["readout.bias"]

    def backward(self, dz):
        self.grads["readout.weight"] += dz.T @ self._h
        self.grads["readout.bias"] += dz.sum(axis=0)
        return dz @ self.params["readout.weight"]


def mse_forward(pred, target):
    """L = mean_b (pred_b − y_b)² for one output per sequence; returns (L, ∂L/∂pred)."""
    diff = pred - target
    return float((diff * diff).mean()), 2.0 * diff / diff.size


class SequenceModel:
    """An rnncore stack with a linear readout, trained on a synthetic sequence task.

    ``where="last"``: one output per sequence read from the top layer at t = T−1, loss MSE
    (regression).  ``where="all"``: one class per step, loss softmax cross-entropy (mean
    over T·B positions, ``rnncore.charlm``'s loss).
    """

    def __init__(self, rnn, n_out, where, seed=0):
        if where not in ("last", "all"):
            raise ValueError(f"where must be 'last' or 'all', got {where!r}")
        self.rnn, self.where = rnn, where
        width = rnn.spec.out_size * rnn.num_directions
        self.head = Readout(width, n_out, np.random.default_rng(seed), rnn.dtype)

    @property
    def params(self):
        return {**{"rnn." + k: v for k, v in self.rnn.params.items()}, **self.head.params}

    @property
    def grads(self):
        return {**{"rnn." + k: v for k, v in self.rnn.grads.items()}, **self.head.grads}

    def zero_grad(self):
        self.rnn.zero_grad()
        for g in self.head.grads.values():
            g[...] = 0

    def predict(self, x):
        out = self.rnn(x)[0]
        self._shape = out.shape
        if self.where == "last":
            return self.head.forward(out[-1])[:, 0]
        T, B, W = out.shape
        return self.head.forward(out.reshape(T * B, W)).reshape(T, B, -1)

    def loss(self, x, y):
        pred = self.predict(x)
        if self.where == "last":
            loss, self._dpred = mse_forward(pred, y)
            return loss
        loss, self._ce = cross_entropy_forward(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))
        return float(loss)

    def backward(self):
        T, B, W = self._shape
        dout = np.zeros(self._shape, dtype=self.rnn.dtype)
        if self.where == "last":
            dout[-1] = self.head.backward(self._dpred[:, None].astype(self.rnn.dtype))
        else:
            dout[...] = self.head.backward(cross_entropy_backward(self._ce)).reshape(T, B, W)
        self.rnn.backward(dout)


# ============================================================================ training
@dataclass
class History:
    losses: list = field(default_factory=list)
    grad_norms: list = field(default_factory=list)
    evals: list = field(default_factory=list)  # (step, value)
    diverged_at: int | None = None


def fit(model, batches, steps, lr, optimizer="adam", clip=None, momentum=0.0,
        evaluate_fn=None, eval_every=0) -> History:
    """The one training loop (see the module docstring); stops early on a non-finite loss."""
    opt = optim.make_optimizer(optimizer, model.params, momentum=momentum)
    hist = History()
    for step in range(steps):
        x, y = batches(step)
        model.zero_grad()
        loss = float(model.loss(x, y))
        if not math.isfinite(loss):
            hist.diverged_at = step
            break
        model.backward()
        hist.losses.append(loss)
        hist.grad_norms.append(float(optim.clip_grad_norm(model.grads, clip)))
        opt.step(model.params, model.grads, lr)
        if evaluate_fn is not None and eval_every and (step + 1) % eval_every == 0:
            hist.evals.append((step + 1, evaluate_fn()))
    return hist


# ============================================================================ char-LM
@dataclass
class LMData:
    """The ``words`` corpus (a bigram grammar with a known entropy floor), split."""

    vocab: Vocab
    train: Streams
    val: Streams
    floor_bpc: float

    @classmethod
    def make(cls, n_chars, batch_size, seq_len, seed=0, val_fraction=0.1):
        corpus = corpora.generate_words(n_chars=n_chars, seed=seed)
        vocab = Vocab.from_text(corpus.text)
        train_ids, val_ids = split_text(vocab.encode(corpus.text), val_fraction)
        return cls(vocab, Streams(train_ids, batch_size, seq_len, "cpu"),
                   Streams(val_ids, batch_size, seq_len, "cpu"), corpus.floor_bpc)


class LMTrainee:
    """A CharLM read window by window, its state carried between windows (reset at w = 0),
    gradients truncated at window edges, as in ``rnncore.train``. ``carry=False`` starts
    every window from the model's initial state (what makes ``init_state`` matter)."""

    def __init__(self, model: CharLM, streams: Streams, carry=True):
        self.model, self.streams, self.state, self.carry = model, streams, None, carry

    params = property(lambda self: self.model.params)
    grads = property(lambda self: self.model.grads)

    def zero_grad(self):
        self.model.zero_grad()

    def batch(self, step):
        w = step % self.streams.windows
        if w == 0 or not self.carry:
            self.state = None
        return self.streams.window(w)

    def loss(self, x, y):
        loss, self.state = self.model.loss(x, y, self.state)
        return loss

    def backward(self):
        self.model.backward()


def new_lm(data: LMData, **options) -> CharLM:
    """A CharLM for ``data``'s vocabulary (options as CharLM's: cell, sizes, engine options)."""
    return CharLM(len(data.vocab.chars), **options)


def train_lm(data: LMData, model: CharLM, steps, lr, optimizer="adam", clip=1.0, momentum=0.0,
             eval_windows=20, eval_every=0, carry=True):
    """Train ``model`` on ``data``; returns (history, validation bpc or NaN if it diverged).

    ``eval_every`` > 0 also records validation bpc every that many steps in history.evals.
    """
    trainee = LMTrainee(model, data.train, carry)
    hist = fit(trainee, trainee.batch, steps, lr, optimizer, clip, momentum,
               lambda: lm_bpc(model, data.val, eval_windows, carry), eval_every)
    val = math.nan if hist.diverged_at is not None else \
        lm_bpc(model, data.val, eval_windows, carry)
    return hist, val


def lm_bpc(model, streams, windows=20, carry=True) -> float:
    """Mean loss of ``model`` on ``streams`` in bits per character (eval mode); with
    ``carry=False`` every window starts from the initial state, as in training."""
    if carry:
        return evaluate(model, streams, windows) / LN2
    total, n = 0.0, min(windows, streams.windows)
    with model.inference():
        for w in range(n):
            total += float(model.loss(*streams.window(w))[0])
    return total / n / LN2


def lm_layer_gradients(model: CharLM, ids, targets) -> GradFlowRecorder:
    """The char-LM's cross-entropy gradient, recorded through the stack's backward."""
    model.loss(ids, targets)
    rec = GradFlowRecorder()
    model.backward(recorder=rec)
    return rec
