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
was never stopped. Only the settings of a run's length and reporting may change on resume
(--steps, --time, --eval-every, --eval-chars, --log-every, --sample-length, --temperature,
--device, --threads, --quiet, --no-plot; --distributed and --comm-timeout always come from
the command line). The cosine schedule's horizon (--schedule-steps,
default --steps) is fixed when the run starts: a resume that raises --steps goes on at
--min-lr after the old horizon, bitwise as a run started with the new --steps and
--schedule-steps set to the old one. Ctrl-C finishes the current step, saves, and exits.

Data-parallel: ``mpiexec -n N python -m rnncore.train --distributed …`` trains on N ranks,
each on B/N of the streams, summing the gradients (rnncore.distributed); rank 0 evaluates,
logs and writes the checkpoints, which hold the whole batch's state, so a checkpoint
resumes on any number of ranks, one process included.

An --out that holds another run's checkpoints or metrics is never written without
--overwrite, also on --resume. Checkpoints are written atomically; a diverging run stops
with a one-line error and keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from threadpoolctl import threadpool_limits

from . import backend, distributed, optim, runcheckpoint, runconfig
from .charlm import CharLM
from .checkpoint import CheckpointError, save
from .corpora import CorpusError
from .evaluation import evaluate
from .runcheckpoint import as_state, run_arrays
from .runconfig import RESUMABLE, ConfigError
from .sample import generate
from .textdata import Streams, Vocab, load_text, split_text, text_hash

__all__ = ["Streams", "Vocab", "evaluate", "split_text", "load_text", "build_parser",
           "check_config", "main", "RESUMABLE", "TrainingError"]

