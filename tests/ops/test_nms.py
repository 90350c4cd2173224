"""nms / batched_nms / nms_fixed against torchvision and the pure-PyTorch references."""

import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import nms as tv_nms

import cvops
from cvops.ops._reference import batched_nms_reference, nms_reference
from tests.conftest import devices, requires_ops

pytestmark = requires_ops

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def random_boxes(n, size=800.0, min_wh=4.0, max_wh=128.0, offset=0.0, seed=0, dtype=None):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size + offset
    wh = torch.rand(n, 2, generator=g) * (max_wh - min_wh) + min_wh
    boxes = torch.cat([xy, xy + wh], 1)
    # Distinct scores, so torchvision's (unstable) sort gives the same order as ours.
    scores = (torch.randperm(n, generator=g).float() + 0.5) / max(n, 1)
    if dtype is not None:
        boxes, scores = boxes.to(dtype), scores.to(dtype)
    return boxes, scores


def adversarial_sets():
    """(name, boxes, scores): heavy overlap, identical and zero-area boxes, extreme scales."""
    g = torch.Generator().manual_seed(1)
    out = []
    b, s = random_boxes(300, size=40.0, min_wh=30, max_wh=60, seed=2)
    out.append(("heavy_overlap", b, s))
    one = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    out.append(("identical", one.repeat(50, 1), torch.randperm(50, generator=g).float()))
    b, s = random_boxes(200, seed=3)
    b[::3, 2] = b[::3, 0]  # zero width
    b[1::5, 3] = b[1::5, 1]  # zero height
    b[7] = b[8] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # identical points
    out.append(("zero_area", b, s))
    b, s = random_boxes(200, size=1e-3, min_wh=1e-5, max_wh=1e-3, seed=4)
    out.append(("tiny", b, s))
    b, s = random_boxes(200, size=1e6, min_wh=1e4, max_wh=2e5, offset=-5e5, seed=5)
    out.append(("huge", b, s))
    b, s = random_boxes(200, size=3e19, min_wh=1e18, max_wh=1e19, seed=6)
    out.append(("area_overflow", b, s))
    # Exact IoU ties with the threshold: [0,0,2,1] vs [0,0,1,1] has IoU exactly 0.5.
    b = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 4.0, 1.0]])
    out.append(("iou_equals_threshold", b, torch.tensor([0.9, 0.8, 0.7])))
    # Mixed sizes: a few very large boxes among small ones (several grid levels).
    b, s = random_boxes(400, seed=7)
    big, _ = random_boxes(20, size=100, min_wh=300, max_wh=700, seed=8)
    out.append(("mixed_sizes", torch.cat([b, big]), torch.randperm(420, generator=g).float()))
    return out


@pytest.mark.parametrize("n", [0, 1, 5, 100, 129, 1000, 3000])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_nms_matches_torchvision_random(n, threshold):
    boxes, scores = random_boxes(n, seed=n)
    torch.testing.assert_close(
        cvops.nms(boxes, scores, threshold), tv_nms(boxes, scores, threshold)
    )


@pytest.mark.parametrize("case", adversarial_sets(), ids=lambda c: c[0])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_nms_matches_torchvision_adversarial(case, threshold):
    _, boxes, scores = case
    expected = tv_nms(boxes, scores, threshold)
    torch.testing.assert_close(cvops.nms(boxes, scores, threshold), expected)
    torch.testing.assert_close(nms_reference(boxes, scores, threshold), expected)


def test_nms_float64_matches_torchvision():
    boxes, scores = random_boxes(2000, seed=11, dtype=torch.float64)
    for t in THRESHOLDS:
        torch.testing.assert_close(cvops.nms(boxes, scores, t), tv_nms(boxes, scores, t))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", devices())
def test_nms_half_precision(dtype, device):
    # torchvision's CPU nms has no half kernels: compare with the reference, which (like our
    # kernels) computes in float32. Half scores have many ties: lower index first.
    boxes, scores = random_boxes(600, seed=12, dtype=dtype)
    expected = nms_reference(boxes, scores, 0.5)
    torch.testing.assert_close(cvops.nms(boxes.to(device), scores.to(device), 0.5).cpu(), expected)


