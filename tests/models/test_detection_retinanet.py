"""retinanet_resnet50_fpn against torchvision's: parameter count, strict state_dict loads,
eval detections and the training loss dict with transplanted weights."""

import pytest
import torch

import cvops.models as cm
from cvops.models.detection import RetinaNet

from . import _det
from ._equiv import build_on_meta, num_params

KW = dict(min_size=128, max_size=160, score_thresh=0.02, topk_candidates=200)


@pytest.fixture(scope="module")
def pair():
    return _det.reference_and_ours("retinanet_resnet50_fpn", **KW)


def test_registered_and_param_count():
    model = build_on_meta(cm.retinanet_resnet50_fpn)
    assert isinstance(model, RetinaNet)
    assert num_params(model) == 34_068_119
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    with pytest.raises(ValueError, match="weights_backbone"):
        cm.retinanet_resnet50_fpn(weights_backbone="DEFAULT")


def test_eval_detections_match_torchvision(pair):
    ref, ours = pair
    imgs = _det.images(seed=4)
    expected, actual = _det.eval_both(ref, ours, imgs)
    tol = _det.rounding_tolerances(ref, imgs, expected, actual)
    box, score, _ = _det.compare_detections(expected, actual, atol=tol)
    assert box <= tol[0] and score <= tol[1]


def test_training_losses_match_torchvision(pair):
    ref, ours = pair
    imgs = _det.images(seed=5)
    tgts = _det.targets(imgs)
    tgts[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # empty
    expected = _det.train_losses(ref, imgs, tgts)
    actual = _det.train_losses(ours, imgs, tgts)
    assert set(actual) == {"classification", "bbox_regression"}
    _det.compare_losses(expected, actual)
