"""What a training checkpoint holds, and how it is read back into a run or a model.

Arrays (host NumPy, by name):

    param/<name>    every parameter of the CharLM (``model.params``)
    optim/<name>    the optimizer's slots (Adam's moments, …)
    state/<i>       the hidden state carried into the next window (h, or h and c)

Meta (JSON): ``config`` (every key of :mod:`rnncore.runconfig`), ``vocab`` (the sorted
characters), ``step``, ``rng`` (the engine generator's state), ``optimizer`` (scalars),
``best_val`` (null before the first evaluation), ``elapsed`` (seconds), ``corpus`` (name
and entropy floor), ``text_sha256`` (of the training text, see textdata.text_hash) and
``world_size`` (the ranks of the run that wrote it; the state is always the whole batch's).

A checkpoint is untrusted input: :func:`read` validates the config with the command
line's rules, checks the vocabulary and every declared array against what that config
implies, and only then reads the arrays it expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import checkpoint, runconfig
from .charlm import CharLM
from .checkpoint import CheckpointError

PARAM_PREFIX = "param/"
OPTIM_PREFIX = "optim/"
STATE_PREFIX = "state/"
MAX_VOCAB = 0x110000  # every Unicode code point


@dataclass
class Loaded:
    config: dict
    vocab: list
    params: dict
    slots: dict
    state: list
    meta: dict


def run_arrays(params: dict, slots: dict, state) -> dict:
    """The arrays a checkpoint stores (all host arrays)."""
    arrays = {PARAM_PREFIX + k: v for k, v in params.items()}
    arrays.update({OPTIM_PREFIX + k: v for k, v in slots.items()})
    if state is not None:
        parts = state if isinstance(state, tuple) else (state,)
        arrays.update({f"{STATE_PREFIX}{i}": s for i, s in enumerate(parts)})
    return arrays


def _check_meta(meta: dict):
    vocab = meta.get("vocab")
    if not (isinstance(vocab, list) and 0 < len(vocab) <= MAX_VOCAB
            and all(isinstance(ch, str) and len(ch) == 1 for ch in vocab)
            and len(set(vocab)) == len(vocab)):
        raise CheckpointError("its vocab must be a list of distinct single characters")
    step = meta.get("step")
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise CheckpointError(f"its step must be an integer >= 0, got {step!r:.40}")
    elapsed = meta.get("elapsed")
    if not (isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool)
            and math.isfinite(elapsed) and elapsed >= 0):
        raise CheckpointError(f"its elapsed time must be a finite number >= 0, "
                              f"got {elapsed!r:.40}")
    best = meta.get("best_val")
    if best is not None and not (isinstance(best, (int, float)) and not isinstance(best, bool)
                                 and math.isfinite(best)):
        raise CheckpointError(f"its best_val must be null or a finite number, got {best!r:.40}")
    ranks = meta.get("world_size", 1)
    if not (isinstance(ranks, int) and not isinstance(ranks, bool) and ranks >= 1):
        raise CheckpointError(f"its world_size must be an integer >= 1, got {ranks!r:.40}")
    for key in ("rng", "optimizer"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"its {key} entry must be a JSON object")


def _select(config: dict, vocab_size: int):
    """The member filter for checkpoint.load: names we expect, sizes the config allows."""
    params = runconfig.parameter_count(config, vocab_size)
    itemsize = 8
    state_elems = 2 * config["layers"] * config["batch_size"] * config["hidden"]
    budget = {PARAM_PREFIX: 2 * params + 1024, OPTIM_PREFIX: 3 * (2 * params + 1024),
              STATE_PREFIX: 2 * state_elems}

    def select(table: dict) -> set:
        used = dict.fromkeys(budget, 0)
        wanted = set()
        for name, (dtype, shape) in table.items():
            prefix = next((p for p in budget if name.startswith(p)), None)
            if prefix is None:
                continue  # not ours: never read
            if dtype.kind not in "fiub" or dtype.itemsize > itemsize:
                raise CheckpointError(f"array {name} has dtype {dtype}, not a number type")
            used[prefix] += math.prod(shape)
            if used[prefix] > budget[prefix]:
                raise CheckpointError(
                    f"its {prefix[:-1]} arrays hold more values than its config "
                    f"allows ({budget[prefix]:,}); refusing to read them")
            wanted.add(name)
        if used[PARAM_PREFIX] < params // 2:  # e.g. a small file whose config says hidden=8000
            raise CheckpointError(
                f"its parameter arrays hold {used[PARAM_PREFIX]:,} values where its config "
                f"implies about {params:,}")
        return wanted

    return select


def read(path) -> Loaded:
    """Everything a checkpoint holds, checked (see the module docstring); CheckpointError."""
    meta = checkpoint.load_meta(path)
    try:
        config = runconfig.from_saved(meta.get("config"))
        _check_meta(meta)
        runconfig.check_memory(config, len(meta["vocab"]))
    except (runconfig.ConfigError, CheckpointError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    arrays, _ = checkpoint.load(path, select=_select(config, len(meta["vocab"])))
    params = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    slots = {k[len(OPTIM_PREFIX):]: v for k, v in arrays.items() if k.startswith(OPTIM_PREFIX)}
    state = [arrays[f"{STATE_PREFIX}{i}"] for i in range(2) if f"{STATE_PREFIX}{i}" in arrays]
    return Loaded(config, list(meta["vocab"]), params, slots, state, meta)


def build_model(loaded: Loaded, path, device="cpu") -> CharLM:
    """The CharLM a checkpoint describes, with its parameters loaded."""
    model = CharLM.from_config(runconfig.for_model(loaded.config), len(loaded.vocab), device)
    try:
        model.load_arrays(loaded.params)
    except ValueError as err:
        raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from None
    return model


def load_model(path, device="cpu"):
    """(model, vocab, arrays, meta) from a training checkpoint, on ``device``."""
    loaded = read(path)
    model = build_model(loaded, path, device)
    arrays = run_arrays(loaded.params, loaded.slots,
                        tuple(loaded.state) if loaded.state else None)
    return model, loaded.vocab, arrays, {**loaded.meta, "config": loaded.config}


def as_state(parts: list):
    """The carried state as the model takes it: None, one array, or (h, c)."""
    if not parts:
        return None
    return tuple(parts) if len(parts) == 2 else parts[0]

