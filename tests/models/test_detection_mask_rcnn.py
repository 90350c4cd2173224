"""maskrcnn_resnet50_fpn against torchvision's: parameter counts, strict state_dict loads,
eval detections and pasted masks, and the training loss dict with transplanted weights."""

import pytest
import torch

import cvops.models as cm
from cvops.models.detection import MaskRCNN
from cvops.models.segmentation import FrozenBatchNorm2d

from . import _det
from ._equiv import build_on_meta, num_params
from .test_detection_faster_rcnn import KW as FASTER_KW

# 20 detections per image: the mask head (4 convs at 14x14x256) dominates the run time
KW = dict(FASTER_KW, box_detections_per_img=20)


@pytest.fixture(scope="module")
def pair():
    return _det.reference_and_ours("maskrcnn_resnet50_fpn", **KW)


def test_registered_and_param_counts():
    model = build_on_meta(cm.maskrcnn_resnet50_fpn)
    assert isinstance(model, MaskRCNN)
    assert num_params(model) == 44_454_513
    frozen = build_on_meta(cm.maskrcnn_resnet50_fpn, norm_layer=FrozenBatchNorm2d)
    assert num_params(frozen) == 44_401_393


def test_eval_detections_and_masks_match_torchvision(pair):
    ref, ours = pair
    imgs = _det.images(seed=6)
    expected, actual = _det.eval_both(ref, ours, imgs)
    tol = _det.rounding_tolerances(ref, imgs, expected, actual)
    box, score, iou = _det.compare_detections(expected, actual, atol=tol)
    assert box <= tol[0] and score <= tol[1]
    assert iou >= _det.MASK_IOU
    assert actual[0]["masks"].shape[1:] == (1, 120, 150)
    assert actual[1]["masks"].shape[1:] == (1, 100, 90)
    assert (actual[0]["masks"] > 0.5).any()  # the masks are not empty


def test_training_losses_match_torchvision(pair):
    ref, ours = pair
    imgs = _det.images(seed=7)
    tgts = _det.targets(imgs, with_masks=True)
    expected = _det.train_losses(ref, imgs, tgts)
    actual = _det.train_losses(ours, imgs, tgts)
    assert "loss_mask" in actual and len(actual) == 5
    _det.compare_losses(expected, actual)


def test_no_detections_and_an_image_without_objects(pair):
    ours = pair[1]
    imgs = _det.images(seed=8, sizes=((3, 64, 80), (3, 70, 60)))
    ours.roi_heads.score_thresh = 1.0
    try:
        with torch.no_grad():
            out = ours.eval()(imgs)
    finally:
        ours.roi_heads.score_thresh = KW["box_score_thresh"]
    assert out[0]["boxes"].shape == (0, 4) and out[0]["masks"].shape == (0, 1, 64, 80)
    tgts = _det.targets(imgs, with_masks=True)
    empty = torch.zeros(0, 70, 60, dtype=torch.uint8)
    tgts[1] = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": empty,
    }
    losses = _det.train_losses(ours, imgs, tgts)
    assert all(torch.isfinite(v) for v in losses.values())
