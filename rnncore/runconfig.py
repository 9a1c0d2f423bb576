"""The training config: every key, its default, its flag, and the rules a value must obey.

One table (``OPTIONS``) is the schema. The train command builds its flags from it, and a
config read back from a checkpoint is checked by the same :func:`validate`, before
anything is built, so a file can no more ask for ``lr=-1`` or ``eval_every=0`` than the
command line can. Every problem is a one-line :class:`ConfigError` naming the flag.

    validate(cfg)            types, ranges, finite numbers, choices, cross-flag rules
    from_saved(config)       an older checkpoint's config: missing keys get defaults
    check_memory(cfg, V)     refuse a model whose training needs more memory than allowed
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from typing import Any, Callable

from . import backend, cells, optim
from .cells.base import Dims
from .corpora import CORPORA
from .init import INIT_STATES, INITS
from .options import DROPOUT_MODES, IMPLS, Options
from .stack import StackSpec, parameter_shapes

# every registered cell; "rnn" is the older spelling of rnn_tanh / rnn_relu (--nonlinearity)
CELLS = cells.names() + ("rnn",)
# Settings that may change when a run is resumed; every other key must match.
RESUMABLE = {"steps", "time", "device", "eval_every", "eval_chars", "log_every",
             "sample_length", "temperature", "quiet", "plot", "threads"}
# Keys that describe the command invocation, not the run: always the command line's, also
# on --resume (a checkpoint of a distributed run resumes in one process, and the reverse).
INVOCATION = {"resume", "out", "overwrite", "distributed", "comm_timeout"}


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line naming the flag."""


# ---------------------------------------------------------------------------- rules
def at_least(low):
    return lambda v: None if v >= low else f"must be >= {low}"


def in_range(low, high, *, low_open=False, high_open=True):
    def rule(v):
        ok_low = v > low if low_open else v >= low
        ok_high = v < high if high_open else v <= high
        if ok_low and ok_high:
            return None
        return (f"must lie in {'(' if low_open else '['}{low}, {high}"
                f"{')' if high_open else ']'}")
    return rule


def positive(v):
    return None if v > 0 else "must be > 0"


def known_encoding(v):
    try:
        codecs.lookup(v)
    except LookupError:
        return "is not an encoding Python knows"
    return None


def valid_device(v):
    try:
        backend.parse_device(v)
    except (TypeError, ValueError):
        return "must be 'cpu', 'cuda' or 'cuda:N'"
    return None


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    kind: type                      # int, float, str or bool
    group: str
    help: str | None = None
    choices: tuple | None = None
    rule: Callable[[Any], str | None] | None = None
    optional: bool = False          # None is allowed (no value given)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


