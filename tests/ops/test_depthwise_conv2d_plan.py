"""Depthwise conv2d CPU: the kernel plan (cvops.ops.depthwise_conv2d.cpu_plan), which picks
the kernel of every direction of a call, in priority order backward512, stride2_512, rows512,
masked, blocked (CPU_KERNELS). Checked here: the route of representative shapes
(MobileNetV2's depthwise layers at batch 8 and the other kernels' cases, each with and
without AVX-512), that every kernel is chosen for some shape, forcing a kernel
(force_cpu_kernel: results, "does not apply", unknown names, nesting), the
CVOPS_DEPTHWISE_CPU_PATH variable (read once per process) and `python -m cvops.info
--depthwise`. The per-kernel files assert their own cases' routes."""

import os
import re
import subprocess
import sys

import pytest
import torch

import cvops
from tests.conftest import ROOT, requires_ops, run_python
from tests.ops._depthwise_routes import (
    AVX512_KERNELS,
    DIRECTIONS,
    ENV,
    assert_routes,
    cpu_plan,
    dwmod,
    expected_routes,
    forced,
    has_avx512,
    requires_avx512,
)
from tests.ops.test_depthwise_conv2d import check_against_conv2d

pytestmark = [requires_ops, pytest.mark.usefixtures("default_depthwise_path")]

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16


def R(forward, input_grad=None, weight_grad=None, backward="separate"):
    """Routes: one kernel for the three directions unless given separately."""
    return dict(
        forward=forward,
        input_grad=input_grad or forward,
        weight_grad=weight_grad or forward,
        backward=backward,
    )


ROWS, S2, MASKED, BLOCKED = "rows512", "stride2_512", "masked", "blocked"