LN2 = math.log(2.0)
EXP_MAX = 709.0  # math.exp overflows a float above about 709.78


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss); the last good checkpoint is kept."""


class StoppedByRankZero(Exception):
    """Rank 0 stopped a distributed run and has said why."""


# ============================================================================ command line
METAVARS = {"data": "FILE", "resume": "PATH", "out": "DIR"}


def build_parser() -> argparse.ArgumentParser:
    """The flags, one per key of rnncore.runconfig.OPTIONS (help, defaults and choices)."""
    ap = argparse.ArgumentParser(prog="python -m rnncore.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.error = lambda message: _fail(f"{message} (see --help)")  # one line, no usage dump
    groups = {}
    for o in runconfig.OPTIONS:
        group = groups.get(o.group) or groups.setdefault(o.group, ap.add_argument_group(o.group))
        if o.kind is bool and o.default is True:
            group.add_argument(f"--no-{o.key.replace('_', '-')}", dest=o.key,
                               action="store_false", help=o.help)
        elif o.kind is bool:
            group.add_argument(o.flag, action="store_true", help=o.help)
        else:
            group.add_argument(o.flag, type=o.kind, default=o.default, choices=o.choices,
                               metavar=METAVARS.get(o.key), help=o.help)
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
    """Validate ``cfg`` in place with rnncore.runconfig's rules (ConfigError, a ValueError),
    leaving it as the engine takes it (``residual`` None for no residual)."""
    cfg.update(runconfig.for_model(runconfig.validate(cfg)))


def blas_threads(n: int):
    """A context that limits the BLAS pools to ``n`` threads (0 or OPENBLAS_NUM_THREADS
    in the environment: leave them). The small GEMMs of a recurrent step gain little from
    threads, and on a CPU shared with other work a second spinning thread costs more."""
    if not n or "OPENBLAS_NUM_THREADS" in os.environ:
        return nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


# ============================================================================ run state
class Run:
    """Everything a training run owns: model, optimizer, data, files, counters."""

    def __init__(self, cfg, corpus, vocab, out_dir=None, world=None):
        self.cfg, self.corpus, self.vocab, self.world = cfg, corpus, vocab, world
        self.out = None if out_dir is None else Path(out_dir)
        ids = vocab.encode(corpus.text)
        train_ids, val_ids = split_text(ids, cfg["val_fraction"])
        device = cfg["device"]
        source = cfg["data"] or f"--corpus {corpus.name}"
        self.train = Streams(train_ids, cfg["batch_size"], cfg["seq_len"], device,
                             f"training split of {source}")
        # this process's streams; a rank's loss is divided by the whole batch's positions
        self.rows, self.positions = (0, cfg["batch_size"]), None
        if world is not None:
            self.rows = world.share(cfg["batch_size"])
            self.train = self.train.streams(*self.rows)
            self.positions = cfg["batch_size"] * cfg["seq_len"]
        eval_batch = cfg["batch_size"]
        self.val = Streams(val_ids, eval_batch, cfg["seq_len"], device,
                           f"validation split of {source} (--val-fraction "
                           f"{cfg['val_fraction']})")
        self.eval_windows = (max(1, cfg["eval_chars"] // (eval_batch * cfg["seq_len"]))
                             if cfg["eval_chars"] else None)
        self.model = CharLM.from_config(runconfig.for_model(cfg), len(vocab.chars), device)
        self.optimizer = optim.make_optimizer(
            cfg["optimizer"], self.model.params, momentum=cfg["momentum"],
            nesterov=cfg["nesterov"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
            alpha=cfg["alpha"], weight_decay=cfg["weight_decay"])
        self.schedule = optim.Schedule(cfg["schedule"], cfg["lr"], warmup=cfg["warmup"],
                                       total_steps=cfg["schedule_steps"],
                                       step_size=cfg["step_size"], gamma=cfg["gamma"],
                                       min_lr=cfg["min_lr"])
        self.text_sha256 = text_hash(corpus.text)
        self.source_metrics = None  # metrics.jsonl of the run resumed from
        self.resumed_world_size = 1  # ranks of the run resumed from
        self.step, self.state, self.best_val, self.elapsed = 0, None, math.inf, 0.0
        self.ext = "." + cfg["format"]

    # ------------------------------------------------------------------ checkpoints
    def batch_share(self):
        """The context of a training step: a rank draws masks for the whole batch."""
        if self.world is None:
            return nullcontext()
        return self.model.rnn.rng.batch_share(*self.rows, self.cfg["batch_size"])

    def checkpoint_arrays(self, state):
        """Parameters, optimizer slots and ``state``, the whole batch's carried state."""
        params = {k: backend.to_numpy(v) for k, v in self.model.params.items()}
        slots, _ = self.optimizer.state_dict()
        if state is not None:
            parts = state if isinstance(state, tuple) else (state,)
            state = tuple(backend.to_numpy(s) for s in parts)
        return run_arrays(params, slots, state)

    def checkpoint_meta(self):
        _, scalars = self.optimizer.state_dict()
        return {"config": self.cfg, "vocab": self.vocab.chars, "step": self.step,
                "rng": self.model.rnn.rng.get_state(), "optimizer": scalars,
                "best_val": None if math.isinf(self.best_val) else self.best_val,
                "elapsed": self.elapsed, "corpus": {"name": self.corpus.name,
                                                   "floor_bpc": self.corpus.floor_bpc},
                "text_sha256": self.text_sha256,
                "world_size": 1 if self.world is None else self.world.size}

    def save(self, name, state):
        if not all(bool(backend.xp_of(v).isfinite(v).all())
                   for v in self.model.params.values()):
            raise TrainingError("parameters hold NaN/Inf; not overwriting the last good "
                                f"checkpoint in {self.out}")
        return save(self.out / (name + self.ext), self.checkpoint_arrays(state),
                    self.checkpoint_meta())

    def restore(self, path, loaded):
        """Continue from a checkpoint: parameters, optimizer slots, RNG, state, counters."""
        try:
            self.model.load_arrays(loaded.params)
            self.optimizer.load_state_dict(loaded.slots, loaded.meta["optimizer"],
                                           self.cfg["device"])
            self.model.rnn.rng.set_state(loaded.meta["rng"])
            batch, (start, stop) = self.cfg["batch_size"], self.rows
            if any(p.ndim != 3 or p.shape[1] != batch for p in loaded.state):
                raise ValueError(f"its carried state is not {batch} streams wide")
            parts = [backend.to_device(p[:, start:stop], self.cfg["device"], self.model.dtype)
                     for p in loaded.state]
            self.state = as_state(parts)
            self.step, self.elapsed = loaded.meta["step"], float(loaded.meta["elapsed"])
            best = loaded.meta["best_val"]
            self.best_val = math.inf if best is None else float(best)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from None


