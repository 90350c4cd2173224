"""torch.fx: the functional ops are leaves of symbolic traces (torch.fx.wrap), modules holding
cvops' RoI modules trace, and torchvision's feature extraction works on them."""

import sys

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import cvops
from cvops.ops import boxes as B
from tests.conftest import requires_ops

pytestmark = requires_ops


class Call(nn.Module):
    """A module whose forward is one call of ``fn`` with the traced inputs and constants.

    The call goes through the module that defines ``fn``: torch.fx.wrap (like torchvision's
    use of it) patches that module's global while tracing, so code there calling the op,
    such as the nn.Modules' forward, records it as one node."""

    def __init__(self, fn, *constants):
        super().__init__()
        self.home, self.name, self.constants = sys.modules[fn.__module__], fn.__name__, constants

    def forward(self, a, b):
        return getattr(self.home, self.name)(a, b, *self.constants)


def _rois():
    return torch.tensor([[0, 1.0, 1.0, 7.5, 6.0], [1, 0.0, 2.0, 3.0, 9.0]])


def _xyxy(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30], 1)


def _called(graph_module):
    return [n.target for n in graph_module.graph.nodes if n.op == "call_function"]


def _same(a, b):
    if isinstance(a, tuple):
        return all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


CASES = [
    (cvops.roi_align, (torch.randn(2, 3, 10, 10), _rois()), ((3, 2), 0.5, 2, True)),
    (cvops.roi_pool, (torch.randn(2, 3, 10, 10), _rois()), (3, 0.5)),
    (cvops.nms, (_xyxy(30), torch.rand(30)), (0.4,)),
    (cvops.nms_fixed, (_xyxy(30), torch.rand(30)), (0.4, 5)),
    (cvops.soft_nms, (_xyxy(30), torch.rand(30)), (0.4,)),
    (B.box_iou, (_xyxy(5), _xyxy(4, 1)), ()),
    (B.generalized_box_iou, (_xyxy(5), _xyxy(4, 1)), ()),
    (B.distance_box_iou, (_xyxy(5), _xyxy(4, 1)), ()),
    (B.complete_box_iou, (_xyxy(5), _xyxy(4, 1)), ()),
    (B.box_convert, (_xyxy(5), "xyxy"), ("cxcywh",)),
    (B.box_area, (_xyxy(5), "xywh"), ()),
    (B.clip_boxes_to_image, (_xyxy(5), (20, 30)), ()),
    (B.remove_small_boxes, (_xyxy(5), 12.0), ()),
    (cvops.sigmoid_focal_loss, (torch.randn(4, 3), torch.rand(4, 3).round()), (0.25, 2.0)),
    (cvops.depthwise_conv2d, (torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)), (None, 1, 1)),
]


@pytest.mark.parametrize("fn,inputs,constants", CASES, ids=[c[0].__name__ for c in CASES])
def test_functional_op_is_one_node(fn, inputs, constants):
    module = Call(fn, *constants)
    traced = torch.fx.symbolic_trace(module)
    assert _called(traced) == [fn]
    assert _same(traced(*inputs), module(*inputs))


def test_batched_nms_is_one_node():
    class M(nn.Module):
        def forward(self, boxes, scores, idxs):
            return sys.modules["cvops.ops.nms"].batched_nms(boxes, scores, idxs, 0.5)

    boxes, scores, idxs = _xyxy(30), torch.rand(30), torch.randint(0, 3, (30,))
    traced = torch.fx.symbolic_trace(M())
    assert _called(traced) == [cvops.batched_nms]
    assert torch.equal(traced(boxes, scores, idxs), cvops.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize(
    "module",
    [cvops.ops.RoIAlign(3, 0.5, 2), cvops.ops.RoIPool((2, 3), 0.5)],
    ids=["RoIAlign", "RoIPool"],
)
def test_roi_modules_trace(module):
    x, rois = torch.randn(2, 3, 10, 10), _rois()
    traced = torch.fx.symbolic_trace(module)
    assert torch.equal(traced(x, rois), module(x, rois))
    per_image = [rois[:1, 1:], rois[1:, 1:]]
    assert torch.equal(traced(x, per_image), module(x, rois))


class Head(nn.Module):
    """A conv, then RoI Align of its features, then a linear layer: a tiny RoI head."""

    def __init__(self, pooler):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = pooler
        self.fc = nn.Linear(4 * 9, 5)

    def forward(self, images, boxes):
        return self.fc(self.pool(self.conv(images), boxes).flatten(1))


class FPNHead(Head):
    def __init__(self):
        super().__init__(cvops.ops.MultiScaleRoIAlign(["a", "b"], 3, 2))
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, images, boxes):
        a = self.conv(images)
        feats = {"a": a, "b": self.down(a)}
        shapes = [(images.shape[-2], images.shape[-1])] * 2
        return self.fc(self.pool(feats, boxes, shapes).flatten(1))


def test_feature_extraction_of_models_holding_roi_modules():
    images = torch.randn(2, 3, 32, 32)
    boxes = [torch.tensor([[1.0, 1, 20, 20], [4, 4, 9, 9]]), torch.tensor([[0.0, 0, 31, 31]])]
    for model in (Head(cvops.ops.RoIAlign(3, 1.0, 2)), FPNHead()):
        train_nodes, eval_nodes = get_graph_node_names(model)
        assert "fc" in eval_nodes and any(n.startswith("pool") for n in eval_nodes)
        extractor = create_feature_extractor(model, {"pool": "pooled", "fc": "out"})
        out = extractor(images, boxes)
        assert torch.equal(out["out"], model(images, boxes))
        assert out["pooled"].shape == (3, 4, 3, 3)
