"""torchvision's Faster R-CNN with cvops' RoI pooling swapped in: it scripts and gives
torchvision's detections, and its RoI feature path goes through torch.fx feature extraction."""

import warnings

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import cvops
from tests.conftest import requires_ops

pytestmark = [requires_ops, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        min_size=64,
        max_size=96,
        box_score_thresh=0.0,  # random weights: keep every detection so there is something
        box_detections_per_img=20,
    )
    return m.eval()


def _cvops_pooler(tv_pooler):
    return cvops.ops.MultiScaleRoIAlign(
        tv_pooler.featmap_names, tv_pooler.output_size, tv_pooler.sampling_ratio
    )


def test_scripted_with_cvops_pooler_matches_torchvision(model):
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    with torch.no_grad():
        expected = model(images)
    tv_pooler = model.roi_heads.box_roi_pool
    model.roi_heads.box_roi_pool = _cvops_pooler(tv_pooler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(model)
        # No profiling-executor optimisation: the first runs of a scripted model are slow.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            _, detections = scripted(images)
    finally:
        model.roi_heads.box_roi_pool = tv_pooler
    assert isinstance(scripted.roi_heads.box_roi_pool, torch.jit.ScriptModule)
    for got, want in zip(detections, expected):
        assert got["boxes"].shape[0] == want["boxes"].shape[0] > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)


class BoxFeatures(nn.Module):
    """Faster R-CNN's RoI feature path: backbone + FPN, RoI pooling, box head."""

    def __init__(self, model, pooler):
        super().__init__()
        self.backbone, self.pool, self.head = model.backbone, pooler, model.roi_heads.box_head

    def forward(self, images, proposals):
        features = self.backbone(images)
        shapes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
        return self.head(self.pool(features, proposals, shapes))


class LevelFeatures(BoxFeatures):
    """The same with RoIAlign on the finest FPN level only."""

    def forward(self, images, proposals):
        return self.head(self.pool(self.backbone(images)["0"], proposals))


def test_fx_feature_extraction_with_cvops_poolers(model):
    images = torch.rand(2, 3, 64, 64)
    proposals = [
        torch.tensor([[2.0, 3, 40, 50], [10, 10, 60, 30]]),
        torch.tensor([[0.0, 0, 63, 63]]),
    ]
    tv_pooler = model.roi_heads.box_roi_pool
    # A fresh torchvision pooler: torchvision's keeps the scales of its first call.
    fresh = torchvision.ops.MultiScaleRoIAlign(
        tv_pooler.featmap_names, tv_pooler.output_size, tv_pooler.sampling_ratio
    )
    with torch.no_grad():
        reference = BoxFeatures(model, fresh).eval()(images, proposals)
        multi_scale = BoxFeatures(model, _cvops_pooler(tv_pooler))
        for net, expected, pooled_by in (
            (multi_scale, reference, "_multiscale_roi_align"),
            (LevelFeatures(model, cvops.ops.RoIAlign(7, 0.25, 2)), None, "roi_align"),
        ):
            net.eval()  # weights=None builds BatchNorm2d: train mode would update its stats
            extractor = create_feature_extractor(net, {"backbone.fpn": "fpn", "head": "head"})
            # The pooling is one node of the graph (torch.fx.wrap), not traced into.
            targets = {getattr(n.target, "__name__", None) for n in extractor.graph.nodes}
            assert pooled_by in targets
            out = extractor(images, proposals)
            assert torch.equal(out["head"], net(images, proposals))
            if expected is not None:
                torch.testing.assert_close(out["head"], expected, rtol=1e-4, atol=1e-5)