# ============================================================================ reporting
class Reporter:
    """Progress bar, eval lines, metrics.jsonl and the loss-curve PNG."""

    def __init__(self, run: Run, resumed_step: int):
        self.run, self.cfg = run, run.cfg
        self.metrics_path = run.out / "metrics.jsonl"
        self.tty = sys.stderr.isatty() and not self.cfg["quiet"]
        kept = []
        source = run.source_metrics or self.metrics_path  # a resume into a new --out: copy
        if resumed_step and source.exists():  # drop lines from after the checkpoint
            for line in source.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resumed_step:
                        kept.append(line)
                except (ValueError, KeyError):
                    continue
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def record(self, entry: dict):
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def progress(self, step, loss, chars_per_s, lr, elapsed, comm_ms=None):
        steps, budget = self.cfg["steps"], self.cfg["time"]
        fraction = max(step / steps, elapsed / budget if budget else 0.0)
        done = min(30, int(30 * fraction))
        line = (f"[{'#' * done}{'.' * (30 - done)}] step {step}/{steps}  {elapsed:.0f} s  "
                f"loss {loss:.4f}  bpc {loss / LN2:.3f}  {chars_per_s / 1000:.1f}k chars/s  "
                f"lr {lr:.2e}" + ("" if comm_ms is None else f"  comm {comm_ms:.1f} ms/step"))
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif not self.cfg["quiet"] and step % (10 * self.cfg["log_every"]) == 0:
            print(line, file=sys.stderr, flush=True)

    def evaluation(self, step, val_loss, sample):
        floor = self.run.corpus.floor_bpc
        bpc = val_loss / LN2
        ppl = math.exp(val_loss) if val_loss < EXP_MAX else None  # None: beyond a float
        entry = {"kind": "eval", "step": step, "val_loss": val_loss, "val_bpc": bpc,
                 "val_ppl": ppl, "elapsed": self.run.elapsed}  # at the step, before the eval
        text = (f"eval step {step}: val loss {val_loss:.4f} nats  {bpc:.4f} bits/char  "
                f"ppl {'> 1e307' if ppl is None else f'{ppl:.3f}'}")
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


