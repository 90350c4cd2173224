"""R-CNN (Girshick et al., CVPR 2014): every proposal is warped to a fixed-size crop with
16 pixels of context, a CNN turns each crop into features, one linear SVM per class scores
the fc7 features, a class-specific ridge regressor on the pool5 features refines the box, and
per-class NMS (0.3, cvops ``batched_nms``) keeps the detections.

The CNN is VGG16 (the paper's "O-Net" column, 224 px crops; ``width`` narrows it for CPU
runs). Out-of-image parts of a crop take the image mean (zero after normalisation), as in
the paper. Crops are sampled with cvops ``roi_align`` (one bilinear sample per output pixel,
``aligned=True``), i.e. an anisotropic bilinear warp.

Training the three stages:

- through ``forward(images, targets)`` (what ``python -m cvops.train.detection`` runs), all
  three at once from the same crops: ``loss_classifier`` fine-tunes the CNN with a (K+1)-way
  softmax (the paper's sampling: IoU >= 0.5 positives, 25% of the crops); ``loss_svm`` is the
  SVMs' weighted hinge loss plus L2 on their weights, on detached fc7 features (positives:
  the ground-truth boxes; negatives: crops with IoU < 0.3 with every box of the class; in
  SGD the easy negatives give no gradient, so no explicit mining is needed);
  ``loss_box_reg``: squared error plus an L2 penalty on detached pool5 features of the crops
  with IoU > 0.6, targets as the paper's appendix C;
- or offline as in the paper, on cached features (after fine-tuning):
  :func:`.rcnn_solvers.fit_svms_and_regressors` (built on :meth:`RCNN.region_features`,
  :func:`.rcnn_solvers.train_svm_hard_negatives`, :func:`.rcnn_solvers.fit_ridge`,
  :meth:`RCNN.set_svm` and :meth:`RCNN.set_box_regressor`).
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align
from .._registry import register_model
from ._builders import IMAGE_MEAN, IMAGE_STD
from .box_coder import BoxCoder
from .fast_rcnn import gather_proposals
from .generalized_rcnn import check_training_targets, original_sizes
from .matcher import BalancedPositiveNegativeSampler
from .paper_vgg import VGGFCHead, check_width, map_torchvision_vgg, trunk_channels, vgg_trunk

Target = Dict[str, Tensor]


def context_boxes(boxes: Tensor, crop_size: int, context: int) -> Tensor:
    """The regions to warp: each box grown about its centre so that, once warped to
    ``crop_size``, the box fills the central ``crop_size - 2 context`` pixels and ``context``
    pixels of its surroundings lie on every side (R-CNN appendix A, p = 16)."""
    inner = crop_size - 2 * context
    if inner <= 0:
        raise ValueError("context (%d) leaves no room in a %d px crop" % (context, crop_size))
    factor = crop_size / inner
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return torch.cat((centre - half, centre + half), dim=1)


def warp_regions(image: Tensor, boxes: Tensor, crop_size: int, context: int) -> Tensor:
    """``[N, C, crop_size, crop_size]`` bilinear warps of ``boxes`` (with context) of one
    normalised image ``[C, H, W]``; samples outside the image are 0."""
    regions = context_boxes(boxes, crop_size, context).to(image.dtype)
    return roi_align(image[None], [regions], crop_size, 1.0, sampling_ratio=1, aligned=True)


class RCNNFeatures(nn.Module):
    """The region CNN: VGG conv layers with pool5 (``features``, torchvision's indices) and
    fc6/fc7 (``head``). ``forward(crops) -> (pool5 flattened, fc7)``."""

    def __init__(
        self, crop_size: int = 224, width: float = 1.0, representation_size=4096, batch_norm=False
    ):
        super().__init__()
        if crop_size % 32 or crop_size < 32:
            raise ValueError(
                "crop_size must be a multiple of 32 (VGG's stride), got %r" % crop_size
            )
        self.features = vgg_trunk("D", width, last_pool=True, batch_norm=batch_norm)
        self.pool5_dim = trunk_channels(self.features) * (crop_size // 32) ** 2
        self.head = VGGFCHead(self.pool5_dim, representation_size)
        self.out_dim = representation_size

    def forward(self, crops: Tensor) -> Tuple[Tensor, Tensor]:
        pool5 = self.features(crops).flatten(1)
        return pool5, self.head(pool5)


def hinge_loss(scores: Tensor, signs: Tensor, weights: Tensor) -> Tensor:
    """``sum weights * max(0, 1 - signs * scores) / max(1, number of labelled entries)``;
    ``signs`` in {-1, 0, +1} (0: not a training example of that class)."""
    used = signs != 0
    per = weights * F.relu(1 - signs * scores) * used
    return per.sum() / used.sum().clamp(min=1)


class RCNN(nn.Module):
    """``forward(images, targets=None, proposals=None)``: the loss dict in training
    (``loss_classifier``, ``loss_svm``, ``loss_box_reg``), else ``[{"boxes", "labels",
    "scores"}]`` per image (scores are SVM margins). ``num_classes`` includes the background.
    """

    takes_proposals = True  # the training command passes proposals in evaluation too

    def __init__(
        self,
        cnn: RCNNFeatures,
        num_classes: int,
        crop_size: int = 224,
        context: int = 16,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        ft_batch_size_per_image: int = 32,
        ft_positive_fraction: float = 0.25,
        ft_fg_iou_thresh: float = 0.5,
        svm_neg_iou_thresh: float = 0.3,
        svm_pos_weight: float = 2.0,
        svm_l2: float = 1e-4,
        box_reg_iou_thresh: float = 0.6,
        box_ridge: float = 1e-3,
        score_thresh: float = float("-inf"),
        nms_thresh: float = 0.3,
        detections_per_img: int = 100,
        chunk_size: int = 256,
        proposal_source=None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError("num_classes (background included) must be >= 2, got %r" % num_classes)
        k = num_classes - 1
        self.cnn = cnn
        self.finetune_head = nn.Linear(cnn.out_dim, num_classes)  # CNN fine-tuning only
        self.svm = nn.Linear(cnn.out_dim, k)  # one linear SVM per object class
        self.box_regressor = nn.Linear(cnn.pool5_dim, 4 * k)
        for m in (self.svm, self.box_regressor):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1), False)
        self.crop_size, self.context = int(crop_size), int(context)
        self.sampler = BalancedPositiveNegativeSampler(
            ft_batch_size_per_image, ft_positive_fraction
        )
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))  # the paper's targets, unscaled
        self.ft_fg_iou_thresh, self.svm_neg_iou_thresh = ft_fg_iou_thresh, svm_neg_iou_thresh
        self.svm_pos_weight, self.svm_l2 = svm_pos_weight, svm_l2
        self.box_reg_iou_thresh, self.box_ridge = box_reg_iou_thresh, box_ridge
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.chunk_size = detections_per_img, chunk_size
        self.proposal_source = proposal_source

    @property
    def num_object_classes(self) -> int:
        return self.svm.out_features

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError("images must be floating point in [0, 1], got %s" % image.dtype)
        return (image - self.image_mean.to(image.dtype)) / self.image_std.to(image.dtype)

    def region_features(self, image: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """``(pool5 [N, P], fc7 [N, D])`` of ``boxes`` (pixels) in ``image`` (float
        ``[3, H, W]`` in [0, 1]), in chunks of ``chunk_size`` crops; the module's mode
        (train/eval) decides dropout."""
        image = self.normalize(image)
        pool5, fc7 = [], []
        for part in boxes.split(self.chunk_size):
            p, f = self.cnn(warp_regions(image, part, self.crop_size, self.context))
            pool5.append(p)
            fc7.append(f)
        if not pool5:
            return boxes.new_zeros(0, self.cnn.pool5_dim), boxes.new_zeros(0, self.cnn.out_dim)
        return torch.cat(pool5), torch.cat(fc7)

    # ------------------------------------------------------------------------- training
    def _training_crops(self, proposals: Tensor, target: Target):
        """The crops of one image: its ground-truth boxes, then proposals sampled for
        fine-tuning; with their fine-tuning labels, best IoU per class and matched box."""
        gt, gt_labels = target["boxes"].to(proposals.dtype), target["labels"]
        k = self.num_object_classes
        if proposals.numel() and gt.numel():
            best, idx = box_iou(gt, proposals).max(dim=0)
            ft = torch.where(best >= self.ft_fg_iou_thresh, gt_labels[idx], 0)
        else:
            best = proposals.new_zeros(len(proposals))
            idx = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
            ft = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
        pos, neg = self.sampler([ft])
        keep = torch.where((pos[0] | neg[0]).bool())[0]
        boxes = torch.cat((gt, proposals[keep]))
        labels = torch.cat((gt_labels, ft[keep]))
        is_gt = torch.arange(len(boxes), device=boxes.device) < len(gt)
        # IoU of every crop with the closest box of each class (0 when the class is absent)
        per_class = boxes.new_zeros(len(boxes), k)
        if gt.numel():
            iou = box_iou(boxes, gt)
            for c in range(1, k + 1):
                m = gt_labels == c
                if m.any():
                    per_class[:, c - 1] = iou[:, m].max(dim=1).values
        matched = torch.cat((torch.arange(len(gt), device=boxes.device), idx[keep]))
        iou_best = torch.cat(
            (torch.ones(len(gt), dtype=best.dtype, device=best.device), best[keep])
        )
        return boxes, labels, is_gt, per_class, matched, iou_best

    def _losses(self, images, proposals, targets) -> Dict[str, Tensor]:
        k = self.num_object_classes
        pool5, fc7, labels, signs, reg_feats, reg_targets, reg_classes = ([] for _ in range(7))
        for image, props, target in zip(images, proposals, targets):
            boxes, lab, is_gt, per_class, matched, iou = self._training_crops(props, target)
            p5, f7 = self.region_features(image, boxes)
            pool5.append(p5)
            fc7.append(f7)
            labels.append(lab)
            # SVM labels: +1 for a ground-truth box of the class, -1 below 0.3 IoU, else unused
            s = torch.where(per_class < self.svm_neg_iou_thresh, -1.0, 0.0)
            gt_rows = torch.where(is_gt)[0]
            s[gt_rows, lab[gt_rows] - 1] = 1.0
            signs.append(s)
            # box regression: proposals (not the ground truth itself) with IoU > 0.6
            reg = torch.where(~is_gt & (iou > self.box_reg_iou_thresh))[0]
            if len(reg) and target["boxes"].numel():
                gt = target["boxes"].to(boxes.dtype)[matched[reg]]
                reg_feats.append(p5[reg])
                reg_targets.append(self.box_coder.encode_single(gt, boxes[reg]))
                reg_classes.append(target["labels"][matched[reg]] - 1)
        fc7, labels, signs = torch.cat(fc7), torch.cat(labels), torch.cat(signs)
        loss_classifier = F.cross_entropy(self.finetune_head(fc7), labels)
        scores = self.svm(fc7.detach())
        weights = torch.where(signs > 0, self.svm_pos_weight, 1.0)
        loss_svm = hinge_loss(scores, signs, weights) + self.svm_l2 * self.svm.weight.pow(2).sum()
        loss_box = self.box_ridge * self.box_regressor.weight.pow(2).sum()
        if reg_feats:
            feats, tgt = torch.cat(reg_feats).detach(), torch.cat(reg_targets)
            cls = torch.cat(reg_classes)
            pred = self.box_regressor(feats).reshape(-1, k, 4)[torch.arange(len(cls)), cls]
            loss_box = loss_box + (pred - tgt).pow(2).sum(1).mean()
        return {"loss_classifier": loss_classifier, "loss_svm": loss_svm, "loss_box_reg": loss_box}

    # ------------------------------------------------------------------------ inference
    def _detect(self, image: Tensor, props: Tensor) -> Target:
        h, w = image.shape[-2:]
        k = self.num_object_classes
        pool5, fc7 = self.region_features(image, props)
        scores = self.svm(fc7)  # [N, K]
        deltas = self.box_regressor(pool5)  # [N, 4K]
        boxes = self.box_coder.decode_single(deltas, props).reshape(-1, k, 4)
        boxes = clip_boxes_to_image(boxes.reshape(-1, 4), (h, w))
        labels = torch.arange(1, k + 1, device=scores.device).repeat(len(props))
        scores = scores.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}

    def forward(
        self,
        images: List[Tensor],
        targets: Optional[List[Target]] = None,
        proposals: Optional[List[Tensor]] = None,
    ):
        original_sizes(images)  # checks the images
        proposals = gather_proposals(self, images, targets, proposals)
        proposals = [p.to(images[0].dtype) for p in proposals]
        if self.training:
            check_training_targets(targets)
            return self._losses(images, proposals, targets)
        return [self._detect(img, p) for img, p in zip(images, proposals)]

    # ------------------------------------------------------- installing offline solutions
    @torch.no_grad()
    def set_svm(self, class_index: int, weight: Tensor, bias: float) -> None:
        """Install the SVM of object class ``class_index`` (1..K)."""
        self.svm.weight[class_index - 1].copy_(weight)
        self.svm.bias[class_index - 1] = float(bias)

    @torch.no_grad()
    def set_box_regressor(self, class_index: int, weight: Tensor, bias: Tensor) -> None:
        """Install the ``[4, P]`` ridge regressor (and ``[4]`` bias) of class ``class_index``."""
        rows = slice(4 * (class_index - 1), 4 * class_index)
        self.box_regressor.weight[rows].copy_(weight)
        self.box_regressor.bias[rows].copy_(bias)

    def load_vgg16_imagenet(self, state_dict: Dict[str, Tensor]) -> None:
        """Load a ``torchvision.models.vgg16`` state_dict into the CNN (conv layers, fc6,
        fc7), the paper's starting point for fine-tuning."""
        mapped = map_torchvision_vgg(state_dict, "features.", "head.")
        self.cnn.load_state_dict(mapped, strict=True)


@register_model
def rcnn(
    *,
    weights=None,
    num_classes: int = 21,
    width: float = 1.0,
    crop_size: int = 224,
    context: Optional[int] = None,
    representation_size: Optional[int] = None,
    batch_norm: bool = False,
    **kwargs,
) -> RCNN:
    """R-CNN with VGG16 (21 classes, PASCAL VOC): 136,435,641 parameters (VGG16 conv +
    fc6/fc7, the 21-way fine-tuning classifier, 20 SVMs on fc7 and 20 x 4 ridge regressors
    on pool5). ``width`` scales the conv widths (and fc6/fc7 unless ``representation_size``
    is given), ``crop_size`` (multiple of 32) the warp; ``context`` defaults to 16 px at 227
    px, scaled with the crop; ``batch_norm=True``: the ``vgg16_bn`` layout. Other keywords go
    to :class:`RCNN`."""
    if weights is not None:
        raise ValueError(
            "weights: no R-CNN checkpoint is available offline; load torchvision VGG16 "
            "ImageNet weights with model.load_vgg16_imagenet(state_dict)"
        )
    width = check_width(width)
    size = representation_size or max(1, int(round(4096 * width)))
    if context is None:
        context = int(round(16 * crop_size / 227))
    cnn = RCNNFeatures(crop_size, width, size, batch_norm)
    return RCNN(cnn, num_classes, crop_size=crop_size, context=context, **kwargs)
