"""The host/device headers' math, compiled on the CPU as the GPU compiles it.

nvcc fuses a * b + c into one FMA by default; g++ does the same when FMA instructions are
enabled. header_probe.cpp is built here with -mfma (and GNU C++'s default
-ffp-contract=fast), so where these tests see an unfused result the GPU sees one too. The
other checks run plain functions of the CUDA launch logic at sizes no CPU test could
allocate. No cvops build is needed: only a C++ compiler and the headers.
"""

import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def _has_fma():
    try:
        with open("/proc/cpuinfo") as f:
            return " fma " in f.read()
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    CXX is None or not _has_fma(), reason="needs a C++ compiler and an x86 CPU with FMA"
)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("probe") / "header_probe")
    src = os.path.join(ROOT, "tests", "csrc", "header_probe.cpp")
    cmd = [CXX, "-O2", "-mfma", "-std=c++17", "-I", os.path.join(ROOT, "csrc"), src, "-o", exe]
    subprocess.run(cmd, check=True, capture_output=True)

    def run(*args):
        out = subprocess.run([exe] + [str(a) for a in args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    return run


def f32(x):
    return float(np.float32(x))


# --- RoI Align: rounding decides the sample count and the taps ---------------------------

# The review's example: spatial scale 1/14, aligned, adaptive sampling, 7x7. Rounded twice,
# the box is exactly 7 pixels wide (1 sample per bin); fused, 7.0000019 (2 per bin).
SCALE_1_14 = f32(1 / 14)


def test_roi_align_geometry_is_not_fused(probe):
    valid, batch, grid_h, grid_w, start_w, bin_w = probe(
        "roi_geometry", "float", 0, 448.25, 448.25, 546.25, 546.25, SCALE_1_14.hex(), 1, 7, 0, 1
    )
    assert (valid, batch) == ("1", "0")
    start = f32(f32(448.25 * SCALE_1_14) - 0.5)
    width = f32(f32(f32(546.25 * SCALE_1_14) - 0.5) - start)
    assert width == 7.0
    assert float.fromhex(start_w) == start
    assert float.fromhex(bin_w) == 1.0
    assert (grid_h, grid_w) == ("1", "1")


def test_roi_align_example_matches_torchvision_on_cpu():
    # The same box through the op: one sample per bin, as torchvision (whose CPU kernel
    # does not fuse) takes.
    x = torch.randn(1, 3, 60, 60)
    box = torch.tensor([[0, 448.25, 448.25, 546.25, 546.25]])
    import cvops

    if not cvops.has_ops():
        pytest.skip("cvops._C is not built")
    ours = cvops.roi_align(x, box, 7, SCALE_1_14, 0, True)
    ref = torchvision.ops.roi_align(x, box, 7, SCALE_1_14, 0, True)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def _fma32(a, b, c):
    # float32 fma: the exact product of two floats fits a double; one rounding to float32.
    return f32(a * b + c)


def _fused_case(rng):
    """(start, p, bin) where start + p * bin differs fused and unfused in float32."""
    while True:
        start, b = f32(rng.uniform(-50, 50)), f32(rng.uniform(0.01, 20))
        p = int(rng.integers(1, 14))
        if _fma32(p, b, start) != f32(start + f32(p * b)):
            return start, p, b


def test_roi_align_sample_coord_is_not_fused(probe):
    rng = np.random.default_rng(0)
    for _ in range(20):
        start, p, b = _fused_case(rng)
        i, grid = int(rng.integers(0, 4)), 4
        within = f32(f32(f32(i + 0.5) * b) / grid)
        expected = f32(f32(start + f32(p * b)) + within)
        (coord,) = probe("sample_coord", start.hex(), p, b.hex(), i, grid)
        assert float.fromhex(coord) == expected


@pytest.mark.parametrize("size", [0, -1])
def test_roi_align_axis_tap_of_an_empty_axis_is_outside(probe, size):
    # A 0-high or 0-wide map: no tap, so no read at index -1 (the review's crash).
    for coord in (-1.0, -0.5, 0.0, 0.3):
        assert probe("axis_tap", coord, size)[0] == "0"
    assert probe("axis_tap", 0.3, 1) == ["1", "0", "0"]


# --- RoI batch index: one rule for both ops, both backends --------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (3, 3),
        (-0.5, -1),
        (0.5, -1),
        (2.999, -1),
        (4, -1),
        (-1, -1),
        ("nan", -1),
        ("inf", -1),
        ("-inf", -1),
        (1e30, -1),
    ],
)
def test_roi_batch_index_rule(probe, value, expected):
    # The rule check_roi_batch_indices enforces (an integer in [0, batch)); the CUDA kernels
    # apply it when that check was skipped under graph capture.
    assert probe("roi_batch_index", value, 4) == [str(expected)] * 2


