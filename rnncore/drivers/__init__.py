"""Drivers: what runs one direction of one layer over T steps, forward and backward.

The boundary (``Driver``) is the whole time loop of a layer direction:

    forward(cell, p, x, state0, inputs, reverse)       -> (out, state_T, LayerCache)
    backward(cell, p, cache, dout, dstate_T, record, need_dx, dstates_all=None)
                                                       -> (dx, dstate_0, grads)

``x`` is the layer's input (T, B, I), states are tuples in the cell's ``state`` order,
``inputs`` the per-step inputs by name ((T, B, ·) arrays: ``valid``, the regularisers'
masks), ``dstates_all`` the gradient reaching every step's state (or None), ``grads`` keyed
by the cell's short parameter keys; ``dx`` is None when not ``need_dx`` (the first layer
of a stack whose input needs no gradient). A driver that cannot run some of these (masks,
``dstates_all``, interventions) hands the call to the reference driver. What happens
inside (the hoisted input GEMM, the
order of the steps, where buffers live, whether the host issues each step) is the
driver's business: the cells, the stack and the modules do not change when a driver is
added. A driver must give the reference driver's results, bitwise where it keeps the
arithmetic order.

Drivers:
- ``PythonLoop`` (``python_loop.py``): the readable loop, one recurrent GEMM and one
  pointwise call per step, with the reference or the fused pointwise functions; the
  reference every other driver is tested against.
- ``CompiledCPU`` (``compiled_cpu.py``): the whole loop of a layer direction in C++,
  feature-major, calling NumPy's BLAS; for cells that declare a CPU loop.
- ``CudaGraph`` (``cuda_graph.py``): the same steps captured once into a CUDA graph per
  shape and lengths pattern, replayed afterwards (on the CPU: a stand-in that reruns them).
- ``Persistent`` (``persistent.py``): one cooperative kernel launch runs all T steps
  (the LSTM; on the CPU through the kernel emulation).
- ``StackGraph`` (``wavefront_graph.py``): a whole unidirectional stack captured as waves,
  layer l's step t beside layer l+1's step t−1; other stacks through the graph driver.
- ``BySize`` (``auto.py``): ``impl="auto"``'s choice among them by size.

``invalidate(driver)`` drops whatever a driver holds for the current parameters (captured
graphs); the modules call it when the parameters are replaced or moved.
"""

from .. import backend
from .auto import BySize
from .python_loop import LayerCache, PythonLoop, StepOps

IMPLS = ("auto", "reference", "fused", "compiled", "graph", "persistent", "wavefront")


def select(impl, device, dtype, cell=None, dims=None):
    """The driver for ``impl`` on ``device`` (for ``cell`` at ``dims``, when given).

    ``auto`` on a GPU picks persistent, graph or fused per layer direction by size
    (``auto.py``, crossovers measured on an H100), for a cell that has kernels. On the CPU it
    means the compiled CPU driver where it can be built (a C++ compiler and NumPy's
    OpenBLAS; cells without a CPU loop then run on the reference inside it), else the
    reference. ``fused`` on the CPU runs the kernels' emulation (it exists to test the
    kernel source and launch code), ``reference`` the NumPy loop, ``compiled`` insists on
    the compiled CPU driver.
    ``wavefront`` runs whole unidirectional stacks (the graph driver the others).
    ``graph`` and ``persistent`` fall back to the fused loop (GPU) or the reference (CPU)
    for what they do not run; on the CPU they run their stand-in and the kernel emulation.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device = backend.parse_device(device)
    has_kernels = cell is None or bool(cell.kernels)
    if impl == "fused" and not has_kernels:
        raise ValueError(f"impl='fused': the {cell.name} cell has no fused kernels; "
                         f"use impl='reference'")
    if impl == "compiled" or (impl == "auto" and device.kind == "cpu"):
        if device.kind != "cpu":
            raise ValueError("impl='compiled' is the CPU driver; the module is on "
                             f"{device}")
        from . import compiled_cpu

        has_loop = cell is None or dims is None or cell.cpu_loop_for(dims) is not None
        if impl == "compiled" and not has_loop:
            raise ValueError(f"impl='compiled': the {cell.name} cell has no compiled CPU "
                             "loop here; use impl='auto' or 'reference'")
        if has_loop and (impl == "compiled" or compiled_cpu.available()):
            try:
                return compiled_cpu.CompiledCPU()
            except compiled_cpu.CompiledUnavailableError as err:
                raise RuntimeError(f"impl='compiled': {err}") from None
        return PythonLoop("reference")
    if impl == "reference" or not has_kernels:
        return PythonLoop("reference")
    from .. import fused

    if impl in ("graph", "persistent", "wavefront"):
        # the fallback: the fused per-step loop on a GPU, the reference loop on the CPU
        fallback = PythonLoop("fused", fused.launcher_for(device, dtype)) \
            if device.kind == "cuda" else PythonLoop("reference")
        if impl in ("graph", "wavefront"):
            from . import cuda_graph, wavefront_graph

            graph = cuda_graph.for_device(device, dtype, fallback)
            if impl == "graph":
                return graph
            return wavefront_graph.for_device(device, dtype, graph)
        from .persistent import Persistent

        return Persistent(device, dtype, fallback)
    if impl == "fused" or (device.kind == "cuda" and fused.available(device)):
        per_step = PythonLoop("fused", fused.launcher_for(device, dtype))
        if impl == "auto" and device.kind == "cuda":
            from .cuda_graph import for_device
            from .persistent import Persistent

            return BySize(Persistent(device, dtype, per_step),
                          for_device(device, dtype, per_step), per_step)
        return per_step
    return PythonLoop("reference")


def set_checkpointing(driver, every: int) -> None:
    """Make ``driver`` keep the state every ``every`` steps and recompute in backward
    (0: keep every step). The reference and compiled CPU drivers (and the fused per-step
    loop) do; the others refuse a nonzero ``every``."""
    targets = [driver] + [getattr(driver, "fallback", None)]
    if every and not hasattr(driver, "checkpoint_every"):
        raise ValueError(f"checkpoint_every: the {getattr(driver, 'name', driver)!r} driver "
                         "does not recompute; use impl='reference' or 'compiled' (CPU) or "
                         "'fused'")
    for d in targets:
        if d is not None and hasattr(d, "checkpoint_every"):
            d.checkpoint_every = every


def invalidate(driver) -> None:
    """Drop what ``driver`` keeps for the current parameters (graphs and their buffers)."""
    hook = getattr(driver, "invalidate", None)
    if hook is not None:
        hook()


__all__ = ["IMPLS", "BySize", "LayerCache", "PythonLoop", "StepOps", "invalidate", "select",
           "set_checkpointing"]