def test_ties_keep_the_lower_index_first():
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10], [0, 0, 10, 10]]
    )
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5])
    # Box 3 is identical to box 0 with the same score: 0 ranks first and suppresses it.
    assert cvops.nms(boxes, scores, 0.5).tolist() == [2, 0, 1]
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert cvops.nms(boxes, scores, 0.5).tolist() == [0, 1, 2]
    assert cvops.nms(boxes, torch.tensor([0.0, -0.0, 0.0, -0.0]), 0.5).tolist() == [0, 1, 2]


def test_nan_scores_are_dropped_and_suppress_nothing():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([float("nan"), 0.5, 0.7])
    assert cvops.nms(boxes, scores, 0.5).tolist() == [2, 1]
    assert cvops.nms(boxes, torch.full((3,), float("nan")), 0.5).tolist() == []
    idxs = torch.tensor([0, 0, 1])
    assert cvops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [2, 1]


def test_infinite_scores_are_ordinary():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([float("-inf"), float("inf"), 0.0])
    assert cvops.nms(boxes, scores, 0.5).tolist() == [1, 2]


@pytest.mark.parametrize("device", devices())
def test_empty_input(device):
    boxes, scores = torch.zeros(0, 4, device=device), torch.zeros(0, device=device)
    out = cvops.nms(boxes, scores, 0.5)
    assert out.dtype == torch.int64 and out.shape == (0,) and out.device.type == device
    out = cvops.batched_nms(boxes, scores, torch.zeros(0, dtype=torch.int64, device=device), 0.5)
    assert out.dtype == torch.int64 and out.shape == (0,)
    idx, count = cvops.nms_fixed(boxes, scores, 0.5, 4)
    assert idx.tolist() == [-1] * 4 and int(count) == 0


def test_non_contiguous_inputs():
    boxes, scores = random_boxes(500, seed=13)
    wide = torch.zeros(500, 8)
    wide[:, ::2] = boxes
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    s2 = torch.stack([scores, scores], 1)[:, 0]
    torch.testing.assert_close(cvops.nms(strided, s2, 0.5), tv_nms(boxes, scores, 0.5))


# ----------------------------------------------------------------------------------------
# batched_nms
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,classes", [(0, 1), (10, 3), (500, 5), (3000, 80)])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_batched_nms_matches_per_class_reference_negative_coords(n, classes, threshold):
    boxes, scores = random_boxes(n, offset=-400.0, seed=n + classes)
    idxs = torch.randint(-3, classes - 3, (n,))
    expected = batched_nms_reference(boxes, scores, idxs, threshold)
    torch.testing.assert_close(cvops.batched_nms(boxes, scores, idxs, threshold), expected)


def test_batched_nms_matches_torchvision_set():
    boxes, scores = random_boxes(2000, seed=21)
    idxs = torch.randint(0, 10, (2000,))
    ours = cvops.batched_nms(boxes, scores, idxs, 0.5)
    torch.testing.assert_close(ours, tv_batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batched_nms_half_precision_negative_coords(dtype):
    # The coordinate-offset trick would lose all precision here (offsets of ~1e4 in half).
    boxes, scores = random_boxes(800, size=200, offset=-100.0, seed=22, dtype=dtype)
    idxs = torch.randint(0, 40, (800,))
    expected = batched_nms_reference(boxes, scores, idxs, 0.5)
    torch.testing.assert_close(cvops.batched_nms(boxes, scores, idxs, 0.5), expected)


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int16, torch.uint8])
def test_batched_nms_accepts_integer_idxs(idx_dtype):
    boxes, scores = random_boxes(300, seed=23)
    idxs = torch.randint(0, 5, (300,))
    expected = cvops.batched_nms(boxes, scores, idxs, 0.5)
    torch.testing.assert_close(cvops.batched_nms(boxes, scores, idxs.to(idx_dtype), 0.5), expected)


def test_batched_nms_classes_do_not_interact():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 4)
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    idxs = torch.tensor([0, 1, 2, 1])
    assert cvops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 2, 0]