# id: (input shape, weight shape, stride, padding, dilation, cpu_plan keywords,
#      routes with AVX-512, routes without)
# fmt: off
TABLE = {
    # MobileNetV2's depthwise layers, batch 8 (3x3, padding 1); weight gradient rows of 112
    # are past rows512's 64, 56 outputs wide past stride2_512's 32
    "mnv2_32x112_s1": ((8, 32, 112, 112), (32, 1, 3, 3), 1, 1, 1, {},
                       R(ROWS, ROWS, MASKED), R(BLOCKED)),
    "mnv2_96x112_s2": ((8, 96, 112, 112), (96, 1, 3, 3), 2, 1, 1, {}, R(MASKED), R(BLOCKED)),
    "mnv2_144x56_s1": ((8, 144, 56, 56), (144, 1, 3, 3), 1, 1, 1, {}, R(ROWS), R(BLOCKED)),
    "mnv2_144x56_s2": ((8, 144, 56, 56), (144, 1, 3, 3), 2, 1, 1, {}, R(S2), R(BLOCKED)),
    "mnv2_192x28_s1": ((8, 192, 28, 28), (192, 1, 3, 3), 1, 1, 1, {}, R(ROWS), R(BLOCKED)),
    "mnv2_192x28_s2": ((8, 192, 28, 28), (192, 1, 3, 3), 2, 1, 1, {}, R(S2), R(BLOCKED)),
    "mnv2_384x14_s1": ((8, 384, 14, 14), (384, 1, 3, 3), 1, 1, 1, {},
                       R(ROWS, backward="backward512"), R(BLOCKED)),
    "mnv2_576x14_s2": ((8, 576, 14, 14), (576, 1, 3, 3), 2, 1, 1, {}, R(S2), R(BLOCKED)),
    "mnv2_960x7_s1": ((8, 960, 7, 7), (960, 1, 3, 3), 1, 1, 1, {},
                      R(ROWS, backward="backward512"), R(BLOCKED)),
    # 5x5 and 7x7: rows512 forward and input gradient, masked weight gradient (3x3 only)
    "5x5_28": ((8, 32, 28, 28), (32, 1, 5, 5), 1, 2, 1, {}, R(ROWS, ROWS, MASKED), R(BLOCKED)),
    "7x7_28": ((8, 32, 28, 28), (32, 1, 7, 7), 1, 3, 1, {}, R(ROWS, ROWS, MASKED), R(BLOCKED)),
    "5x5_28_s2": ((8, 32, 28, 28), (32, 1, 5, 5), 2, 2, 1, {}, R(MASKED), R(BLOCKED)),
    # the removed blocked512's shapes: masked
    "3x5_14_c32": ((8, 32, 14, 14), (32, 1, 3, 5), 1, (1, 2), 1, {}, R(MASKED), R(BLOCKED)),
    # dilation 2
    "dil2_28": ((8, 32, 28, 28), (32, 1, 3, 3), 1, 2, 2, {}, R(MASKED), R(BLOCKED)),
    # stride (2, 1): masked (stride2_512 needs 2 both ways)
    "s21_28": ((8, 32, 28, 28), (32, 1, 3, 3), (2, 1), 1, 1, {}, R(MASKED), R(BLOCKED)),
    # stride 3: no AVX-512 kernel
    "s3_28": ((8, 32, 28, 28), (32, 1, 3, 3), 3, 1, 1, {}, R(BLOCKED), R(BLOCKED)),
    # padding 0: no backward512
    "p0_14": ((8, 32, 14, 14), (32, 1, 3, 3), 1, 0, 1, {}, R(ROWS), R(BLOCKED)),
    # the limits: backward512 rows up to 15, rows512's weight gradient rows up to 64,
    # stride2_512 outputs up to 32 wide
    "bw512_15": ((2, 8, 15, 15), (8, 1, 3, 3), 1, 1, 1, {},
                 R(ROWS, backward="backward512"), R(BLOCKED)),
    "bw512_16": ((2, 8, 16, 16), (8, 1, 3, 3), 1, 1, 1, {}, R(ROWS), R(BLOCKED)),
    "rows_wg_64": ((2, 8, 8, 64), (8, 1, 3, 3), 1, 1, 1, {}, R(ROWS), R(BLOCKED)),
    "rows_wg_65": ((2, 8, 8, 65), (8, 1, 3, 3), 1, 1, 1, {}, R(ROWS, ROWS, MASKED), R(BLOCKED)),
    "s2_out32": ((2, 8, 8, 64), (8, 1, 3, 3), 2, 1, 1, {}, R(S2), R(BLOCKED)),
    "s2_out33": ((2, 8, 8, 66), (8, 1, 3, 3), 2, 1, 1, {}, R(MASKED), R(BLOCKED)),
    # multiplier 2, float64, bfloat16, channels-last: blocked, small or not
    "mult2_14": ((8, 32, 14, 14), (64, 1, 3, 3), 1, 1, 1, {}, R(BLOCKED), R(BLOCKED)),
    "mult2_56": ((8, 32, 56, 56), (64, 1, 3, 3), 1, 1, 1, {}, R(BLOCKED), R(BLOCKED)),
    "f64_14": ((8, 32, 14, 14), (32, 1, 3, 3), 1, 1, 1, {"dtype": F64}, R(BLOCKED), R(BLOCKED)),
    "f64_112_s2": ((8, 32, 112, 112), (32, 1, 3, 3), 2, 1, 1, {"dtype": F64},
                   R(BLOCKED), R(BLOCKED)),
    "bf16_14": ((8, 32, 14, 14), (32, 1, 3, 3), 1, 1, 1, {"dtype": BF16}, R(BLOCKED), R(BLOCKED)),
    "bf16_56": ((8, 32, 56, 56), (32, 1, 3, 3), 1, 1, 1, {"dtype": BF16}, R(BLOCKED), R(BLOCKED)),
    "cl_14": ((8, 32, 14, 14), (32, 1, 3, 3), 1, 1, 1, {"channels_last": True},
              R(BLOCKED), R(BLOCKED)),
    "cl_56": ((8, 144, 56, 56), (144, 1, 3, 3), 1, 1, 1, {"channels_last": True},
              R(BLOCKED), R(BLOCKED)),
    "cl_56_s2": ((8, 144, 56, 56), (144, 1, 3, 3), 2, 1, 1, {"channels_last": True},
                 R(BLOCKED), R(BLOCKED)),
}
# fmt: on


