"""Shared helpers for the depthwise conv2d CPU kernel tests: which kernel the plan picks per
direction (cpu_plan), forcing one (force_cpu_kernel), and a Python model of the plan's rules
that the kernel test files use to assert the route each of their cases takes.

The kernels, in priority order (cvops.ops.depthwise_conv2d.CPU_KERNELS):
* backward512: both gradients at once, 3x3, stride 1, padding 1, undilated, rows < 16 wide.
* stride2_512: 3x3, stride 2, undilated, outputs up to 32 wide, all three directions.
* rows512: stride 1, undilated, square 3x3/5x5/7x7 forward and input gradient; the 3x3
  weight gradient with output rows up to 64 wide.
* masked: everything else on the AVX-512 kernels' calls (stride <= 2, any kernel, dilation).
* blocked: multiplier 1, out_h * out_w <= 30 * 30 at unit stride, <= 56 * 56 otherwise; any
  dtype and memory format.
* plane: everything.
The four AVX-512 kernels need an AVX-512 CPU, float32, NCHW and multiplier 1.

The new API is looked up lazily (never at import time): cvops.ops.depthwise_conv2d is the
function in cvops.ops' namespace, so the module is taken from importlib.
"""

import importlib
import os

import pytest
import torch

ENV = "CVOPS_DEPTHWISE_CPU_PATH"
DIRECTIONS = ("forward", "input_grad", "weight_grad", "backward")
AVX512_KERNELS = ("backward512", "stride2_512", "rows512", "masked")

# Thresholds of the plan (csrc/ops/cpu): the stride-2 and row kernels' widths, the fused
# backward's rows.
STRIDE2_MAX_OUT_W = 32
ROWS512_WEIGHT_GRAD_MAX_OUT_W = 64
BACKWARD512_MAX_W = 15


def dwmod():
    """The module cvops.ops.depthwise_conv2d (not the function of the same name)."""
    return importlib.import_module("cvops.ops.depthwise_conv2d")


def cpu_plan(input_shape, weight_shape, stride=1, padding=0, dilation=1, **kw):
    return dwmod().cpu_plan(input_shape, weight_shape, stride, padding, dilation, **kw)


def forced(name):
    """Context manager: force the CPU kernel `name` (None: the plan's own choice)."""
    return dwmod().force_cpu_kernel(name)


def has_avx512():
    """Whether the AVX-512 kernels can run in this process. Uses cvops' own answer when the
    API is there; else (an extension being rebuilt) the CPU's, honouring
    CVOPS_DISABLE_AVX512 like the extension does."""
    try:
        return bool(dwmod().cpu_has_avx512())
    except Exception:
        if os.environ.get("CVOPS_DISABLE_AVX512", "0") not in ("", "0"):
            return False
        return torch.backends.cpu.get_cpu_capability() == "AVX512"


def _requires_avx512(kernel="the AVX-512 kernels"):
    return pytest.mark.skipif(
        not has_avx512(),
        reason="needs an AVX-512 CPU: %s is not compiled in / not chosen otherwise" % kernel,
    )


requires_avx512 = _requires_avx512()


def requires_avx512_for(kernel):
    """requires_avx512 with the kernel's name in the reason."""
    return _requires_avx512(kernel)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def expected_routes(
    input_shape,
    weight_shape,
    stride=1,
    padding=0,
    dilation=1,
    dtype=torch.float32,
    channels_last=False,
    avx512=None,
):
    """The plan's choice per direction, written out independently of the plan (kRules in
    csrc/ops/cpu/depthwise_conv2d_dispatch.cpp): the pre-refactor routing, with the removed
    blocked512's calls on masked. avx512: None asks the process.
    channels_last is meant for planes with C > 1 and more than one pixel (where it changes
    the layout)."""
    if avx512 is None:
        avx512 = has_avx512()
    n, c, h, w = input_shape
    cout, _, kh, kw = weight_shape
    mult = cout // c
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    masked_ok = (
        avx512
        and dtype == torch.float32
        and not channels_last
        and mult == 1
        and sh <= 2
        and sw <= 2
        and h * w < 2**30
        and oh * ow < 2**30
    )
    if not masked_ok:
        return dict(
            forward="blocked", input_grad="blocked", weight_grad="blocked", backward="separate"
        )
    unit = (sh, sw) == (1, 1) and (dh, dw) == (1, 1)
    stride2 = (
        (sh, sw) == (2, 2)
        and (dh, dw) == (1, 1)
        and (kh, kw) == (3, 3)
        and oh > 0
        and 0 < ow <= STRIDE2_MAX_OUT_W
        and ph >= 0
        and pw >= 0
    )
    square = kh == kw and kh in (3, 5, 7)
    if stride2:
        fwd = ig = wg = "stride2_512"
    else:
        fwd = "rows512" if unit and square and oh > 0 and ow > 0 else "masked"
        ig = "rows512" if unit and square and h > 0 and w > 0 else "masked"
        wg = (
            "rows512"
            if unit and (kh, kw) == (3, 3) and oh > 0 and 0 < ow <= ROWS512_WEIGHT_GRAD_MAX_OUT_W
            else "masked"
        )
    fused = (
        (kh, kw) == (3, 3)
        and unit
        and (ph, pw) == (1, 1)
        and n > 0
        and h >= 1
        and 1 <= w <= BACKWARD512_MAX_W
    )
    return dict(
        forward=fwd,
        input_grad=ig,
        weight_grad=wg,
        backward="backward512" if fused else "separate",
    )


def assert_routes(input_shape, weight_shape, stride, padding, dilation, expected, **kw):
    """cpu_plan's answer has every direction, and the directions in `expected` (a dict, all
    four or some) are as given. kw: dtype, channels_last."""
    plan = cpu_plan(input_shape, weight_shape, stride, padding, dilation, **kw)
    assert set(plan) == set(DIRECTIONS), plan
    got = {k: plan[k] for k in expected}
    assert got == dict(expected), (input_shape, weight_shape, stride, padding, dilation, kw, plan)
    return plan


def assert_model_routes(input_shape, weight_shape, stride=1, padding=0, dilation=1, **kw):
    """cpu_plan agrees with expected_routes on every direction; returns the plan."""
    want = expected_routes(input_shape, weight_shape, stride, padding, dilation, **kw)
    return assert_routes(input_shape, weight_shape, stride, padding, dilation, want, **kw)
