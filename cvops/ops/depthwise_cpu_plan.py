"""Which depthwise CPU kernel runs a call: the plan in csrc/ops/cpu/depthwise_conv2d_dispatch.cpp,
read from Python (``python -m cvops.info --depthwise``, the route tests), and a way to force one
kernel (the tests; ``CVOPS_DEPTHWISE_CPU_PATH`` does the same for a whole process)."""

import contextlib
from typing import Dict, Optional

import torch

from ._utils import pair

# Priority order: the plan takes the first kernel whose capability check accepts the call.
CPU_KERNELS = ("backward512", "stride2_512", "rows512", "masked", "blocked")
DIRECTIONS = ("forward", "input_grad", "weight_grad", "backward")


def cpu_plan(
    input_shape,
    weight_shape,
    stride=1,
    padding=0,
    dilation=1,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Dict[str, str]:
    """The kernel of each direction for a call of this geometry: {"forward", "input_grad",
    "weight_grad": kernel name, "backward": "backward512" (both gradients in one pass) or
    "separate"}. Raises RuntimeError where a forced kernel does not apply."""
    names = torch.ops.cvops._depthwise_cpu_plan(
        list(input_shape),
        list(weight_shape),
        list(pair(stride, "stride")),
        list(pair(padding, "padding")),
        list(pair(dilation, "dilation")),
        dtype,
        channels_last,
    )
    return dict(zip(DIRECTIONS, names))


@contextlib.contextmanager
def force_cpu_kernel(name: Optional[str]):
    """Runs every direction `name` implements with that kernel (None: the plan's choice) inside
    the block; a call it cannot run raises RuntimeError. Restores the previous setting."""
    if name is not None and name not in CPU_KERNELS:
        raise ValueError(
            "force_cpu_kernel: unknown kernel %r; expected one of %s" % (name, CPU_KERNELS)
        )
    previous = torch.ops.cvops._depthwise_cpu_force(name)
    try:
        yield
    finally:
        torch.ops.cvops._depthwise_cpu_force(previous)


def cpu_has_avx512() -> bool:
    """Whether the AVX-512 kernels can run here (compiled in, supported by the CPU and OS)."""
    return bool(torch.ops.cvops._cpu_has_avx512())