O = Option
OPTIONS = (
    O("corpus", "words", str, "data", "built-in text (default: words)", choices=CORPORA),
    O("data", None, str, "data", "train on this text file instead", optional=True),
    O("encoding", "utf-8", str, "data", "encoding of --data", rule=known_encoding),
    O("val_fraction", 0.1, float, "data", "tail of the text held out for validation",
      rule=in_range(0, 1, low_open=True)),

    O("cell", "lstm", str, "model", choices=CELLS),
    O("nonlinearity", "tanh", str, "model", "for --cell rnn", choices=("tanh", "relu")),
    O("layers", 2, int, "model", rule=at_least(1)),
    O("hidden", 128, int, "model", rule=at_least(1)),
    O("embed", 32, int, "model", "embedding width", rule=at_least(1)),
    O("proj_size", 0, int, "model", "LSTM projection (LSTMP)", rule=at_least(0)),
    O("residual", "none", str, "model", choices=("none", "layers", "stack"), optional=True),
    O("dropout", 0.0, float, "model", "between layers", rule=in_range(0, 1)),
    O("dropout_mode", "standard", str, "model", choices=DROPOUT_MODES),
    O("zoneout_h", 0.0, float, "model", "zoneout rate on h (Krueger et al. 2016)",
      rule=in_range(0, 1)),
    O("zoneout_c", 0.0, float, "model", "zoneout rate on the LSTM's c", rule=in_range(0, 1)),
    O("recurrent_dropout", 0.0, float, "model",
      "dropout on h_{t-1} inside the recurrence, one mask per sequence (Gal & Ghahramani "
      "2016)", rule=in_range(0, 1)),
    O("weight_drop", 0.0, float, "model",
      "DropConnect on W_hh, one mask per forward pass (AWD-LSTM)", rule=in_range(0, 1)),
    O("init", "pytorch", str, "model", choices=INITS),
    O("init_state", "zeros", str, "model", "state at the start of each pass over the text",
      choices=INIT_STATES),
    O("forget_bias", 0.0, float, "model", "LSTM forget-gate bias"),
    O("bidirectional", False, bool, "model",
      "(refused: a language model cannot see the future)"),
    O("dtype", "float32", str, "model", choices=("float32", "float64")),
    O("impl", "auto", str, "model", "pointwise kernels", choices=IMPLS),
    O("gate_clip", 0.0, float, "model",
      "clip every step's gate pre-activation gradient element-wise to [-c, c] inside "
      "backward (Graves 2013; a modified gradient; 0 = off)", rule=at_least(0)),
    O("h_detach", 0.0, float, "model",
      "LSTM: drop the gradient through h_{t-1} into step t's gates with this probability "
      "per step, keeping the cell path (Kanuparthi et al. 2019; a modified gradient)",
      rule=in_range(0, 1)),
    O("truncate", 0, int, "model",
      "cut the state gradient every k2 steps inside each window (a modified gradient; "
      "0 = off)", rule=at_least(0)),
    O("grad_noise", 0.0, float, "model",
      "add N(0, s^2) to every step's gate gradient inside backward (a modified gradient)",
      rule=at_least(0)),
    O("checkpoint_every", 0, int, "model",
      "recompute: keep the state every k steps, recompute each segment in backward "
      "(0 = keep every step; about sqrt(--seq-len) is the memory-optimal k)",
      rule=at_least(0)),

    O("optimizer", "adam", str, "optimization", choices=optim.OPTIMIZERS),
    O("lr", 4e-3, float, "optimization", rule=positive),
    O("momentum", 0.9, float, "optimization", "sgd", rule=at_least(0)),
    O("nesterov", False, bool, "optimization", "sgd"),
    O("beta1", 0.9, float, "optimization", rule=in_range(0, 1)),
    O("beta2", 0.999, float, "optimization", rule=in_range(0, 1)),
    O("eps", 1e-8, float, "optimization", rule=positive),
    O("alpha", 0.99, float, "optimization", "rmsprop smoothing", rule=in_range(0, 1)),
    O("weight_decay", 0.0, float, "optimization", rule=at_least(0)),
    O("clip", 1.0, float, "optimization", "max global grad norm (0 = off)",
      rule=lambda v: None if v >= 0 else "must be >= 0 (0 turns clipping off)"),
    O("schedule", "cosine", str, "optimization", choices=optim.SCHEDULES),
    O("schedule_steps", 0, int, "optimization",
      "length of the cosine schedule (0 = --steps). Fixed when a run starts and kept on "
      "--resume: a resume that raises --steps continues at --min-lr past the original "
      "horizon, exactly as a run started with the new --steps and this horizon would",
      rule=at_least(0)),
    O("warmup", 50, int, "optimization", "linear warm-up steps", rule=at_least(0)),
    O("step_size", 1000, int, "optimization", "step schedule period", rule=at_least(1)),
    O("gamma", 0.5, float, "optimization", "step schedule factor", rule=positive),
    O("min_lr", 1e-4, float, "optimization", "cosine floor", rule=at_least(0)),

    O("seq_len", 64, int, "run", "BPTT window T", rule=at_least(1)),
    O("batch_size", 32, int, "run", "parallel streams B", rule=at_least(1)),
    O("steps", 2400, int, "run", rule=at_least(1)),
    O("time", 0.0, float, "run",
      "also stop after this many seconds of training (0 = no limit)", rule=at_least(0)),
    O("eval_every", 300, int, "run", rule=at_least(1)),
    O("eval_chars", 100_000, int, "run", "validation characters per evaluation (0 = all)",
      rule=at_least(0)),
    O("log_every", 20, int, "run", rule=at_least(1)),
    O("sample_length", 200, int, "run", rule=at_least(0)),
    O("temperature", 0.7, float, "run", "for the eval samples (0 = greedy)", rule=at_least(0)),
    O("device", "cpu", str, "run", rule=valid_device),
    O("seed", 0, int, "run", rule=in_range(0, 2**63)),
    O("threads", 1, int, "run",
      "BLAS threads (0 = the library's default; OPENBLAS_NUM_THREADS in the environment "
      "wins). One is fastest for these small GEMMs on a CPU shared with other work",
      rule=at_least(0)),
    O("out", None, str, "run", "run directory (default runs/<corpus>-<cell>)", optional=True),
    O("format", "npz", str, "run", choices=("npz", "safetensors")),
    O("resume", None, str, "run", "checkpoint file or run directory", optional=True),
    O("overwrite", False, bool, "run",
      "replace the checkpoints and metrics an --out directory already holds"),
    O("plot", True, bool, "run"),
    O("gradflow_every", 0, int, "run",
      "every N steps record the layer x time gradient norms and gate saturation of that "
      "step's backward and write gradflow.png/gradflow.npz (0 = off)", rule=at_least(0)),
    O("quiet", False, bool, "run", "no progress bar or samples"),

    O("distributed", False, bool, "distributed",
      "data-parallel over MPI: run under 'mpiexec -n N'; each rank trains on B/N of the "
      "streams and the gradients are summed (needs the distributed extra)"),
    O("comm_timeout", 300.0, float, "distributed",
      "seconds a rank waits for the others at a collective, which includes rank 0's "
      "evaluations and checkpoint writes, before it stops the whole job", rule=positive),
)
BY_KEY = {o.key: o for o in OPTIONS}
DEFAULTS = {o.key: o.default for o in OPTIONS}


