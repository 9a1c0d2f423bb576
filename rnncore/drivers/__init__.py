"""Drivers: what runs one direction of one layer over T steps, forward and backward.

The boundary (``Driver``) is the whole time loop of a layer direction:

    forward(cell, p, x, state0, inputs, reverse)       -> (out, state_T, LayerCache)
    backward(cell, p, cache, dout, dstate_T, record, dstates_all=None)
                                                       -> (dx, dstate_0, grads)

``x`` is the layer's input (T, B, I), states are tuples in the cell's ``state`` order,
``inputs`` the per-step inputs by name ((T, B, ·) arrays: ``valid``, the regularisers'
masks), ``dstates_all`` the gradient reaching every step's state (or None), ``grads`` keyed
by the cell's short parameter keys. What happens inside (the hoisted input GEMM, the
order of the steps, where buffers live, whether the host issues each step) is the
driver's business: the cells, the stack and the modules do not change when a driver is
added. A driver must give the reference driver's results, bitwise where it keeps the
arithmetic order.

Drivers:
- ``PythonLoop`` (``python_loop.py``): the readable loop, one recurrent GEMM and one
  pointwise call per step, with the reference or the fused pointwise functions; the
  reference every other driver is tested against.
"""

from .. import backend
from .python_loop import LayerCache, PythonLoop

IMPLS = ("auto", "reference", "fused")


def select(impl, device, dtype, cell=None):
    """The driver for ``impl`` on ``device`` (for ``cell``, when given).

    ``auto`` means the fused kernels on a GPU, for a cell that has kernels. On the CPU it
    means the reference: NumPy's SIMD ufuncs beat the scalar host-compiled kernels there
    (the emulation exists to test the kernel source and launch code, and runs with
    ``impl="fused"``).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device = backend.parse_device(device)
    has_kernels = cell is None or bool(cell.kernels)
    if impl == "fused" and not has_kernels:
        raise ValueError(f"impl='fused': the {cell.name} cell has no fused kernels; "
                         f"use impl='reference'")
    if impl == "reference" or not has_kernels:
        return PythonLoop("reference")
    from .. import fused

    if impl == "fused" or (device.kind == "cuda" and fused.available(device)):
        return PythonLoop("fused", fused.launcher_for(device, dtype))
    return PythonLoop("reference")


__all__ = ["IMPLS", "LayerCache", "PythonLoop", "select"]
