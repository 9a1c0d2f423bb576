"""Train a character language model: ``python -m rnncore.train [options]``.

With no options: a 2-layer LSTM learns the built-in ``words`` corpus in about two
minutes on a laptop CPU, and reports how close it gets to the corpus's entropy rate.

The loop, in one screen:

    text  → ids → B contiguous streams (train) + a held-out tail (validation)
    for step in 0..steps−1:
        window w = step mod W (W windows of T characters per stream; w = 0: fresh state)
        loss, state = model.loss(x_w, y_w, state)      state carried from window w−1 …
        model.backward()                               … but no gradient crosses the edge
        clip the global gradient norm; optimizer.step(lr = schedule(step))
        every --eval-every steps: validation loss, a sample, metrics, a checkpoint

Files in the run directory (``--out``, default ``runs/<corpus>-<cell>``): ``config.json``,
``metrics.jsonl`` (one JSON object per log/eval line), ``loss.png``, ``last.npz`` and
``best.npz`` (lowest validation loss). ``--resume`` restores parameters, optimizer slots,
RNG state, carried hidden state and step, so the resumed losses equal those of a run that
was never stopped. Ctrl-C finishes the current step, saves, and exits.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import backend, cells, corpora, optim
from .charlm import CharLM
from .checkpoint import CheckpointError, save
from .corpora import CorpusError
from .init import INIT_STATES
from .modules import DROPOUT_MODES, IMPLS
from .options import Options
from .sample import PARAM_PREFIX, generate, load_model

LN2 = math.log(2.0)
# Settings that may change when a run is resumed; every other flag must match.
RESUMABLE = {"steps", "time", "device", "eval_every", "eval_chars", "log_every",
             "sample_length", "temperature", "quiet", "plot", "threads"}


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss); the last good checkpoint is kept."""


# ============================================================================ command line
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rnncore.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.error = lambda message: _fail(f"{message} (see --help)")  # one line, no usage dump
    data = ap.add_argument_group("data")
    data.add_argument("--corpus", default="words", choices=corpora.CORPORA,
                      help="built-in text (default: words)")
    data.add_argument("--data", metavar="FILE", help="train on this text file instead")
    data.add_argument("--encoding", default="utf-8", help="encoding of --data")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="tail of the text held out for validation")

    model = ap.add_argument_group("model")
    model.add_argument("--cell", default="lstm", choices=cells.names() + ("rnn",),
                       help="a registered cell (rnn: rnn_tanh, or rnn_relu with "
                            "--nonlinearity relu)")
    model.add_argument("--nonlinearity", default="tanh", choices=("tanh", "relu"),
                       help="for --cell rnn")
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--hidden", type=int, default=128)
    model.add_argument("--embed", type=int, default=32, help="embedding width")
    model.add_argument("--proj-size", type=int, default=0, help="LSTM projection (LSTMP)")
    model.add_argument("--residual", default="none", choices=("none", "layers", "stack"))
    model.add_argument("--dropout", type=float, default=0.0, help="between layers")
    model.add_argument("--dropout-mode", default="standard", choices=DROPOUT_MODES)
    model.add_argument("--init", default="pytorch", choices=("pytorch", "xavier", "orthogonal"))
    model.add_argument("--init-state", default="zeros", choices=INIT_STATES,
                       help="state at the start of each pass over the text")
    model.add_argument("--forget-bias", type=float, default=0.0, help="LSTM forget-gate bias")
    model.add_argument("--bidirectional", action="store_true",
                       help="(refused: a language model cannot see the future)")
    model.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    model.add_argument("--impl", default="auto", choices=IMPLS, help="pointwise kernels")

    opt = ap.add_argument_group("optimization")
    opt.add_argument("--optimizer", default="adam", choices=optim.OPTIMIZERS)
    opt.add_argument("--lr", type=float, default=4e-3)
    opt.add_argument("--momentum", type=float, default=0.9, help="sgd")
    opt.add_argument("--nesterov", action="store_true", help="sgd")
    opt.add_argument("--beta1", type=float, default=0.9)
    opt.add_argument("--beta2", type=float, default=0.999)
    opt.add_argument("--eps", type=float, default=1e-8)
    opt.add_argument("--alpha", type=float, default=0.99, help="rmsprop smoothing")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--clip", type=float, default=1.0, help="max global grad norm (0 = off)")
    opt.add_argument("--schedule", default="cosine", choices=optim.SCHEDULES)
    opt.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    opt.add_argument("--step-size", type=int, default=1000, help="step schedule period")
    opt.add_argument("--gamma", type=float, default=0.5, help="step schedule factor")
    opt.add_argument("--min-lr", type=float, default=1e-4, help="cosine floor")

    run = ap.add_argument_group("run")
    run.add_argument("--seq-len", type=int, default=64, help="BPTT window T")
    run.add_argument("--batch-size", type=int, default=32, help="parallel streams B")
    run.add_argument("--steps", type=int, default=2400)
    run.add_argument("--time", type=float, default=0.0,
                     help="also stop after this many seconds of training (0 = no limit)")
    run.add_argument("--eval-every", type=int, default=300)
    run.add_argument("--eval-chars", type=int, default=100_000,
                     help="validation characters per evaluation (0 = all)")
    run.add_argument("--log-every", type=int, default=20)
    run.add_argument("--sample-length", type=int, default=200)
    run.add_argument("--temperature", type=float, default=0.7, help="for the eval samples")
    run.add_argument("--device", default="cpu")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=1,
                     help="OpenBLAS threads (0 = the library's default; OPENBLAS_NUM_THREADS "
                          "in the environment wins). One is fastest for these small GEMMs "
                          "on a CPU shared with other work")
    run.add_argument("--out", help="run directory (default runs/<corpus>-<cell>)")
    run.add_argument("--format", default="npz", choices=("npz", "safetensors"))
    run.add_argument("--resume", metavar="PATH", help="checkpoint file or run directory")
    run.add_argument("--overwrite", action="store_true",
                     help="start afresh in an --out that already holds checkpoints")
    run.add_argument("--no-plot", dest="plot", action="store_false")
    run.add_argument("--quiet", action="store_true", help="no progress bar or samples")
    return ap


