"""Fast R-CNN RoI heads on FPN features (torchvision's ``RoIHeads``), with the optional
Mask R-CNN branch.

Training: the ground-truth boxes are appended to the proposals, proposals are matched at
IoU 0.5 (no low-quality matches), 512 per image are sampled at 25% positives, and the loss
is ``fastrcnn_loss``. Inference: softmax scores, per-class boxes decoded with weights
(10, 10, 5, 5) and clipped, background dropped, then score threshold, boxes smaller than
1e-2 removed, per-class NMS (cvops ``batched_nms``), the best ``detections_per_img`` kept.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from .._fused_layers import linear_block
from .box_coder import BoxCoder
from .mask_head import maskrcnn_inference, maskrcnn_loss
from .matcher import BalancedPositiveNegativeSampler, Matcher

Target = Dict[str, Tensor]


class TwoMLPHead(nn.Module):
    """Flatten, ``fc6`` + ReLU, ``fc7`` + ReLU (the FPN box head)."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = linear_block(self.fc6, x.flatten(start_dim=1), relu=True)
        return linear_block(self.fc7, x, relu=True)


class FastRCNNPredictor(nn.Module):
    """``cls_score`` (``num_classes`` logits, background included) and ``bbox_pred``
    (``4 * num_classes`` deltas)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if x.dim() == 4 and tuple(x.shape[2:]) != (1, 1):
            raise ValueError("expected [N, C] or [N, C, 1, 1] features, got %s" % (tuple(x.shape),))
        x = x.flatten(start_dim=1)
        return linear_block(self.cls_score, x), linear_block(self.bbox_pred, x)


def fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: List[Tensor],
    regression_targets: List[Tensor],
    beta: float = 1 / 9,
    box_loss_weight: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Fast R-CNN's multi-task loss ``L_cls + lambda [u >= 1] L_loc`` as two terms: cross
    entropy over all sampled RoIs, and smooth-L1 (``beta``; 1/9 as torchvision, 1 in the
    paper) between the deltas predicted for each foreground RoI's ground-truth class and
    its targets, summed and divided by the number of sampled RoIs, times
    ``box_loss_weight`` (lambda)."""
    labels = torch.cat(labels)
    regression_targets = torch.cat(regression_targets)
    classification_loss = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]
    n = class_logits.shape[0]
    per_class = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
    box_loss = F.smooth_l1_loss(
        per_class[fg, labels[fg]], regression_targets[fg], beta=beta, reduction="sum"
    )
    return classification_loss, box_loss_weight * box_loss / labels.numel()


class RoIHeads(nn.Module):
    """torchvision's ``RoIHeads`` constructor (``mask_*`` modules optional) plus
    ``box_loss_beta``; ``forward(features, proposals, image_shapes, targets=None) ->
    (detections, losses)``."""

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        bbox_reg_weights: Optional[Tuple[float, float, float, float]],
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        mask_roi_pool: Optional[nn.Module] = None,
        mask_head: Optional[nn.Module] = None,
        mask_predictor: Optional[nn.Module] = None,
        box_loss_beta: float = 1 / 9,
    ):
        super().__init__()
        self.proposal_matcher = Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False
        )
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self.box_coder = BoxCoder(bbox_reg_weights or (10.0, 10.0, 5.0, 5.0))
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.box_loss_beta = box_loss_beta
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

    def has_mask(self) -> bool:
        return not (
            self.mask_roi_pool is None or self.mask_head is None or self.mask_predictor is None
        )

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        matched_idxs, labels = [], []
        for props, boxes, labs in zip(proposals, gt_boxes, gt_labels):
            if boxes.numel() == 0:
                zeros = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                matched_idxs.append(zeros)
                labels.append(zeros.clone())
                continue
            idx = self.proposal_matcher(box_iou(boxes, props))
            clamped = idx.clamp(min=0)
            lab = labs[clamped].to(torch.int64)
            lab[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1
            matched_idxs.append(clamped)
            labels.append(lab)
        return matched_idxs, labels

    def _check_targets(self, targets: Optional[List[Target]]) -> List[Target]:
        if targets is None:
            raise ValueError("targets are required in training mode")
        keys = ("boxes", "labels", "masks") if self.has_mask() else ("boxes", "labels")
        for t in targets:
            for k in keys:
                if k not in t:
                    raise ValueError("every target needs a %r entry" % k)
            if not t["boxes"].is_floating_point():
                raise TypeError("target boxes must be floating point, got %s" % t["boxes"].dtype)
            if t["labels"].dtype != torch.int64:
                raise TypeError("target labels must be int64, got %s" % t["labels"].dtype)
        return targets

    def select_training_samples(self, proposals: List[Tensor], targets: List[Target]):
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes)]
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        matched_boxes = []
        for i, (pos, neg) in enumerate(zip(pos_masks, neg_masks)):
            keep = torch.where(pos | neg)[0]
            proposals[i], labels[i], matched_idxs[i] = (
                proposals[i][keep],
                labels[i][keep],
                matched_idxs[i][keep],
            )
            boxes = gt_boxes[i]
            if boxes.numel() == 0:
                boxes = torch.zeros((1, 4), dtype=dtype, device=device)
            matched_boxes.append(boxes[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        all_boxes = self.box_coder.decode(box_regression, proposals).split(counts, 0)
        all_scores = F.softmax(class_logits, -1).split(counts, 0)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(all_boxes, all_scores, image_shapes):
            boxes = clip_boxes_to_image(boxes, shape)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
            # drop the background column, one candidate per (proposal, class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[List[Target]] = None,
    ) -> Tuple[List[Target], Dict[str, Tensor]]:
        matched_idxs: Optional[List[Tensor]] = None
        labels: Optional[List[Tensor]] = None
        if self.training:
            targets = self._check_targets(targets)
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        result: List[Target] = []
        losses: Dict[str, Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets, self.box_loss_beta
            )
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            boxes, scores, classes = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            for b, s, c in zip(boxes, scores, classes):
                result.append({"boxes": b, "labels": c, "scores": s})
        if self.has_mask():
            if self.training:
                losses["loss_mask"] = self._mask_loss(
                    features, proposals, image_shapes, targets, matched_idxs, labels
                )
            else:
                self._add_masks(features, image_shapes, result)
        return result, losses

    def _mask_logits(self, features, boxes, image_shapes) -> Tensor:
        return self.mask_predictor(
            self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
        )

    def _mask_loss(self, features, proposals, image_shapes, targets, matched_idxs, labels):
        """Mask loss on the positive sampled proposals (their matched ground truth)."""
        positives, pos_matched = [], []
        for props, idx, lab in zip(proposals, matched_idxs, labels):
            pos = torch.where(lab > 0)[0]
            positives.append(props[pos])
            pos_matched.append(idx[pos])
        logits = self._mask_logits(features, positives, image_shapes)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        return maskrcnn_loss(logits, positives, gt_masks, gt_labels, pos_matched)

    def _add_masks(self, features, image_shapes, result: List[Target]) -> None:
        """``masks``: ``[K, 1, M, M]`` probabilities of each detection's class."""
        logits = self._mask_logits(features, [r["boxes"] for r in result], image_shapes)
        for prob, r in zip(maskrcnn_inference(logits, [r["labels"] for r in result]), result):
            r["masks"] = prob
