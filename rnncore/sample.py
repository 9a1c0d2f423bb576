"""Sample text from a trained character model.

    python -m rnncore.sample runs/words-lstm/best.npz --prime "the " --length 300 \\
        --temperature 0.8 --top-k 10 --top-p 0.95 --seed 1

Each next character is drawn from softmax(z / T) restricted to the k most likely
characters (top-k) and then to the smallest set whose probability reaches p (top-p,
"nucleus"); temperature 0 means greedy decoding (argmax), no randomness at all.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import backend
from .charlm import CharLM
from .checkpoint import CheckpointError, load

PARAM_PREFIX = "param/"


def load_model(path, device="cpu"):
    """(model, vocab, arrays, meta) from a training checkpoint, on ``device``."""
    arrays, meta = load(path)
    try:
        vocab = meta["vocab"]
        model = CharLM.from_config(meta["config"], len(vocab), device)
        model.load_arrays({k[len(PARAM_PREFIX):]: v for k, v in arrays.items()
                           if k.startswith(PARAM_PREFIX)})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from None
    return model, vocab, arrays, meta


def choose_next(logits, temperature, top_k, top_p, rng) -> int:
    """One character index from host logits (V,) with temperature, top-k and top-p."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
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


def generate(model: CharLM, vocab, prime="", length=200, temperature=1.0, top_k=0,
             top_p=1.0, seed=0) -> str:
    """``prime`` followed by ``length`` sampled characters (the training RNG is untouched)."""
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted(set(prime) - set(index))
    if unknown:
        raise ValueError(f"--prime has characters the model never saw: {unknown[:5]}")
    rng = np.random.default_rng(seed)
    xp = model.xp
    ids = [index[ch] for ch in prime] or [index["\n"] if "\n" in index else 0]
    out = []
    with model.inference():
        logits, state = model.forward(xp.asarray(np.array(ids, dtype=np.int64)[:, None]))
        for _ in range(length):
            nxt = choose_next(backend.to_numpy(logits[-1, 0]), temperature, top_k, top_p, rng)
            out.append(vocab[nxt])
            logits, state = model.forward(xp.asarray(np.array([[nxt]], dtype=np.int64)), state)
    return prime + "".join(out)


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m rnncore.sample", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a .npz or .safetensors file written by rnncore.train")
    ap.add_argument("--prime", default="", help="text to start from (default: a newline)")
    ap.add_argument("--length", type=int, default=500, help="characters to generate")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0, help="keep the k likeliest (0 = all)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep (1 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.length < 0 or not 0 <= args.temperature < float("inf") or args.top_k < 0 \
                or not 0 < args.top_p <= 1:
            raise ValueError("need --length >= 0, --temperature >= 0, --top-k >= 0 and "
                             "0 < --top-p <= 1")
        model, vocab, _, _ = load_model(args.checkpoint, args.device)
        text = generate(model, vocab, args.prime, args.length, args.temperature,
                        args.top_k, args.top_p, args.seed)
    except (CheckpointError, ValueError, RuntimeError) as err:
        print(f"rnncore.sample: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