@pytest.mark.parametrize("batch", [-0.5, "nan", 4, 0.5])
def test_roi_align_and_roi_pool_refuse_the_same_batch_indices(probe, batch):
    geo = probe("roi_geometry", "double", batch, 1, 1, 5, 5, 1, 0, 2, 2, 4)
    box = probe("roi_pool_box", batch, 1, 1, 5, 5, 1, 4)
    assert geo[:2] == ["0", "-1"] and box == ["0", "-1"]


def test_roi_pool_box_with_a_non_finite_coordinate_is_invalid(probe):
    # RoI Pool's backward skips such RoIs on both backends (roi_image()).
    assert probe("roi_pool_box", 0, "nan", 1, 5, 5, 1, 4) == ["0", "-1"]
    assert probe("roi_pool_box", 0, 1, 1, "inf", 5, 1, 4) == ["0", "-1"]
    assert probe("roi_pool_box", 1, 1, 1, 5, 5, 1, 4) == ["1", "1"]


# --- Loss statistics: launch shape -----------------------------------------------------------


@pytest.mark.parametrize(
    "rows, length",
    [(1024 * 80, 64), (65536, 1), (3, 10**8), (2**31 + 5, 1), (2**20, 3 * 4096 + 1)],
)
def test_loss_stats_launch_fits_cuda_limits(probe, rows, length):
    # Rows used to sit on gridDim.y (at most 65,535): a multilabel Dice over [1024, 80, 8, 8]
    # raised on CUDA. Tiles now go on gridDim.x (at most 2^31 - 1), grid-strided past it.
    tiles, blocks, chunk = map(int, probe("stats_launch", rows, length))
    assert tiles == rows * math.ceil(length / chunk)
    assert 1 <= blocks <= 2**31 - 1 and blocks == min(tiles, 2**31 - 1)


@pytest.mark.parametrize("rows, length, blocks", [(7, 10000, 3), (5, 4096, 5), (3, 1, 64)])
def test_loss_stats_tiles_cover_every_element_once(probe, rows, length, blocks):
    assert probe("stats_cover", rows, length, blocks) == ["0"]


# --- Deterministic fixed-point accumulator: scale -------------------------------------------


@pytest.mark.parametrize(
    "max_abs, bound", [(0.0, 100.0), (1e-320, 1.0), (1.0, 65536.0), (1e308, 1e6), (3.0, 7.0)]
)
def test_fixed_point_scale_is_finite_and_safe(probe, max_abs, bound):
    e, scale, inv = probe("fixed_point", max_abs, bound)
    scale, inv = float.fromhex(scale), float.fromhex(inv)
    # Both finite (an all-zero gradient used to ask for 2^1077 = inf, and 0 * inf = NaN).
    assert math.isfinite(scale) and math.isfinite(inv) and scale > 0
    assert scale == 2.0 ** int(e)
    # No sum of `bound` contributions of at most max_abs can overflow int64 ...
    assert max_abs * scale * bound <= 2.0**61
    # ... and the precision is max_abs * bound * 2^-61 within a factor of 2 (absolute).
    if max_abs * bound > 2.0**-960:
        assert max_abs * scale * bound > 2.0**59


def test_fixed_point_scale_of_non_finite_max_is_finite(probe):
    for v in ("nan", "inf"):
        _, scale, inv = probe("fixed_point", v, 10)
        assert math.isfinite(float.fromhex(scale)) and math.isfinite(float.fromhex(inv))