def train_loop(run: Run, reporter: Reporter | None, stop: StopFlag):
    """Run steps until --steps, --time or Ctrl-C; returns why it stopped. On a distributed
    run every rank calls it (``reporter`` None but on rank 0), and the ranks' stop votes
    ride with the gradient sum, so all stop after the same step."""
    cfg, model, xp, world = run.cfg, run.model, run.model.xp, run.world
    params, grads = model.params, model.grads
    loss_sum, loss_count = xp.zeros((), dtype=model.dtype), 0
    tick, chars = time.perf_counter(), 0
    start_elapsed = run.elapsed
    t0 = time.perf_counter()
    chars_per_step = cfg["batch_size"] * cfg["seq_len"]
    comm_mark = 0.0 if world is None else world.comm_seconds
    ledger = None
    if cfg.get("gradflow_every"):  # rnncore.ledger: free when off
        from .ledger import Ledger

        ledger = run.ledger = Ledger(cfg["gradflow_every"])
    while run.step < cfg["steps"]:
        w = run.step % run.train.windows
        if w == 0:
            run.state = None
        x, y = run.train.window(w)
        model.zero_grad()
        grads = model.grads
        rec = ledger.recorder(run.step) if ledger is not None else None
        with run.batch_share():
            loss, run.state = model.loss(x, y, run.state, run.positions)
            model.backward(recorder=rec)
        if rec is not None:
            ledger.add(run.step, rec, model.rnn)
        if world is not None:  # clipping and the update see the whole batch's gradient
            out_of_time = bool(cfg["time"]) and \
                start_elapsed + time.perf_counter() - t0 >= cfg["time"]
            loss, interrupts, timeouts = world.all_reduce(grads, [loss, stop.requested,
                                                                  out_of_time])
        grad_norm = optim.clip_grad_norm(grads, cfg["clip"])
        lr = run.schedule(run.step)
        run.optimizer.step(params, grads, lr)
        run.step += 1
        loss_sum, loss_count, chars = loss_sum + loss, loss_count + 1, chars + chars_per_step
        run.elapsed = start_elapsed + time.perf_counter() - t0
        if run.step % cfg["log_every"] == 0 or run.step == cfg["steps"]:
            mean = float(loss_sum) / loss_count  # the one host sync per log interval
            if not math.isfinite(mean):
                raise TrainingError(f"loss became {mean} by step {run.step}; stopped "
                                    f"({kept_note(run)}); try a lower --lr or --clip")
            now = time.perf_counter()
            rate = chars / (now - tick)
            entry = {"kind": "train", "step": run.step, "loss": mean, "bpc": mean / LN2,
                     "grad_norm": float(grad_norm), "lr": lr, "chars_per_s": rate,
                     "elapsed": run.elapsed}
            if world is not None:  # time inside the gradient sum, waiting for peers included
                entry["comm_ms_per_step"] = 1000 * (world.comm_seconds - comm_mark) / loss_count
                comm_mark = world.comm_seconds
            if reporter is not None:
                reporter.record(entry)
                reporter.progress(run.step, mean, rate, lr, run.elapsed,
                                  entry.get("comm_ms_per_step"))
            loss_sum, loss_count, tick, chars = xp.zeros((), dtype=model.dtype), 0, now, 0
        if run.step % cfg["eval_every"] == 0 or run.step == cfg["steps"]:
            evaluate_and_save(run, reporter)
            tick = time.perf_counter()
        if stop.requested if world is None else interrupts:
            return "interrupted"
        if (cfg["time"] and run.elapsed >= cfg["time"]) if world is None else timeouts:
            return "time"
    return "steps"


def kept_note(run: Run) -> str:
    if run.out is not None and any(run.out.glob("last.*")):
        return f"the last good checkpoint in {run.out} is kept"
    return "no checkpoint had been written yet"


def evaluate_and_save(run: Run, reporter: Reporter | None):
    """Validation, a sample and the checkpoints; on a distributed run rank 0 does them
    with the state gathered from every rank, and tells the others whether to go on."""
    world = run.world
    if world is None:
        return evaluate_and_save_here(run, reporter, run.state)
    state = world.gather_rows(run.state, run.cfg["batch_size"])
    if world.rank == 0:
        try:
            evaluate_and_save_here(run, reporter, state)
        except (TrainingError, OSError):
            world.broadcast_code(1, "rank 0's evaluation")
            raise
    if world.broadcast_code(0, "rank 0's evaluation and checkpoint"):
        raise StoppedByRankZero


def evaluate_and_save_here(run: Run, reporter: Reporter, state):
    val = evaluate(run.model, run.val, run.eval_windows)
    if not math.isfinite(val):
        raise TrainingError(f"validation loss is {val} at step {run.step}; stopped "
                            f"({kept_note(run)}); try a lower --lr or --clip")
    try:
        sample = generate(run.model, run.vocab.chars, "", run.cfg["sample_length"],
                          run.cfg["temperature"], seed=run.cfg["seed"] + run.step)
    except ValueError as err:
        raise TrainingError(f"sampling at step {run.step} failed: {err}; stopped "
                            f"({kept_note(run)})") from None
    improved = val < run.best_val
    if improved:
        run.best_val = val
    reporter.evaluation(run.step, val, sample)
    run.save("last", state)
    if improved:
        run.save("best", state)
    reporter.plot()
    if getattr(run, "ledger", None) is not None:
        run.ledger.save(run.out)


