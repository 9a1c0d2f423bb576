"""Variable-length batches: how a padded step leaves the state alone.

A step t is *valid* for sequence b when t < lengths[b]. ``valid`` is a (B, 1) boolean
array, or ``None`` when every sequence is full length.

    state_t                     = new            if valid else state_{t−1}    (carry)
    ∂L/∂new                     = ∂L/∂state_t    if valid else 0              (split_grad)
    ∂L/∂state_{t−1} (carried)   = 0              if valid else ∂L/∂state_t

Running the reverse direction from t = T−1 down to 0 with this rule keeps each
sequence's initial state until its own last valid step, which is exactly PyTorch's
PackedSequence behaviour without sorting or packing.
"""

from ..backend import xp_of


def carry(valid, new, prev):
    """In place: rows of ``new`` whose step is padded take ``prev``'s values (exactly)."""
    if valid is not None:
        xp_of(new).copyto(new, prev, where=~valid)
    return new


def split_grad(valid, dstate):
    """Split ∂L/∂state_t into (the part reaching the new value, the part carried past)."""
    if valid is None:
        return dstate, None
    xp = xp_of(dstate)
    return xp.where(valid, dstate, 0), xp.where(valid, 0, dstate)


def store(out, value):
    """Write ``value`` into ``out`` (a preallocated buffer) when given; return the result."""
    if out is None:
        return value
    out[...] = value
    return out
