"""Weight and initial-state initializers.

- ``"pytorch"``: every weight and bias ~ U(−1/√H, 1/√H), as torch.nn.LSTM/GRU/RNN do.
- ``"xavier"``: each gate block W ∈ ℝ^{H×n} ~ U(−a, a), a = √(6 / (n + H)) (Glorot &
  Bengio 2010), biases zero.
- ``"orthogonal"``: each recurrent gate block is an orthogonal matrix (Saxe et al. 2014;
  QR of a Gaussian with the sign of R's diagonal fixed), input blocks Glorot, biases zero.

``forget_bias`` is then added to the forget-gate block of the cell's first gate bias
(``bias_ih`` for the LSTM, so the effective forget bias b_if + b_hf grows by exactly that
amount). Normalisation gains start at one and shifts at zero under every scheme.
"""

import math

import numpy as np

INITS = ("pytorch", "xavier", "orthogonal")
INIT_STATES = ("zeros", "normal", "learned")
INIT_STATE_STD = 0.1


def glorot_uniform(rng: np.random.Generator, shape) -> np.ndarray:
    fan_out, fan_in = shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def orthogonal(rng: np.random.Generator, shape) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal rows or columns, whichever are fewer."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


def _blockwise(make, rng, shape, num_blocks):
    """Apply ``make`` to each of the ``num_blocks`` gate blocks stacked along rows."""
    rows, cols = shape
    block = rows // num_blocks
    return np.concatenate([make(rng, (block, cols)) for _ in range(num_blocks)], axis=0)


RULES = ("input_weight", "recurrent_weight", "bias", "projection", "residual", "ones",
         "zeros")


def init_parameters(shapes: dict, scheme: str, hidden_size: int, num_gates: int,
                    rng: np.random.Generator, forget_bias: float = 0.0,
                    forget_gate: int | None = None, forget_names=()) -> dict:
    """Host (float64) initial values for every name in ``shapes`` ({name: (shape, rule)},
    PyTorch's order); ``rule`` is one of ``RULES`` (a cell's ``ParamSpec.init``).

    ``forget_bias`` is added to gate block ``forget_gate`` of each name in ``forget_names``.
    """
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    values = {}
    bound = 1.0 / math.sqrt(hidden_size)
    for name, (shape, rule) in shapes.items():
        if rule not in RULES:
            raise ValueError(f"parameter {name}: unknown init rule {rule!r}")
        if rule in ("ones", "zeros"):  # normalisation gains and shifts, whatever the scheme
            values[name] = np.ones(shape) if rule == "ones" else np.zeros(shape)
        elif rule == "residual":
            fan_in = shapes["residual_weight"][0][1]
            b = 1.0 / math.sqrt(fan_in)
            values[name] = rng.uniform(-b, b, size=shape)
        elif scheme == "pytorch":
            values[name] = rng.uniform(-bound, bound, size=shape)
        elif rule == "bias":
            values[name] = np.zeros(shape)
        elif rule == "projection":
            values[name] = glorot_uniform(rng, shape)
        elif rule == "recurrent_weight" and scheme == "orthogonal":
            values[name] = _blockwise(orthogonal, rng, shape, num_gates)
        else:
            values[name] = _blockwise(glorot_uniform, rng, shape, num_gates)
    if forget_bias:
        H, f = hidden_size, forget_gate
        for name in forget_names:
            values[name][f * H : (f + 1) * H] += forget_bias
    return values
