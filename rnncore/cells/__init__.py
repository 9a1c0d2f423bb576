"""The cells: one declaration per kind of cell, and the registry that lists them.

Importing this package registers every built-in cell (``lstm``, ``gru``,
``gru_reset_before``, ``rnn_tanh``, ``rnn_relu``, ``lnlstm``, …). ``REFERENCE`` gathers the
NumPy/CuPy pointwise functions of every registered cell under the names the fused
launcher (``rnncore.fused``) also provides, so either can be handed to a cell.
"""

import importlib
import pkgutil
from types import SimpleNamespace

from . import base, registry
from .base import Cell, Dims, ParamSpec
from .registry import cells, get, names, register

_MECHANICS = {"base", "registry", "masking", "regularise"}
# Every other module of this package is a cell file that registers itself on import, so a
# new cell is its file (and its kernel): nothing else lists the cells.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _MECHANICS:
        importlib.import_module(f"{__name__}.{_module}")


def reference_namespace() -> SimpleNamespace:
    """Every registered cell's reference pointwise functions, by name."""
    functions = {}
    for cell in cells():
        functions.update(vars(cell.reference))
    return SimpleNamespace(name="reference", **functions)


REFERENCE = reference_namespace()

__all__ = ["Cell", "Dims", "ParamSpec", "REFERENCE", "base", "cells", "get", "names",
           "register", "registry"]