# ============================================================================ set-up
RUN_FILES = ("last.npz", "last.safetensors", "best.npz", "best.safetensors", "metrics.jsonl")


def check_out_path(out: Path):
    """--out must be a directory or not exist yet, under a directory."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                which = "names a file" if path == out else f"lies under the file {path}"
                raise ConfigError(f"--out {out} {which}; give a directory")
            return


def resolve_out_dir(cfg, resume_path) -> Path:
    """The run directory. Never one holding another run's files without --overwrite."""
    if cfg["out"]:
        out = Path(cfg["out"])
        check_out_path(out)
        same_run = resume_path is not None and out.resolve() == resume_path.parent.resolve()
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held and not same_run and not cfg["overwrite"]:
            hint = (f"pass --resume {out} to continue it, " if resume_path is None else "")
            raise ConfigError(f"--out {out} already holds another run's files "
                              f"({', '.join(held)}): {hint}choose another --out, or pass "
                              "--overwrite to replace them")
        return out
    if resume_path is not None:
        return resume_path.parent
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


def resumed_config(cfg, argv, loaded, resume_path):
    """The checkpoint's config with the resumable flags given on the command line."""
    saved = loaded.config
    given = explicit_flags(argv) - runconfig.INVOCATION
    clashes = [k for k in sorted(given - RESUMABLE) if cfg[k] != saved[k]]
    if clashes:
        k = clashes[0]
        raise CheckpointError(f"{resume_path}: incompatible with --{k.replace('_', '-')} "
                              f"{cfg[k]} (the checkpoint was trained with {saved[k]})")
    merged = {**saved, **{k: cfg[k] for k in given & RESUMABLE}}
    merged.update({k: cfg[k] for k in runconfig.INVOCATION})
    return runconfig.validate(merged)


def connect(argv):
    """The MPI world when --distributed is given (rnncore.distributed), else None. The
    other flags are checked afterwards, so that rank 0 alone reports their problems."""
    flags = vars(build_parser().parse_args(argv))
    if not flags["distributed"]:
        return None
    timeout = runconfig.check_option("comm_timeout", flags["comm_timeout"])
    return distributed.connect(timeout, "rnncore.train")


def prepare(argv, world=None):
    """Parse, validate, load data and any checkpoint; nothing is written yet. Only rank 0
    of a distributed run (``world``) gets a run directory."""
    cfg = runconfig.validate(vars(build_parser().parse_args(argv)))
    resume_path = loaded = None
    if cfg["resume"]:
        resume_path = find_checkpoint(cfg["resume"])
        loaded = runcheckpoint.read(resume_path)
        cfg = resumed_config(cfg, argv, loaded, resume_path)
        vocab = Vocab(loaded.vocab)
    elif not cfg["schedule_steps"]:
        cfg["schedule_steps"] = cfg["steps"]
    if world is not None:
        if world.size > cfg["batch_size"]:
            raise ConfigError(f"--distributed over {world.size} ranks needs at least one "
                              f"stream per rank, but --batch-size is {cfg['batch_size']}")
        if cfg["device"] == "cuda":  # one GPU per rank on each machine
            cfg["device"] = f"cuda:{world.local_rank}"
    corpus = load_text(cfg)
    if resume_path is None:
        vocab = Vocab.from_text(corpus.text)
    runconfig.check_memory(cfg, len(vocab.chars))
    run = Run(cfg, corpus, vocab, world=world)  # checks that both splits hold a window
    if world is None or world.rank == 0:
        run.out = resolve_out_dir(cfg, resume_path)
    if resume_path is not None:
        run.restore(resume_path, loaded)
        run.source_metrics = resume_path.parent / "metrics.jsonl"
        run.resumed_world_size = loaded.meta.get("world_size", 1)
        stored = loaded.meta.get("text_sha256")
        if stored is not None and stored != run.text_sha256:
            source = cfg["data"] or f"--corpus {cfg['corpus']}"
            print(f"rnncore.train: warning: {source} is not the text this checkpoint was "
                  "trained on (its SHA-256 differs); training goes on with the new text",
                  file=sys.stderr)
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
    if run.world is not None:
        B, N = cfg["batch_size"], run.world.size
        print(f"distributed: {N} rank(s), {B // N}" + ("" if B % N == 0 else f"–{-(-B // N)}")
              + " streams each; rank 0 evaluates and writes the checkpoints")