# ---------------------------------------------------------------------------- checks
def _check_value(option: Option, value):
    """The value in its proper type, or ConfigError naming the flag."""
    flag = option.flag
    if value is None and option.optional:
        return None
    kind = option.kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{flag} must be {'a' if kind is not int else 'an'} "
                          f"{kind.__name__}, got {value!r:.60}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value}")
    if option.choices is not None and value not in option.choices:
        raise ConfigError(f"{flag} must be one of {', '.join(option.choices)}; "
                          f"got {value!r:.60}")
    problem = option.rule(value) if option.rule else None
    if problem:
        raise ConfigError(f"{flag} {problem}, got {value!r:.60}")
    return value


def check_option(key: str, value):
    """One option's value in its proper type, or ConfigError naming the flag."""
    return _check_value(BY_KEY[key], value)


def validate(cfg: dict) -> dict:
    """A checked copy of a full config (every key of OPTIONS); raises ConfigError."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"the config must be a JSON object, got {type(cfg).__name__}")
    missing = [o.flag for o in OPTIONS if o.key not in cfg]
    if missing:
        raise ConfigError(f"the config lacks {', '.join(missing[:3])}")
    out = {o.key: _check_value(o, cfg[o.key]) for o in OPTIONS}
    if out["residual"] is None:  # checkpoints store "no residual" as null
        out["residual"] = "none"
    if out["bidirectional"]:
        raise ConfigError("--bidirectional: a language model predicts the next character "
                          "from the past only, so it cannot read the sequence backwards")
    if out["proj_size"] >= out["hidden"]:
        raise ConfigError(f"--proj-size must be < --hidden ({out['hidden']}), "
                          f"got {out['proj_size']}")
    try:  # the module's own rules, against the cell's declaration
        model_options(out).validated(out["hidden"])
    except (TypeError, ValueError) as err:
        option, rest = str(err).split(" ", 1)  # the engine's messages begin with the option
        raise ConfigError(f"--{option.rstrip(':').replace('_', '-')} {rest}") from None
    if out["nesterov"] and out["optimizer"] != "sgd":
        raise ConfigError("--nesterov needs --optimizer sgd")
    if out["distributed"] and out["gradflow_every"]:
        raise ConfigError("--gradflow-every records one process's backward pass; it cannot "
                          "be used with --distributed")
    return out


def model_options(cfg: dict) -> Options:
    """The engine's ``Options`` that a config describes."""
    return Options.from_config(for_model(cfg))


