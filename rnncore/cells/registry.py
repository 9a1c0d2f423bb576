"""The one list of cells: registry name → cell declaration.

Every cell file registers its declarations on import (``register(LSTM())``); every CLI
choice list, the gradient-check matrix, the gradient-flow sweep, the benchmark rows and
the fused kernel table read them from here.
"""

_CELLS: dict = {}


def register(cell):
    """Add a cell declaration under ``cell.name``; returns it."""
    if not cell.name or cell.name in _CELLS:
        raise ValueError(f"cell name {cell.name!r} is empty or already registered")
    _CELLS[cell.name] = cell
    return cell


def names() -> tuple:
    """Every registered cell name, in registration order."""
    return tuple(_CELLS)


def get(name):
    """The declaration registered as ``name``; ValueError naming the choices otherwise."""
    if isinstance(name, str) and name in _CELLS:
        return _CELLS[name]
    raise ValueError(f"unknown cell {name!r}; choose from {', '.join(_CELLS)}")


def cells() -> tuple:
    return tuple(_CELLS.values())