def _fail(message):
    print(f"rnncore.train: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def explicit_flags(argv) -> set:
    """Names of the options actually given on the command line."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def check_config(cfg: dict):
    """Refuse settings that cannot work, before anything is written."""
    if cfg["bidirectional"]:
        raise ValueError("--bidirectional: a language model predicts the next character from "
                         "the past only, so it cannot read the sequence backwards")
    positive = ("layers", "hidden", "embed", "seq_len", "batch_size", "steps", "eval_every",
                "log_every")
    for key in positive:
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if not 0 < cfg["val_fraction"] < 1:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {cfg['val_fraction']}")
    for key in ("lr", "clip", "weight_decay", "momentum", "min_lr", "gamma", "forget_bias",
                "dropout"):
        if key in cfg and not math.isfinite(cfg[key]):
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {cfg[key]}")
    if not cfg["lr"] > 0:
        raise ValueError(f"--lr must be > 0, got {cfg['lr']}")
    if cfg["clip"] < 0:
        raise ValueError(f"--clip must be >= 0 (0 turns clipping off), got {cfg['clip']}")
    if cfg["nesterov"] and cfg["optimizer"] != "sgd":
        raise ValueError("--nesterov needs --optimizer sgd")
    cfg["residual"] = None if cfg["residual"] in (None, "none") else cfg["residual"]
    try:
        Options.from_config(cfg).validated(cfg["hidden"])
    except (TypeError, ValueError) as err:
        option, rest = str(err).split(" ", 1)  # messages begin with the option's name
        raise ValueError(f"--{option.replace('_', '-')} {rest}") from None


def set_blas_threads(n: int) -> bool:
    """Limit the OpenBLAS thread pool NumPy is using to ``n`` threads; False if not found.

    The small GEMMs of a recurrent step gain little from threads, and on a CPU shared with
    other work a second spinning thread can cost more than it gives.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    libraries = {line.split()[-1] for line in maps.splitlines()
                 if "openblas" in line.lower() and line.split()[-1].startswith("/")}
    done = False
    for library in sorted(libraries):
        try:
            handle = ctypes.CDLL(library)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(handle, name, None)
            if setter is not None:
                setter(int(n))
                done = True
                break
    return done


# ============================================================================ data
class Vocab:
    """Characters ↔ integer ids (sorted, so the same text always gives the same ids)."""

    def __init__(self, chars):
        self.chars = sorted(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text) -> np.ndarray:
        """Ids of every character: code points looked up in the sorted table by bisection."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        table = np.array([ord(ch) for ch in self.chars], dtype=np.uint32)
        ids = np.searchsorted(table, codes)
        found = table[np.minimum(ids, len(table) - 1)] == codes
        if not found.all():
            missing = chr(int(codes[np.argmin(found)]))
            raise CorpusError(f"the text has character {missing!r}, which the "
                              "checkpoint's vocabulary lacks")
        return ids.astype(np.int32)


class Streams:
    """A text cut into B contiguous streams, read T characters at a time.

    Stream b covers ids[b·L : (b+1)·L + 1]; window w gives inputs (T, B) =
    ids[b·L + w·T + t] and targets shifted by one character. W = ⌊L / T⌋ windows.
    """

    def __init__(self, ids, batch_size, seq_len, device, what="text"):
        L = (len(ids) - 1) // batch_size
        self.windows = L // seq_len
        if self.windows < 1:
            need = batch_size * seq_len + 1
            raise CorpusError(f"the {what} has {len(ids)} characters, fewer than one window "
                              f"needs ({need} = --batch-size {batch_size} × --seq-len "
                              f"{seq_len} + 1)")
        self.seq_len = seq_len
        used = L * batch_size
        inputs = ids[:used].reshape(batch_size, L).T
        targets = ids[1:used + 1].reshape(batch_size, L).T
        self.inputs = backend.to_device(np.ascontiguousarray(inputs), device)
        self.targets = backend.to_device(np.ascontiguousarray(targets), device)

    def window(self, w):
        s = slice(w * self.seq_len, (w + 1) * self.seq_len)
        return self.inputs[s], self.targets[s]


def load_text(cfg) -> corpora.Corpus:
    if cfg["data"]:
        return corpora.load_file(cfg["data"], cfg["encoding"])
    return corpora.load_corpus(cfg["corpus"], seed=cfg["seed"])


def split_text(ids, val_fraction):
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val:]


# ============================================================================ evaluation
def evaluate(model: CharLM, streams: Streams, max_windows=None) -> float:
    """Mean validation loss (nats/char), state carried across windows from a fresh start."""
    total, count, state = 0.0, 0, None
    windows = streams.windows if max_windows is None else min(streams.windows, max_windows)
    with model.inference():
        for w in range(windows):
            x, y = streams.window(w)
            loss, state = model.loss(x, y, state)
            total = total + loss
            count += 1
    return float(total) / count


# ============================================================================ run state
class Run:
    """Everything a training run owns: model, optimizer, data, files, counters."""

    def __init__(self, cfg, corpus, vocab, out_dir=None):
        self.cfg, self.corpus, self.vocab = cfg, corpus, vocab
        self.out = None if out_dir is None else Path(out_dir)
        ids = vocab.encode(corpus.text)
        train_ids, val_ids = split_text(ids, cfg["val_fraction"])
        device = cfg["device"]
        source = cfg["data"] or f"--corpus {corpus.name}"
        self.train = Streams(train_ids, cfg["batch_size"], cfg["seq_len"], device,
                             f"training split of {source}")
        eval_batch = cfg["batch_size"]
        self.val = Streams(val_ids, eval_batch, cfg["seq_len"], device,
                           f"validation split of {source} (--val-fraction "
                           f"{cfg['val_fraction']})")
        self.eval_windows = (max(1, cfg["eval_chars"] // (eval_batch * cfg["seq_len"]))
                             if cfg["eval_chars"] else None)
        self.model = CharLM.from_config(cfg, len(vocab.chars), device)
        self.optimizer = optim.make_optimizer(
            cfg["optimizer"], self.model.params, momentum=cfg["momentum"],
            nesterov=cfg["nesterov"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
            alpha=cfg["alpha"], weight_decay=cfg["weight_decay"])
        self.schedule = optim.Schedule(cfg["schedule"], cfg["lr"], warmup=cfg["warmup"],
                                       total_steps=cfg["steps"], step_size=cfg["step_size"],
                                       gamma=cfg["gamma"], min_lr=cfg["min_lr"])
        self.step, self.state, self.best_val, self.elapsed = 0, None, math.inf, 0.0
        self.ext = "." + cfg["format"]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_arrays(self):
        arrays = {PARAM_PREFIX + k: backend.to_numpy(v) for k, v in self.model.params.items()}
        slots, _ = self.optimizer.state_dict()
        arrays.update({"optim/" + k: v for k, v in slots.items()})
        if self.state is not None:
            parts = self.state if isinstance(self.state, tuple) else (self.state,)
            arrays.update({f"state/{i}": backend.to_numpy(s) for i, s in enumerate(parts)})
        return arrays

    def checkpoint_meta(self):
        _, scalars = self.optimizer.state_dict()
        return {"config": self.cfg, "vocab": self.vocab.chars, "step": self.step,
                "rng": self.model.rnn.rng.get_state(), "optimizer": scalars,
                "best_val": None if math.isinf(self.best_val) else self.best_val,
                "elapsed": self.elapsed, "corpus": {"name": self.corpus.name,
                                                   "floor_bpc": self.corpus.floor_bpc}}

    def save(self, name):
        if not all(bool(backend.xp_of(v).isfinite(v).all())
                   for v in self.model.params.values()):
            raise TrainingError("parameters hold NaN/Inf; not overwriting the last good "
                                f"checkpoint in {self.out}")
        return save(self.out / (name + self.ext), self.checkpoint_arrays(),
                    self.checkpoint_meta())

    def restore(self, path, arrays, meta):
        """Continue from a checkpoint: optimizer slots, RNG, carried state, counters."""
        try:
            slots = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
            self.optimizer.load_state_dict(slots, meta["optimizer"], self.cfg["device"])
            self.model.rnn.rng.set_state(meta["rng"])
            parts = [arrays[f"state/{i}"] for i in range(2) if f"state/{i}" in arrays]
            parts = [backend.to_device(p, self.cfg["device"], self.model.dtype) for p in parts]
            self.state = None if not parts else (tuple(parts) if len(parts) == 2 else parts[0])
            self.step, self.elapsed = int(meta["step"]), float(meta["elapsed"])
            self.best_val = math.inf if meta["best_val"] is None else float(meta["best_val"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from None


# ============================================================================ reporting
class Reporter:
    """Progress bar, eval lines, metrics.jsonl and the loss-curve PNG."""

    def __init__(self, run: Run, resumed_step: int):
        self.run, self.cfg = run, run.cfg
        self.metrics_path = run.out / "metrics.jsonl"
        self.tty = sys.stderr.isatty() and not self.cfg["quiet"]
        kept = []
        if resumed_step and self.metrics_path.exists():  # drop lines from after the checkpoint
            for line in self.metrics_path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resumed_step:
                        kept.append(line)
                except (ValueError, KeyError):
                    continue
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def record(self, entry: dict):
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def progress(self, step, loss, chars_per_s, lr, elapsed):
        steps, budget = self.cfg["steps"], self.cfg["time"]
        fraction = max(step / steps, elapsed / budget if budget else 0.0)
        done = min(30, int(30 * fraction))
        line = (f"[{'#' * done}{'.' * (30 - done)}] step {step}/{steps}  {elapsed:.0f} s  "
                f"loss {loss:.4f}  bpc {loss / LN2:.3f}  {chars_per_s / 1000:.1f}k chars/s  "
                f"lr {lr:.2e}")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif not self.cfg["quiet"] and step % (10 * self.cfg["log_every"]) == 0:
            print(line, file=sys.stderr, flush=True)

    def evaluation(self, step, val_loss, sample):
        floor = self.run.corpus.floor_bpc
        bpc = val_loss / LN2
        entry = {"kind": "eval", "step": step, "val_loss": val_loss, "val_bpc": bpc,
                 "val_ppl": math.exp(val_loss)}
        text = (f"eval step {step}: val loss {val_loss:.4f} nats  {bpc:.4f} bits/char  "
                f"ppl {math.exp(val_loss):.3f}")
        if floor is not None:
            entry["floor_bpc"], entry["gap_bpc"] = floor, bpc - floor
            text += f"  floor {floor:.4f}  gap {bpc - floor:+.4f} bpc"
        self.record(entry)
        if self.cfg["quiet"]:
            return
        if self.tty:
            print(file=sys.stderr)
        print(text, flush=True)
        print("  sample: " + sample.replace("\n", "\n          "), flush=True)

    def plot(self):
        if not self.cfg["plot"]:
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import matplotlib.ticker
        except ImportError:
            return
        entries = [json.loads(line) for line in self.metrics_path.read_text().splitlines()]
        train = [(e["step"], e["bpc"]) for e in entries if e["kind"] == "train"]
        val = [(e["step"], e["val_bpc"]) for e in entries if e["kind"] == "eval"]
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train, strict=True), label="train", lw=1)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation")
        if self.run.corpus.floor_bpc is not None:
            ax.axhline(self.run.corpus.floor_bpc, color="k", ls="--", lw=1,
                       label=f"floor {self.run.corpus.floor_bpc:.3f}")
        ax.set_xlabel("step")
        ax.set_yscale("log")  # the approach to the floor, not just the first drop
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_ylabel("bits per character (log scale)")
        ax.set_title(f"{self.run.corpus.name}: {self.cfg['cell']} {self.cfg['layers']}×"
                     f"{self.cfg['hidden']}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.run.out / "loss.png", dpi=100)
        plt.close(fig)


# ============================================================================ the loop
class StopFlag:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def train_loop(run: Run, reporter: Reporter, stop: StopFlag):
    """Run steps until --steps, --time or Ctrl-C; returns why it stopped."""
    cfg, model, xp = run.cfg, run.model, run.model.xp
    params, grads = model.params, model.grads
    loss_sum, loss_count = xp.zeros((), dtype=model.dtype), 0
    tick, chars = time.perf_counter(), 0
    start_elapsed = run.elapsed
    t0 = time.perf_counter()
    chars_per_step = cfg["batch_size"] * cfg["seq_len"]
    while run.step < cfg["steps"]:
        w = run.step % run.train.windows
        if w == 0:
            run.state = None
        x, y = run.train.window(w)
        model.zero_grad()
        grads = model.grads
        loss, run.state = model.loss(x, y, run.state)
        model.backward()
        grad_norm = optim.clip_grad_norm(grads, cfg["clip"])
        lr = run.schedule(run.step)
        run.optimizer.step(params, grads, lr)
        run.step += 1
        loss_sum, loss_count, chars = loss_sum + loss, loss_count + 1, chars + chars_per_step
        run.elapsed = start_elapsed + time.perf_counter() - t0
        if run.step % cfg["log_every"] == 0 or run.step == cfg["steps"]:
            mean = float(loss_sum) / loss_count  # the one host sync per log interval
            if not math.isfinite(mean):
                kept = (f"the last good checkpoint in {run.out} is kept"
                        if run.out is not None and any(run.out.glob("last.*"))
                        else "no checkpoint had been written yet")
                raise TrainingError(f"loss became {mean} by step {run.step}; stopped ({kept}); "
                                    "try a lower --lr or --clip")
            now = time.perf_counter()
            rate = chars / (now - tick)
            reporter.record({"kind": "train", "step": run.step, "loss": mean,
                             "bpc": mean / LN2, "grad_norm": float(grad_norm), "lr": lr,
                             "chars_per_s": rate, "elapsed": run.elapsed})
            reporter.progress(run.step, mean, rate, lr, run.elapsed)
            loss_sum, loss_count, tick, chars = xp.zeros((), dtype=model.dtype), 0, now, 0
        if run.step % cfg["eval_every"] == 0 or run.step == cfg["steps"]:
            evaluate_and_save(run, reporter)
            tick = time.perf_counter()
        if stop.requested:
            return "interrupted"
        if cfg["time"] and run.elapsed >= cfg["time"]:
            return "time"
    return "steps"


def evaluate_and_save(run: Run, reporter: Reporter):
    val = evaluate(run.model, run.val, run.eval_windows)
    if not math.isfinite(val):
        raise TrainingError(f"validation loss is {val} at step {run.step}; stopped, keeping "
                            f"the last good checkpoint in {run.out}")
    sample = generate(run.model, run.vocab.chars, "", run.cfg["sample_length"],
                      run.cfg["temperature"], seed=run.cfg["seed"] + run.step)
    improved = val < run.best_val
    if improved:
        run.best_val = val
    reporter.evaluation(run.step, val, sample)
    run.save("last")
    if improved:
        run.save("best")
    reporter.plot()


# ============================================================================ set-up
def resolve_out_dir(cfg, resume_path) -> Path:
    if resume_path is not None:
        return Path(cfg["out"]) if cfg.get("out") else resume_path.parent
    if cfg["out"]:
        out = Path(cfg["out"])
        if any(out.glob("*.npz")) or any(out.glob("*.safetensors")):
            if not cfg["overwrite"]:
                raise ValueError(f"--out {out} already holds checkpoints: pass --resume "
                                 f"{out} to continue or --overwrite to start afresh")
        return out
    name = Path(cfg["data"]).stem if cfg["data"] else cfg["corpus"]
    base = Path("runs") / f"{name}-{cfg['cell']}"
    out, n = base, 1
    while out.exists() and any(out.iterdir()):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def find_checkpoint(path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in ("last.npz", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no last.npz or last.safetensors in this directory")
    return path


def prepare(argv):
    """Parse, validate, load data and any checkpoint; nothing is written yet."""
    args = build_parser().parse_args(argv)
    cfg = vars(args)
    resume_path, arrays, meta = None, None, None
    if cfg["resume"]:
        resume_path = find_checkpoint(cfg["resume"])
        model, vocab_chars, arrays, meta = load_model(resume_path, cfg["device"])
        saved = {**vars(build_parser().parse_args([])), **meta["config"]}  # newer flags: defaults
        given = explicit_flags(argv) - {"resume", "out", "overwrite"}
        check_config(cfg)
        clashes = [k for k in sorted(given - RESUMABLE) if cfg[k] != saved.get(k)]
        if clashes:
            k = clashes[0]
            raise CheckpointError(f"{resume_path}: incompatible with --{k.replace('_', '-')} "
                                  f"{cfg[k]} (the checkpoint was trained with {saved.get(k)})")
        saved.update({k: cfg[k] for k in given & RESUMABLE})
        saved.update(resume=cfg["resume"], out=cfg["out"], overwrite=False)
        cfg = saved
        vocab = Vocab(vocab_chars)
    else:
        check_config(cfg)
    corpus = load_text(cfg)
    if resume_path is None:
        vocab = Vocab.from_text(corpus.text)
    run = Run(cfg, corpus, vocab)  # checks that both splits hold a window
    run.out = resolve_out_dir(cfg, resume_path)
    if resume_path is not None:
        run.model.load_arrays({k[len(PARAM_PREFIX):]: v for k, v in arrays.items()
                               if k.startswith(PARAM_PREFIX)})
        run.restore(resume_path, arrays, meta)
    return run


def describe(run: Run):
    cfg, m = run.cfg, run.model
    floor = run.corpus.floor_bpc
    print(f"corpus {run.corpus.name}: {len(run.corpus.text):,} chars, vocab "
          f"{len(run.vocab.chars)}, uniform {math.log2(len(run.vocab.chars)):.3f} bpc"
          + (f", floor {floor:.4f} bpc ({run.corpus.floor_note})" if floor is not None else ""))
    print(f"model: embed {cfg['embed']} → {m.rnn!r} → head; {m.num_parameters():,} "
          f"parameters; impl {m.rnn.impl_in_use}")
    print(f"training: {cfg['optimizer']} lr {cfg['lr']} ({cfg['schedule']}), batch "
          f"{cfg['batch_size']} × seq {cfg['seq_len']}, {cfg['steps']} steps"
          + (f" or {cfg['time']:.0f} s" if cfg["time"] else "") + f"; run dir {run.out}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run = prepare(argv)
    except (CorpusError, CheckpointError, ValueError, RuntimeError) as err:
        print(f"rnncore.train: error: {err}", file=sys.stderr)
        return 2
    if run.cfg.get("threads") and "OPENBLAS_NUM_THREADS" not in os.environ:
        set_blas_threads(run.cfg["threads"])
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "config.json").write_text(json.dumps(run.cfg, indent=2) + "\n")
    reporter = Reporter(run, run.step)
    if not run.cfg["quiet"]:
        describe(run)
        if run.step:
            print(f"resumed at step {run.step}")
    stop = StopFlag()
    previous = signal.signal(signal.SIGINT, stop)
    started = time.perf_counter()
    try:
        why = train_loop(run, reporter, stop)
    except TrainingError as err:
        print(f"\nrnncore.train: error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    if run.step % run.cfg["eval_every"] and run.step < run.cfg["steps"]:
        evaluate_and_save(run, reporter)  # stopped between evaluations: save here
    wall = time.perf_counter() - started
    last = run.out / ("last" + run.ext)
    if why == "interrupted":
        print(f"\ninterrupted at step {run.step}; saved {last}; continue with "
              f"--resume {run.out}", file=sys.stderr)
        return 130
    floor = run.corpus.floor_bpc
    best_bpc = run.best_val / LN2
    print(f"done: {run.step} steps in {wall:.1f} s; best validation {best_bpc:.4f} bits/char"
          + (f" (floor {floor:.4f}, gap {best_bpc - floor:+.4f})" if floor is not None else "")
          + f"; checkpoints in {run.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
