"""Region Proposal Network (Faster R-CNN, Ren et al., NeurIPS 2015) as torchvision builds it.

Per level: a shared 3x3 conv + ReLU, a 1x1 objectness conv (A outputs) and a 1x1 box-delta
conv (4A). Proposals: decode every anchor's deltas (weights 1,1,1,1), keep the top
``pre_nms_top_n`` objectness logits per level and image, sigmoid, clip to the image, drop
boxes narrower than ``min_size`` (1e-3) and scores below ``score_thresh``, NMS per level
(cvops ``batched_nms`` with the level as category), keep ``post_nms_top_n`` per image.
Loss: anchors matched at IoU 0.7/0.3 with low-quality matches, 256 sampled at 50%
positives; BCE on the objectness of the sampled anchors, smooth-L1 (beta 1/9, summed) on
the positives' deltas divided by the number sampled.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from .._fused_layers import conv_block
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .image_list import ImageList
from .mask_head import conv3x3_relu
from .matcher import BalancedPositiveNegativeSampler, Matcher


class RPNHead(nn.Module):
    """``conv`` (``conv_depth`` 3x3 conv + ReLU blocks, keys ``conv.{i}.0``), ``cls_logits``
    and ``bbox_pred`` 1x1 convs; normal(std 0.01) weights, zero biases."""

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(
            *[conv3x3_relu(in_channels, in_channels) for _ in range(conv_depth)]
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = self.conv(feature)
            logits.append(conv_block(self.cls_logits, t))
            deltas.append(conv_block(self.bbox_pred, t))
        return logits, deltas


def flatten_level(t: Tensor, channels: int) -> Tensor:
    """``[N, A * C, H, W]`` to ``[N, H * W * A, C]`` (location-major, then anchor)."""
    n, _, h, w = t.shape
    return t.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels)


def concat_box_prediction_layers(
    box_cls: List[Tensor], box_regression: List[Tensor]
) -> Tuple[Tensor, Tensor]:
    """All levels' predictions as ``[N * sum HWA, C]`` scores and ``[N * sum HWA, 4]``
    deltas, in the anchors' order."""
    cls_flat, reg_flat = [], []
    for cls, reg in zip(box_cls, box_regression):
        num_anchors = reg.shape[1] // 4
        cls_flat.append(flatten_level(cls, cls.shape[1] // num_anchors))
        reg_flat.append(flatten_level(reg, 4))
    return torch.cat(cls_flat, dim=1).flatten(0, -2), torch.cat(reg_flat, dim=1).reshape(-1, 4)


class RegionProposalNetwork(nn.Module):
    """torchvision's ``RegionProposalNetwork`` constructor and ``forward(images, features,
    targets=None) -> (proposals per image, losses)``; ``pre_nms_top_n`` and
    ``post_nms_top_n`` are dicts with ``training`` and ``testing`` counts."""

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_top_n: Dict[str, int],
        post_nms_top_n: Dict[str, int],
        nms_thresh: float,
        score_thresh: float = 0.0,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True
        )
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self._pre_nms_top_n = dict(pre_nms_top_n)
        self._post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def assign_targets_to_anchors(
        self, anchors: List[Tensor], targets: List[Dict[str, Tensor]]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image: labels (1 foreground, 0 background, -1 ignored) and matched boxes."""
        labels, matched_boxes = [], []
        for anchors_i, target in zip(anchors, targets):
            gt = target["boxes"]
            if gt.numel() == 0:
                matched_boxes.append(torch.zeros_like(anchors_i, dtype=torch.float32))
                labels.append(anchors_i.new_zeros(anchors_i.shape[0], dtype=torch.float32))
                continue
            idx = self.proposal_matcher(box_iou(gt, anchors_i))
            matched_boxes.append(gt[idx.clamp(min=0)])
            lab = (idx >= 0).to(torch.float32)
            lab[idx == Matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
        return labels, matched_boxes

    def _top_n_per_level(self, objectness: Tensor, counts: List[int]) -> Tensor:
        out, offset = [], 0
        for ob in objectness.split(counts, 1):
            k = min(self.pre_nms_top_n(), ob.shape[1])
            out.append(ob.topk(k, dim=1).indices + offset)
            offset += ob.shape[1]
        return torch.cat(out, dim=1)

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: List[Tuple[int, int]],
        num_anchors_per_level: List[int],
    ) -> Tuple[List[Tensor], List[Tensor]]:
        n = proposals.shape[0]
        device = proposals.device
        objectness = objectness.detach().reshape(n, -1)
        levels = torch.cat(
            [
                torch.full((c,), i, dtype=torch.int64, device=device)
                for i, c in enumerate(num_anchors_per_level)
            ]
        )
        levels = levels.reshape(1, -1).expand_as(objectness)
        top = self._top_n_per_level(objectness, num_anchors_per_level)
        rows = torch.arange(n, device=device)[:, None]
        probs = torch.sigmoid(objectness[rows, top])
        levels, proposals = levels[rows, top], proposals[rows, top]
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, shape in zip(proposals, probs, levels, image_shapes):
            boxes = clip_boxes_to_image(boxes, shape)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: List[Tensor],
        regression_targets: List[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos_masks))[0]
        neg = torch.where(torch.cat(neg_masks))[0]
        sampled = torch.cat([pos, neg])
        labels_all = torch.cat(labels)
        targets_all = torch.cat(regression_targets)
        box_loss = (
            F.smooth_l1_loss(pred_bbox_deltas[pos], targets_all[pos], beta=1 / 9, reduction="sum")
            / sampled.numel()
        )
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], labels_all[sampled]
        )
        return objectness_loss, box_loss

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        targets: Optional[List[Dict[str, Tensor]]] = None,
    ) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_images = len(anchors)
        per_level = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        losses: Dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched, anchors)
            loss_objectness, loss_box = self.compute_loss(
                objectness, deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, losses
