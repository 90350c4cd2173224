"""soft_nms against the step-by-step pure-PyTorch reference (torchvision has no soft-NMS)."""

import pytest
import torch

import cvops
from cvops.ops._reference import soft_nms_reference
from tests.conftest import devices, requires_ops
from tests.ops.test_nms import adversarial_sets, random_boxes

pytestmark = requires_ops


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("n", [0, 1, 50, 400])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_nms_matches_reference(device, method, n, dtype):
    boxes, scores = random_boxes(n, size=300, seed=n, dtype=dtype)
    keep, kept_scores = cvops.soft_nms(boxes.to(device), scores.to(device), method=method)
    ref_keep, ref_scores = soft_nms_reference(boxes, scores, method=method)
    assert keep.dtype == torch.int64 and kept_scores.dtype == dtype
    torch.testing.assert_close(keep.cpu(), ref_keep)
    torch.testing.assert_close(kept_scores.cpu().double(), ref_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", adversarial_sets()[:4], ids=lambda c: c[0])
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_adversarial(case, method):
    _, boxes, scores = case
    scores = scores / scores.max()
    keep, kept_scores = cvops.soft_nms(boxes, scores, 0.5, 0.5, 0.01, method)
    ref_keep, ref_scores = soft_nms_reference(boxes, scores, 0.5, 0.5, 0.01, method)
    torch.testing.assert_close(keep, ref_keep)
    torch.testing.assert_close(kept_scores.double(), ref_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_soft_nms_half_precision(dtype):
    boxes, scores = random_boxes(200, size=300, seed=3)
    keep, kept_scores = cvops.soft_nms(boxes.to(dtype), scores.to(dtype))
    ref_keep, ref_scores = soft_nms_reference(boxes.to(dtype), scores.to(dtype))
    torch.testing.assert_close(keep, ref_keep)
    torch.testing.assert_close(kept_scores, ref_scores.to(dtype))


def test_soft_nms_semantics():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 0.5: gaussian decays box 1 by exp(-0.25 / 0.5); box 2 is untouched.
    keep, s = cvops.soft_nms(boxes, scores, sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(
        s, torch.tensor([0.9, 0.7, 0.8 * torch.exp(torch.tensor(-0.5)).item()])
    )
    # linear: decayed by 1 - IoU only above the threshold.
    keep, s = cvops.soft_nms(boxes, scores, iou_threshold=0.4, method="linear")
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7, 0.4]))
    keep, s = cvops.soft_nms(boxes, scores, iou_threshold=0.6, method="linear")
    assert keep.tolist() == [0, 1, 2]
    # score_threshold removes boxes once decayed below it.
    keep, _ = cvops.soft_nms(boxes, scores, iou_threshold=0.4, score_threshold=0.5, method="linear")
    assert keep.tolist() == [0, 2]
    # NaN scores are dropped.
    keep, _ = cvops.soft_nms(boxes, torch.tensor([float("nan"), 0.8, 0.7]))
    assert keep.tolist() == [1, 2]


def test_soft_nms_opcheck_and_compile():
    boxes, scores = random_boxes(60, seed=5)
    torch.library.opcheck(torch.ops.cvops.soft_nms.default, (boxes, scores, 0.3, 0.5, 0.001, 0))

    def f(b, s):
        keep, sc = cvops.soft_nms(b, s)
        return b[keep], sc * 2

    got = torch.compile(f, fullgraph=True, backend="eager")(boxes, scores)
    want = f(boxes, scores)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_dense_overlaps(method):
    # Every box overlaps every other: the kernel's dense path (a scan per selection).
    boxes, scores = random_boxes(1600, size=20, min_wh=40, max_wh=60, seed=8)
    keep, kept_scores = cvops.soft_nms(boxes, scores, 0.5, 0.5, 0.05, method)
    ref_keep, ref_scores = soft_nms_reference(boxes, scores, 0.5, 0.5, 0.05, method)
    torch.testing.assert_close(keep, ref_keep)
    torch.testing.assert_close(kept_scores.double(), ref_scores, rtol=1e-5, atol=1e-6)