def _args(case):
    shape, weight, stride, padding, dilation, kw = case[:6]
    return shape, weight, stride, padding, dilation, kw


def _needs_avx512(case):
    return any(k in AVX512_KERNELS for k in case[6].values())


def _table_params(with_avx512):
    params = []
    for name, case in TABLE.items():
        marks = [requires_avx512] if with_avx512 and _needs_avx512(case) else []
        params.append(pytest.param(case, id=name, marks=marks))
    return params


@pytest.mark.parametrize("case", _table_params(True))
def test_routes(case):
    # (the cases without an AVX-512 kernel route the same without AVX-512)
    shape, weight, stride, padding, dilation, kw = _args(case)
    assert_routes(shape, weight, stride, padding, dilation, case[6], **kw)


@pytest.mark.parametrize("case", _table_params(False))
def test_routes_model(case):
    # the tests' model of the rules (used by the per-kernel files) agrees with this table
    shape, weight, stride, padding, dilation, kw = _args(case)
    assert expected_routes(shape, weight, stride, padding, dilation, avx512=True, **kw) == case[6]
    assert expected_routes(shape, weight, stride, padding, dilation, avx512=False, **kw) == case[7]


def test_routes_without_avx512():
    # CVOPS_DISABLE_AVX512=1 (read once): the table's other expectations; AVX-512 kernels
    # forced do not apply
    code = (
        "import importlib, pytest\n"
        "from tests.ops.test_depthwise_conv2d_plan import TABLE\n"
        "from tests.ops._depthwise_routes import assert_routes\n"
        "dw = importlib.import_module('cvops.ops.depthwise_conv2d')\n"
        "assert not dw.cpu_has_avx512()\n"
        "for name, case in TABLE.items():\n"
        "    shape, weight, stride, padding, dilation, kw, _, want = case\n"
        "    assert_routes(shape, weight, stride, padding, dilation, want, **kw)\n"
        "for name in ('backward512', 'stride2_512', 'rows512', 'masked'):\n"
        "    with dw.force_cpu_kernel(name):\n"
        "        with pytest.raises(RuntimeError, match='does not apply'):\n"
        "            dw.cpu_plan((8, 32, 14, 14), (32, 1, 3, 3), 1, 1, 1)\n"
        "print('OK')\n"
    )
    run_python(code, CVOPS_DISABLE_AVX512="1", **{ENV: None})


def test_cpu_kernels():
    assert dwmod().CPU_KERNELS == (
        "backward512",
        "stride2_512",
        "rows512",
        "masked",
        "blocked",
    )
    assert isinstance(dwmod().cpu_has_avx512(), bool)


def test_plan_arguments():
    # ints or pairs for stride, padding and dilation; the defaults (stride 1, padding 0,
    # dilation 1, float32, NCHW)
    plan = cpu_plan((8, 32, 14, 14), (32, 1, 3, 3))
    assert set(plan) == set(DIRECTIONS)
    assert plan == cpu_plan((8, 32, 14, 14), (32, 1, 3, 3), (1, 1), (0, 0), (1, 1))
    assert plan == dwmod().cpu_plan(
        [8, 32, 14, 14],
        [32, 1, 3, 3],
        stride=1,
        padding=0,
        dilation=1,
        dtype=F32,
        channels_last=False,
    )
    assert plan == expected_routes((8, 32, 14, 14), (32, 1, 3, 3), 1, 0, 1)


# --- every kernel is chosen for some shape -------------------------------------------------


def test_every_kernel_is_chosen():
    chosen = set()
    for case in TABLE.values():
        plan = cpu_plan(*_args(case)[:5], **_args(case)[5])
        chosen.update(v for v in plan.values() if v != "separate")
    kernels = set(dwmod().CPU_KERNELS)
    if has_avx512():
        assert chosen == kernels
    else:
        assert chosen == kernels - set(AVX512_KERNELS)


