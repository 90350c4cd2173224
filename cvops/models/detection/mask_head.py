"""Mask R-CNN's mask branch (He et al., ICCV 2017): the head (four 3x3 convs + ReLU), the
predictor (2x2 stride-2 deconv + ReLU + 1x1 conv to one mask per class), the per-class
sigmoid BCE loss on the matched class with targets made by RoI-aligning the ground-truth
masks to the proposals, the inference-time selection of the predicted class's mask, and
the pasting of the ``M x M`` masks into the image. Module and parameter names are
torchvision's (``mask_head.{i}.0``, ``mask_predictor.conv5_mask`` / ``mask_fcn_logits``)."""

from collections import OrderedDict
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import roi_align
from .._fused_layers import ConvReLU


def conv3x3_relu(c_in: int, c_out: int, dilation: int = 1) -> ConvReLU:
    """3x3 conv (bias) + ReLU as torchvision's ``Conv2dNormActivation(norm_layer=None)``:
    a Sequential whose conv is child ``0``."""
    return ConvReLU(nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation))


class MaskRCNNHeads(nn.Sequential):
    """``len(layers)`` 3x3 conv + ReLU blocks (``{i}.0`` convs), Kaiming-normal init."""

    def __init__(self, in_channels: int, layers: Sequence[int], dilation: int = 1):
        blocks, c = [], in_channels
        for width in layers:
            blocks.append(conv3x3_relu(c, width, dilation))
            c = width
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """``conv5_mask`` (2x2/2 transposed conv) + ReLU + ``mask_fcn_logits`` (1x1 to
    ``num_classes`` masks): 14x14 RoI features become 28x28 mask logits."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)),
                ]
            )
        )
        for name, p in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int):
    """``[K, size, size]`` targets: each box's matched ground-truth mask, RoI-aligned
    (cvops ``roi_align``, scale 1, adaptive sampling, ``aligned=False``)."""
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def maskrcnn_loss(
    mask_logits: Tensor,
    proposals: List[Tensor],
    gt_masks: List[Tensor],
    gt_labels: List[Tensor],
    matched_idxs: List[Tensor],
) -> Tensor:
    """Mean sigmoid BCE between each positive proposal's logits for its ground-truth class
    and the RoI-aligned ground-truth mask."""
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched_idxs)])
    targets = [
        project_masks_on_boxes(m, p, i, size) for m, p, i in zip(gt_masks, proposals, matched_idxs)
    ]
    targets = torch.cat(targets)
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(picked, targets)


def maskrcnn_inference(mask_logits: Tensor, labels: List[Tensor]) -> Tuple[Tensor, ...]:
    """Per image ``[K_i, 1, M, M]`` probabilities of each detection's predicted class."""
    probs = mask_logits.sigmoid()
    flat = torch.cat(labels)
    picked = probs[torch.arange(probs.shape[0], device=flat.device), flat][:, None]
    return picked.split([len(lab) for lab in labels], dim=0)


def _paste_one(mask: Tensor, box: List[int], im_h: int, im_w: int) -> Tensor:
    x0, y0, x1, y1 = box
    w = max(x1 - x0 + 1, 1)
    h = max(y1 - y0 + 1, 1)
    resized = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)
    resized = resized[0, 0]
    out = mask.new_zeros((im_h, im_w))
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1 + 1, im_w), min(y1 + 1, im_h)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], padding: int = 1
) -> Tensor:
    """Paste ``[K, 1, M, M]`` mask probabilities into ``[K, 1, H, W]`` images.

    As torchvision: each mask is zero-padded by ``padding`` and its box scaled about its
    centre by ``(M + 2 padding) / M`` (so the padding lands outside the box), the box is
    truncated to integers, the mask bilinearly resized to the box's ``(y1 - y0 + 1,
    x1 - x0 + 1)`` pixels and copied in, clipped to the image."""
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    if masks.shape[0] == 0:
        return masks.new_empty((0, 1, im_h, im_w))
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    masks = F.pad(masks, (padding,) * 4)
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1)
    int_boxes = expanded.to(torch.int64).tolist()
    pasted = [_paste_one(mk[0], b, im_h, im_w) for mk, b in zip(masks, int_boxes)]
    return torch.stack(pasted)[:, None]
