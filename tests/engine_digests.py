"""Digests of the engine's outputs and gradients for fixed seeds and configurations.

``tests/data/engine_digests.json`` holds them as computed at the commit before the cell
registry and the driver boundary (issue 9); ``test_engine_digests.py`` recomputes them and
asks for bitwise equality. Regenerate (only for a change meant to alter the arithmetic):

    python tests/engine_digests.py --write
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import rnncore

PATH = Path(__file__).parent / "data" / "engine_digests.json"

# (name, front-door class, constructor options): the cells as the public API offers them
CELLS = (
    ("lstm", "LSTM", {}),
    ("lstmp", "LSTM", {"proj_size": 3}),
    ("lstm_fb", "LSTM", {"forget_bias": 1.0}),
    ("gru", "GRU", {}),
    ("gru_reset_before", "GRU", {"reset_after": False}),
    ("rnn_tanh", "RNN", {}),
    ("rnn_relu", "RNN", {"nonlinearity": "relu"}),
)
# (name, options, lengths?): depth, direction, residual, dropout, initial states
CONFIGS = (
    ("1x", {"num_layers": 1}, False),
    ("2x-bi-lengths", {"num_layers": 2, "bidirectional": True}, True),
    ("3x-res-dropout", {"num_layers": 3, "residual": "layers", "dropout": 0.3}, False),
    ("2x-stack-learned-lengths", {"num_layers": 2, "residual": "stack",
                                  "init_state": "learned"}, True),
    ("2x-bi-variational-normal", {"num_layers": 2, "bidirectional": True, "dropout": 0.25,
                                  "dropout_mode": "variational", "init_state": "normal",
                                  "init": "orthogonal"}, False),
)
IMPLS = ("reference", "fused")
DTYPES = ("float64", "float32")
T, B, I, H = 5, 3, 4, 6


def digest(array) -> str:
    a = np.ascontiguousarray(rnncore.backend.to_numpy(array))
    head = f"{a.dtype}{a.shape}".encode()
    return hashlib.sha256(head + a.tobytes()).hexdigest()[:16]


def run_case(cls_name, cell_options, options, use_lengths, impl, dtype):
    """Forward and backward once; {name: digest} of every output and gradient."""
    cls = getattr(rnncore, cls_name)
    module = cls(I, H, seed=7, dtype=dtype, impl=impl, **cell_options, **options)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = np.array([T, 2, 4]) if use_lengths else None
    out, state = module(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dstates = tuple(rng.standard_normal(s.shape).astype(dtype) for s in states)
    dx, dstate0 = module.backward(dout, dstates if len(dstates) > 1 else dstates[0])
    dstate0 = dstate0 if isinstance(dstate0, tuple) else (dstate0,)
    result = {"out": digest(out), "dx": digest(dx)}
    for k, s in enumerate(states):
        result[f"state{k}"] = digest(s)
    for k, s in enumerate(dstate0):
        result[f"dstate{k}"] = digest(s)
    for name in sorted(module.grads):
        result["grad:" + name] = digest(module.grads[name])
    return result


def cases():
    for cell, cls_name, cell_options in CELLS:
        for config, options, use_lengths in CONFIGS:
            for impl in IMPLS:
                for dtype in DTYPES:
                    key = f"{cell}/{config}/{impl}/{dtype}"
                    yield key, (cls_name, cell_options, options, use_lengths, impl, dtype)


def compute() -> dict:
    return {key: run_case(*args) for key, args in cases()}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/engine_digests.py --write")
    PATH.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PATH}")