@pytest.mark.parametrize("kernel", ["backward512", "stride2_512", "rows512", "masked"])
@requires_avx512
def test_every_avx512_kernel_runs_by_default(kernel):
    # one case per AVX-512 kernel through the plan, numerically (small shapes)
    shape, ksize, stride, padding = {
        "backward512": ((8, 16, 7, 7), (3, 3), 1, 1),
        "stride2_512": ((8, 16, 14, 14), (3, 3), 2, 1),
        "rows512": ((8, 16, 20, 20), (5, 5), 1, 2),
        "masked": ((8, 16, 14, 14), (3, 5), 1, (1, 2)),
    }[kernel]
    plan = cpu_plan(shape, (16, 1) + ksize, stride, padding, 1)
    assert kernel in plan.values(), plan
    p = padding if isinstance(padding, tuple) else (padding, padding)
    check_against_conv2d(shape, ksize, (stride, stride), p, (1, 1), 1, True, F32)


# --- force_cpu_kernel ---------------------------------------------------------------------

FORCEABLE = [
    pytest.param("masked", marks=requires_avx512),
    "blocked",
]
SHAPES = [
    # shape, kernel, stride, padding, dilation (float32 NCHW, multiplier 1: all three apply)
    ((8, 6, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 5, 13, 12), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((9, 4, 11, 10), (3, 5), (1, 1), (1, 2), (1, 1)),
    ((2, 3, 12, 12), (3, 3), (1, 1), (2, 2), (2, 2)),
    ((2, 3, 15, 14), (5, 5), (2, 1), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("kernel", FORCEABLE)
@pytest.mark.parametrize("case", SHAPES, ids=str)
def test_forced_kernel_matches_conv2d(kernel, case):
    shape, ksize, stride, padding, dilation = case
    weight_shape = (shape[1], 1) + ksize
    with forced(kernel):
        assert_routes(shape, weight_shape, stride, padding, dilation, R(kernel))
        check_against_conv2d(shape, ksize, stride, padding, dilation, 1, True, F32)
    # and with the plan's own kernels
    check_against_conv2d(shape, ksize, stride, padding, dilation, 1, True, F32)


@pytest.mark.parametrize("kernel", FORCEABLE)
def test_forced_kernels_agree_with_the_default(kernel):
    x = torch.randn(9, 8, 10, 11)
    w = torch.randn(8, 1, 3, 3)
    b = torch.randn(8)
    g = torch.randn(9, 8, 10, 11)

    def run():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        out = cvops.depthwise_conv2d(xs, ws, bs, 1, 1)
        return (out,) + torch.autograd.grad(out, (xs, ws, bs), g)

    default = run()
    with forced(kernel):
        got = run()
    for a, b_ in zip(got, default):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-4)


@requires_avx512
def test_forcing_an_avx512_kernel_on_its_shapes():
    with forced("rows512"):
        assert_routes((8, 16, 7, 7), (16, 1, 3, 3), 1, 1, 1, R(ROWS))
        check_against_conv2d((8, 16, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, F32)
    with forced("stride2_512"):
        assert_routes((8, 16, 14, 14), (16, 1, 3, 3), 2, 1, 1, R(S2))
        check_against_conv2d((8, 16, 14, 14), (3, 3), (2, 2), (1, 1), (1, 1), 1, True, F32)
    with forced("backward512"):
        default = expected_routes((8, 16, 7, 7), (16, 1, 3, 3), 1, 1, 1)
        assert_routes((8, 16, 7, 7), (16, 1, 3, 3), 1, 1, 1, default)  # its own shape anyway
        check_against_conv2d((8, 16, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, F32)


NOT_APPLYING = [
    # kernel, shape, weight shape, stride, padding, dilation, dtype
    ("rows512", (2, 4, 9, 9), (4, 1, 3, 5), 1, (1, 2), 1, F32),  # not square
    ("rows512", (2, 4, 9, 9), (4, 1, 3, 3), 2, 1, 1, F32),  # stride 2
    ("stride2_512", (2, 4, 9, 9), (4, 1, 3, 3), 1, 1, 1, F32),  # stride 1
    ("stride2_512", (2, 4, 9, 9), (4, 1, 5, 5), 2, 2, 1, F32),  # 5x5
    ("masked", (2, 4, 9, 9), (4, 1, 3, 3), 1, 1, 1, F64),  # float64
    ("masked", (2, 4, 9, 9), (4, 1, 3, 3), 3, 1, 1, F32),  # stride 3
    ("masked", (2, 4, 9, 9), (8, 1, 3, 3), 1, 1, 1, F32),  # multiplier 2
]


@pytest.mark.parametrize("case", NOT_APPLYING, ids=str)
def test_forcing_a_kernel_that_does_not_apply_raises(case):
    # (an AVX-512 kernel without AVX-512 does not apply either)
    kernel, shape, weight_shape, stride, padding, dilation, dtype = case
    x = torch.randn(shape, dtype=dtype)
    w = torch.randn(weight_shape, dtype=dtype)
    with forced(kernel):
        with pytest.raises(RuntimeError, match="does not apply"):
            cpu_plan(shape, weight_shape, stride, padding, dilation, dtype=dtype)
        with pytest.raises(RuntimeError, match="does not apply"):
            cvops.depthwise_conv2d(x, w, None, stride, padding, dilation)
    # not forced: runs
    cvops.depthwise_conv2d(x, w, None, stride, padding, dilation)


@requires_avx512
def test_forcing_backward512_leaves_the_forward_to_the_plan():
    # a 5x5 forward is not an error under backward512 (it only implements the fused
    # backward); the fused backward of that call is
    x = torch.randn(2, 4, 9, 9)
    w = torch.randn(4, 1, 5, 5)
    want = torch.nn.functional.conv2d(x.double(), w.double(), None, 1, 2, 1, 4)
    with forced("backward512"):
        out = cvops.depthwise_conv2d(x, w, None, 1, 2)
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
        with pytest.raises(RuntimeError, match="does not apply"):
            torch.ops.cvops._depthwise_conv2d_backward(
                torch.randn(2, 4, 9, 9), x, w, [1, 1], [2, 2], [1, 1]
            )


def test_unknown_kernel_name():
    with pytest.raises(ValueError):
        with forced("blocked512"):  # removed
            pass
    with pytest.raises(ValueError):
        with forced("bogus"):
            pass
    # nothing left forced
    assert cpu_plan((8, 32, 14, 14), (32, 1, 3, 3), 1, 1, 1, dtype=BF16) == R(BLOCKED)


@requires_avx512  # (two kernels that both apply to one call: an AVX-512 one and blocked)
def test_forcing_nests_and_restores():
    shape, w = (8, 32, 14, 14), (32, 1, 3, 3)
    default = cpu_plan(shape, w, 1, 1, 1)
    assert default == expected_routes(shape, w, 1, 1, 1)
    with forced("masked"):
        assert cpu_plan(shape, w, 1, 1, 1) == R(MASKED)
        with forced("blocked"):
            assert cpu_plan(shape, w, 1, 1, 1) == R(BLOCKED)
            with forced(None):  # the plan's own choice inside a forced block
                assert cpu_plan(shape, w, 1, 1, 1) == default
            assert cpu_plan(shape, w, 1, 1, 1) == R(BLOCKED)
        assert cpu_plan(shape, w, 1, 1, 1) == R(MASKED)
        with pytest.raises(KeyError):  # restored on an exception too
            with forced("blocked"):
                raise KeyError
        assert cpu_plan(shape, w, 1, 1, 1) == R(MASKED)
    assert cpu_plan(shape, w, 1, 1, 1) == default


# --- CVOPS_DEPTHWISE_CPU_PATH -------------------------------------------------------------

_PRELUDE = (
    "import importlib, os, torch, cvops\n"
    "dw = importlib.import_module('cvops.ops.depthwise_conv2d')\n"
    "def plan(*a, **kw):\n"
    "    return dw.cpu_plan(*a, **kw)\n"
    "x, w = torch.randn(2, 8, 7, 7), torch.randn(8, 1, 3, 3)\n"
)


def test_env_var_forces_a_kernel():
    # (on an AVX-512 CPU the plan's own choice for this call is rows512)
    code = _PRELUDE + (
        "from tests.ops._depthwise_routes import expected_routes\n"
        "want = dict(forward='blocked', input_grad='blocked', weight_grad='blocked',\n"
        "            backward='separate')\n"
        "call = ((8, 144, 56, 56), (144, 1, 3, 3), 1, 1)\n"
        "assert plan(*call) == want\n"
        "cvops.depthwise_conv2d(x, w, None, 1, 1)\n"
        "with dw.force_cpu_kernel(None):\n"  # the context manager overrides it
        "    assert plan(*call) == expected_routes(*call)\n"
        "assert plan(*call) == want\n"
        "print('OK')\n"
    )
    run_python(code, **{ENV: "blocked"})


def test_env_var_unknown_kernel_raises():
    code = _PRELUDE + (
        "try:\n"
        "    cvops.depthwise_conv2d(x, w, None, 1, 1)\n"
        "except RuntimeError as e:\n"
        "    assert 'CVOPS_DEPTHWISE_CPU_PATH' in str(e), str(e)\n"
        "    print('OK')\n"
    )
    run_python(code, **{ENV: "bogus"})


def test_env_var_is_read_once():
    # set or unset after the process's first depthwise call: no effect
    code = _PRELUDE + (
        "blocked = dict(forward='blocked', input_grad='blocked', weight_grad='blocked',\n"
        "               backward='separate')\n"
        "small = ((2, 8, 7, 7), (8, 1, 3, 3), 1, 1)\n"
        "assert plan(*small, dtype=torch.bfloat16) == blocked\n"
        "cvops.depthwise_conv2d(x, w, None, 1, 1)\n"
        "os.environ['CVOPS_DEPTHWISE_CPU_PATH'] = 'masked'\n"
        "cvops.depthwise_conv2d(x, w, None, 1, 1)\n"
        "assert plan(*small, dtype=torch.bfloat16) == blocked\n"
        "print('OK')\n"
    )
    run_python(code, **{ENV: None})
    # (on an AVX-512 CPU the plan's own choice for this call is rows512)
    code = _PRELUDE + (
        "blocked = dict(forward='blocked', input_grad='blocked', weight_grad='blocked',\n"
        "               backward='separate')\n"
        "small = ((2, 8, 7, 7), (8, 1, 3, 3), 1, 1)\n"
        "cvops.depthwise_conv2d(x, w, None, 1, 1)\n"
        "assert plan(*small) == blocked\n"
        "del os.environ['CVOPS_DEPTHWISE_CPU_PATH']\n"
        "cvops.depthwise_conv2d(x, w, None, 1, 1)\n"
        "assert plan(*small) == blocked\n"
        "print('OK')\n"
    )
    run_python(code, **{ENV: "blocked"})


# --- python -m cvops.info --depthwise -----------------------------------------------------


def info(spec, **env):
    full = dict(os.environ)
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    full.pop(ENV, None)
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-m", "cvops.info", "--depthwise", spec],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def assert_printed(text, routes):
    for direction, kernel in routes.items():
        assert re.search(r"^\s*%s\s+%s\b" % (direction, kernel), text, re.M), (
            direction,
            kernel,
            text,
        )


@requires_avx512
def test_info_prints_the_plan():
    assert_printed(info("8,144,56,56,3,1,1"), R(ROWS))
    assert_printed(info("8,960,7,7,3,1,1"), R(ROWS, backward="backward512"))
    assert_printed(info("8,144,56,56,3,2,1"), R(S2))


def test_info_prints_the_plan_without_avx512_or_forced():
    assert_printed(info("8,144,56,56,3,1,1", CVOPS_DISABLE_AVX512="1"), R(BLOCKED))
    assert_printed(info("8,192,28,28,3,1,1", CVOPS_DISABLE_AVX512="1"), R(BLOCKED))
    assert_printed(info("8,144,56,56,3,1,1", **{ENV: "blocked"}), R(BLOCKED))
