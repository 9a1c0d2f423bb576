"""Placeholder until the kernel launcher lands (issue 3)."""


def available(device):
    return False


def pointwise_for(device, dtype):
    raise RuntimeError("impl='fused' is not available: the kernel launcher is not built yet")
