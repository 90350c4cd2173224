"""Box regression targets (R-CNN, Girshick et al. 2014, appendix C), as torchvision's
``BoxCoder``: ``dx = wx (Gx - Px) / Pw``, ``dy = wy (Gy - Py) / Ph``, ``dw = ww log(Gw / Pw)``,
``dh = wh log(Gh / Ph)`` with centres and sizes taken without a +1 on widths; decoding clamps
``dw``/``dh`` at ``bbox_xform_clip`` (default ``log(1000 / 16)``) before the exponential."""

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

DEFAULT_XFORM_CLIP = math.log(1000.0 / 16)


def _centres_and_sizes(boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


class BoxCoder:
    """Encode boxes as deltas relative to reference boxes and decode them back.

    Args:
        weights: ``(wx, wy, ww, wh)``: (1, 1, 1, 1) for the RPN and RetinaNet, (10, 10, 5, 5)
            for the Fast R-CNN head.
        bbox_xform_clip: upper bound of the decoded log-size deltas.
    """

    def __init__(
        self,
        weights: Sequence[float],
        bbox_xform_clip: float = DEFAULT_XFORM_CLIP,
    ):
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4:
            raise ValueError("weights must be 4 numbers (wx, wy, ww, wh), got %r" % (weights,))
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: List[Tensor], proposals: List[Tensor]) -> Tuple[Tensor, ...]:
        """Per-image deltas that take ``proposals[i]`` to ``reference_boxes[i]``."""
        counts = [len(b) for b in reference_boxes]
        deltas = self.encode_single(torch.cat(reference_boxes), torch.cat(proposals))
        return deltas.split(counts, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """``[N, 4]`` deltas that take ``proposals`` (e.g. anchors) to ``reference_boxes``
        (e.g. their matched ground truth)."""
        wx, wy, ww, wh = self.weights
        px, py, pw, ph = _centres_and_sizes(proposals)
        gx, gy, gw, gh = _centres_and_sizes(reference_boxes)
        return torch.stack(
            (
                wx * (gx - px) / pw,
                wy * (gy - py) / ph,
                ww * torch.log(gw / pw),
                wh * torch.log(gh / ph),
            ),
            dim=1,
        )

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        """Decode ``rel_codes`` (``[sum N_i, 4 K]``) against the per-image ``boxes``;
        returns ``[sum N_i, K, 4]``."""
        if not isinstance(boxes, (list, tuple)):
            raise TypeError("boxes must be a list of Tensor[N_i, 4], one per image")
        total = sum(int(b.size(0)) for b in boxes)
        if total > 0:
            rel_codes = rel_codes.reshape(total, -1)
        decoded = self.decode_single(rel_codes, torch.cat(boxes))
        return decoded.reshape(total, -1, 4) if total > 0 else decoded

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Decode ``[N, 4 K]`` deltas against ``[N, 4]`` reference boxes; returns ``[N, 4 K]``."""
        boxes = boxes.to(rel_codes.dtype)
        cx, cy, w, h = _centres_and_sizes(boxes)
        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = (rel_codes[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (rel_codes[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        ctr_x = dx * w[:, None] + cx[:, None]
        ctr_y = dy * h[:, None] + cy[:, None]
        half_w = 0.5 * (torch.exp(dw) * w[:, None])
        half_h = 0.5 * (torch.exp(dh) * h[:, None])
        out = torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), dim=2)
        return out.flatten(1)
