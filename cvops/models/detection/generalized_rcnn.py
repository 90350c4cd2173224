"""The two-stage detector's skeleton (torchvision's ``GeneralizedRCNN``): transform,
backbone, RPN, RoI heads, postprocess. Training returns the loss dict; evaluation a list of
``{"boxes", "labels", "scores"[, "masks"]}`` per image, in original image coordinates."""

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

Target = Dict[str, Tensor]


def check_training_targets(targets: Optional[List[Target]]) -> None:
    if targets is None:
        raise ValueError("targets are required in training mode")
    for t in targets:
        boxes = t.get("boxes") if isinstance(t, dict) else None
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError("every target needs 'boxes', a Tensor[N, 4]")


def check_degenerate(targets: Optional[List[Target]]) -> None:
    """Boxes must have positive width and height (after resizing)."""
    if targets is None:
        return
    for i, t in enumerate(targets):
        bad = (t["boxes"][:, 2:] <= t["boxes"][:, :2]).any(dim=1)
        if bad.any():
            box = t["boxes"][bad.nonzero()[0, 0]].tolist()
            raise ValueError(
                "all boxes must have positive width and height; target %d has %s" % (i, box)
            )


def original_sizes(images: List[Tensor]) -> List[Tuple[int, int]]:
    sizes = []
    for img in images:
        if not isinstance(img, Tensor) or img.dim() != 3:
            raise ValueError("images must be a list of [C, H, W] tensors")
        sizes.append((int(img.shape[-2]), int(img.shape[-1])))
    return sizes


def prepare_inputs(model: nn.Module, images: List[Tensor], targets: Optional[List[Target]]):
    """Check the inputs, run ``model.transform`` and ``model.backbone``: returns the
    ``ImageList``, the transformed targets, the original sizes and the feature dict."""
    if model.training:
        check_training_targets(targets)
    sizes = original_sizes(images)
    image_list, targets = model.transform(images, targets)
    check_degenerate(targets)
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    return image_list, targets, sizes, features


class GeneralizedRCNN(nn.Module):
    """``transform``, ``backbone`` (returns a feature dict, or one tensor), ``rpn``,
    ``roi_heads``: the attribute names, hence the state_dict prefixes, are torchvision's."""

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, transform):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images: List[Tensor], targets: Optional[List[Target]] = None):
        image_list, targets, sizes, features = prepare_inputs(self, images, targets)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        if self.training:
            return {**detector_losses, **proposal_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, sizes)