def error(message) -> int:
    print(f"rnncore.train: error: {message}", file=sys.stderr)
    return 2


def start(argv, world):
    """(run, reporter, None) ready to train, or (None, None, the one-line reason it cannot
    start). Only rank 0 (or the one process) writes the run directory and has a reporter."""
    try:
        run = prepare(argv, world)
    except (CorpusError, CheckpointError, ValueError, RuntimeError) as err:
        return None, None, str(err)
    except MemoryError:
        return None, None, "out of memory while building the model; try smaller sizes"
    if run.out is None:
        return run, None, None
    try:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.json").write_text(json.dumps(run.cfg, indent=2) + "\n")
        return run, Reporter(run, run.step), None
    except OSError as err:
        return None, None, f"cannot write the run directory {run.out}: {err.strerror or err}"


def start_together(argv, world):
    """``start`` on every rank; all go on only if all started. A problem every rank meets
    (a bad flag value or checkpoint) is printed once, by rank 0; one rank's own, by that
    rank. Returns (run, reporter), or (None, None) when a rank could not start."""
    run, reporter, problem = start(argv, world)
    started = world.all_ok(problem is None, "starting the run")
    if all(started):
        return run, reporter
    if problem is not None and (world.rank == 0 or started[0]):
        error(problem if world.rank == 0 else f"rank {world.rank}: {problem}")
    return None, None


def describe_resume(run: Run):
    print(f"resumed at step {run.step}")
    before, now = run.resumed_world_size, 1 if run.world is None else run.world.size
    if before != now:
        print(f"the checkpoint was written by {before} rank(s), this run has {now}: the "
              f"{run.cfg['batch_size']} streams and their carried state are re-split; the "
              "gradient sum runs in another order, so the losses agree with an unbroken run "
              "to float rounding, not bitwise")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        world = connect(argv)
    except (ValueError, RuntimeError) as err:
        return error(err)
    if world is None:
        run, reporter, problem = start(argv, None)
        if problem is not None:
            return error(problem)
    else:
        run, reporter = start_together(argv, world)
        if run is None:
            return 2
    lead = reporter is not None  # the one process, or rank 0
    if lead and not run.cfg["quiet"]:
        describe(run)
        if run.step:
            describe_resume(run)
    stop = StopFlag()
    previous = signal.signal(signal.SIGINT, stop)
    started = time.perf_counter()
    try:
        with blas_threads(run.cfg["threads"]):
            why = train_loop(run, reporter, stop)
            if run.step % run.cfg["eval_every"] and run.step < run.cfg["steps"]:
                evaluate_and_save(run, reporter)  # stopped between evaluations: save here
    except TrainingError as err:
        if lead:
            print(f"\nrnncore.train: error: {err}", file=sys.stderr)
        return 1
    except StoppedByRankZero:
        return 1
    except OSError as err:
        print(f"\nrnncore.train: error: cannot write to {run.out}: {err.strerror or err}; "
              f"stopped at step {run.step} ({kept_note(run)})", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    wall = time.perf_counter() - started
    if not lead:
        return 130 if why == "interrupted" else 0
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