# ----------------------------------------------------------------------------------------
# nms_fixed
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("max_output", [0, 1, 10, 5000])
def test_nms_fixed_matches_nms(device, max_output):
    boxes, scores = random_boxes(1000, seed=31)
    boxes, scores = boxes.to(device), scores.to(device)
    keep = cvops.nms(boxes, scores, 0.5)
    idx, count = cvops.nms_fixed(boxes, scores, 0.5, max_output)
    assert idx.shape == (max_output,) and idx.dtype == torch.int64
    assert count.shape == () and count.dtype == torch.int64
    k = min(keep.numel(), max_output)
    assert int(count) == k
    torch.testing.assert_close(idx[:k], keep[:k])
    assert (idx[k:] == -1).all()


def test_nms_fixed_drops_bad_boxes_instead_of_raising():
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [float("nan"), 0, 1, 1], [5, 5, 1, 1], [20, 20, 30, 30]]
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    idx, count = cvops.nms_fixed(boxes, scores, 0.5, 6)
    assert idx.tolist() == [0, 3, -1, -1, -1, -1] and int(count) == 2


def test_nms_fixed_rejects_negative_max_output():
    boxes, scores = random_boxes(4)
    with pytest.raises(ValueError, match="max_output must be non-negative"):
        cvops.nms_fixed(boxes, scores, 0.5, -1)
    with pytest.raises(TypeError, match="max_output must be an int"):
        cvops.nms_fixed(boxes, scores, 0.5, 2.0)


# ----------------------------------------------------------------------------------------
# Dispatcher integration: opcheck, torch.compile
# ----------------------------------------------------------------------------------------


def test_opcheck():
    boxes, scores = random_boxes(64, seed=41)
    idxs = torch.randint(0, 3, (64,))
    torch.library.opcheck(torch.ops.cvops.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.cvops.batched_nms.default, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.cvops.nms_fixed.default, (boxes, scores, 0.5, 16))
    torch.library.opcheck(torch.ops.cvops.soft_nms.default, (boxes, scores, 0.3, 0.5, 0.001, 1))


def test_torch_compile_fullgraph():
    boxes, scores = random_boxes(300, seed=42)
    idxs = torch.randint(0, 4, (300,))

    def detect(boxes, scores, idxs):
        keep = cvops.nms(boxes, scores, 0.5)
        keep_b = cvops.batched_nms(boxes, scores, idxs, 0.5)
        fixed, count = cvops.nms_fixed(boxes, scores, 0.5, 50)
        return boxes[keep] * 2, keep_b, fixed, count

    compiled = torch.compile(detect, fullgraph=True, backend="eager")
    got = compiled(boxes, scores, idxs)
    want = detect(boxes, scores, idxs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_export_nms_fixed():
    class Post(torch.nn.Module):
        def forward(self, boxes, scores):
            return cvops.nms_fixed(boxes, scores, 0.5, 20)

    boxes, scores = random_boxes(100, seed=43)
    ep = torch.export.export(Post(), (boxes, scores))
    got = ep.module()(boxes, scores)
    torch.testing.assert_close(got[0], Post()(boxes, scores)[0])


@pytest.mark.parametrize("device", devices())
def test_autocast_runs_in_float32(device):
    # Under autocast, half boxes and float32 scores are reconciled (as torchvision does).
    boxes, scores = random_boxes(300, seed=44)
    boxes, scores = boxes.to(device), scores.to(device)
    half = boxes.half()
    expected = cvops.nms(half.float(), scores, 0.5)
    idxs = torch.randint(0, 3, (300,), device=device)
    with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
        torch.testing.assert_close(cvops.nms(half, scores, 0.5), expected)
        torch.testing.assert_close(
            cvops.batched_nms(half, scores, idxs, 0.5),
            cvops.batched_nms(half.float(), scores, idxs, 0.5),
        )
        torch.testing.assert_close(cvops.nms_fixed(half, scores, 0.5, 10)[0], expected[:10])
        keep, s = cvops.soft_nms(half, scores.half())
    assert s.dtype == torch.float16
    torch.testing.assert_close(keep, cvops.soft_nms(half.float(), scores.half().float())[0])
    with pytest.raises(TypeError, match="same dtype"):
        cvops.nms(half, scores, 0.5)
