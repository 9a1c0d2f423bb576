"""Sample text from a trained character model.

    python -m rnncore.sample runs/words-lstm/best.npz --prime "the " --length 300 \\
        --temperature 0.8 --top-k 10 --top-p 0.95 --seed 1

Each next character is drawn from softmax(z / T) restricted to the k most likely
characters (top-k) and then to the smallest set whose probability reaches p (top-p,
"nucleus"); temperature 0 means greedy decoding (argmax), no randomness at all.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from . import backend
from .charlm import CharLM
from .checkpoint import CheckpointError
from .runcheckpoint import PARAM_PREFIX, load_model  # noqa: F401  (re-exported)
from .runconfig import valid_device

FLUSH_EVERY = 256  # characters between flushes of the output stream


def choose_next(logits, temperature, top_k, top_p, rng) -> int:
    """One character index from host logits (V,) with temperature, top-k and top-p."""
    logits = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(logits).all():
        raise ValueError("the model's outputs are not finite (NaN or Inf)")
    if temperature == 0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore"):
        z = logits / temperature
        if not np.isfinite(z).all():  # a tiny temperature: scale after subtracting the max
            z = (logits - logits.max()) / temperature
    if top_k and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p and top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(p.size, p=p))


def sample_chars(model: CharLM, vocab, prime="", length=200, temperature=1.0, top_k=0,
                 top_p=1.0, seed=0):
    """Yield ``length`` sampled characters after ``prime`` (the training RNG is untouched)."""
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted(set(prime) - set(index))
    if unknown:
        raise ValueError(f"--prime has characters the model never saw: {unknown[:5]}")
    rng = np.random.default_rng(seed)
    xp = model.xp
    ids = [index[ch] for ch in prime] or [index["\n"] if "\n" in index else 0]
    with model.inference():
        logits, state = model.forward(xp.asarray(np.array(ids, dtype=np.int64)[:, None]))
        for _ in range(length):
            nxt = choose_next(backend.to_numpy(logits[-1, 0]), temperature, top_k, top_p, rng)
            yield vocab[nxt]
            logits, state = model.forward(xp.asarray(np.array([[nxt]], dtype=np.int64)), state)


def generate(model: CharLM, vocab, prime="", length=200, temperature=1.0, top_k=0,
             top_p=1.0, seed=0) -> str:
    """``prime`` followed by ``length`` sampled characters (the training RNG is untouched)."""
    chars = sample_chars(model, vocab, prime, length, temperature, top_k, top_p, seed)
    return prime + "".join(chars)


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m rnncore.sample", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.error = lambda message: _fail(f"{message} (see --help)")  # one line, no usage dump
    ap.add_argument("checkpoint", help="a .npz or .safetensors file written by rnncore.train")
    ap.add_argument("--prime", default="", help="text to start from (default: a newline)")
    ap.add_argument("--length", type=int, default=500,
                    help="characters to generate; written as they come, Ctrl-C stops")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0, help="keep the k likeliest (0 = all)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep (1 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    return ap


def _fail(message):
    print(f"rnncore.sample: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_args(args):
    """One-line ValueError naming the first flag that cannot work."""
    if args.length < 0:
        raise ValueError(f"--length must be >= 0, got {args.length}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:  # also refuses nan
        raise ValueError(f"--top-p must lie in (0, 1], got {args.top_p}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must lie in [0, 2**63), got {args.seed}")
    problem = valid_device(args.device)
    if problem:
        raise ValueError(f"--device {problem}, got {args.device!r:.40}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    written = 0
    try:
        check_args(args)
        model, vocab, _, _ = load_model(args.checkpoint, args.device)
        chars = sample_chars(model, vocab, args.prime, args.length, args.temperature,
                             args.top_k, args.top_p, args.seed)
        out = sys.stdout
        out.write(args.prime)
        last = args.prime[-1:]
        for ch in chars:
            out.write(ch)
            written, last = written + 1, ch
            if written % FLUSH_EVERY == 0:
                out.flush()
        if last and last != "\n":
            out.write("\n")
        elif not last:
            out.write("\n")
        out.flush()
    except (CheckpointError, ValueError, RuntimeError) as err:
        print(f"\nrnncore.sample: error: {err}" if written else
              f"rnncore.sample: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print("rnncore.sample: error: out of memory while loading the model", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        try:
            sys.stdout.flush()
        except OSError:
            pass
        print(f"\nrnncore.sample: interrupted after {written} characters", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115  keeps interpreter exit quiet
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