def for_model(cfg: dict) -> dict:
    """The config as the engine takes it (``residual`` None rather than "none")."""
    return {**cfg, "residual": None if cfg["residual"] in (None, "none") else cfg["residual"]}


def from_saved(config) -> dict:
    """A checkpoint's config, completed and checked: keys older versions lacked get their
    defaults (``schedule_steps``: the saved ``steps``); unknown keys are dropped."""
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a JSON object, got {type(config).__name__}")
    filled = {**DEFAULTS, **{k: v for k, v in config.items() if k in BY_KEY}}
    if "schedule_steps" not in config:
        filled["schedule_steps"] = config.get("steps", DEFAULTS["steps"])
    return validate(filled)


# ---------------------------------------------------------------------------- memory
def memory_limit() -> int:
    """Bytes a run may ask for: ``RNNCORE_MEMORY_LIMIT`` if set, else the machine's RAM."""
    try:
        return backend.memory_bound("RNNCORE_MEMORY_LIMIT", 1.0)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def parameter_count(cfg: dict, vocab_size: int) -> int:
    """How many parameters the model has, from the cell's declaration (nothing allocated)."""
    options = model_options(cfg)
    cell = cells.get(options.cell)
    H, E, L, P = cfg["hidden"], cfg["embed"], cfg["layers"], cfg["proj_size"]
    spec = StackSpec(cell, E, H, L, 1, P, options.residual, True)
    count = sum(math.prod(shape) for shape, _ in parameter_shapes(spec).values())
    if options.init_state == "learned":
        count += L * sum(cell.state_widths(Dims(E, H, P)))
    return vocab_size * (E + (P or H) + 1) + count


def training_bytes(cfg: dict, vocab_size: int) -> int:
    """Estimated memory of training: parameters, gradients and two optimizer slots, the
    activations kept for backward over one window, and the logits."""
    itemsize = 8 if cfg["dtype"] == "float64" else 4
    T, B = cfg["seq_len"], cfg["batch_size"]
    G = cells.get(model_options(cfg).cell).num_gates + 3
    activations = T * B * cfg["layers"] * G * cfg["hidden"]
    logits = 3 * T * B * vocab_size
    return itemsize * (4 * parameter_count(cfg, vocab_size) + activations + logits)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_memory(cfg: dict, vocab_size: int, limit: int | None = None):
    """Refuse, before anything is allocated, a model that would need more than ``limit``."""
    limit = memory_limit() if limit is None else limit
    need = training_bytes(cfg, vocab_size)
    if need > limit:
        raise ConfigError(
            f"--hidden {cfg['hidden']} --layers {cfg['layers']} --embed {cfg['embed']} "
            f"--batch-size {cfg['batch_size']} --seq-len {cfg['seq_len']} with a "
            f"{vocab_size}-character vocabulary needs about {gib(need)}, more than the "
            f"{gib(limit)} allowed (RNNCORE_MEMORY_LIMIT sets the bound)")
