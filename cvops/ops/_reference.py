"""Slow, obviously-correct pure-PyTorch references for the cvops kernels (used by tests).

They follow the published semantics step by step (torchvision's RoI Align here), with
Python loops over RoIs and bins and vectorised torch math inside, in the input's dtype.
"""

import math

import torch
from torch import Tensor


def _axis_taps(coord: Tensor, size: int):
    """Neighbouring indices and weights along one axis, as torchvision's bilinear_interpolate."""
    inside = (coord >= -1) & (coord <= size)
    coord = coord.clamp(min=0)
    lo = coord.floor().long()
    at_edge = lo >= size - 1
    lo = torch.where(at_edge, torch.full_like(lo, size - 1), lo)
    hi = torch.where(at_edge, lo, lo + 1)
    coord = torch.where(at_edge, lo.to(coord.dtype), coord)
    frac = coord - lo.to(coord.dtype)
    return lo, hi, 1 - frac, frac, inside


def bilinear_sample(plane: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Sample ``plane [C, H, W]`` at points (y[i], x[i]) -> [C, len(y)]; 0 outside the map."""
    H, W = plane.shape[-2:]
    y0, y1, hy, ly, in_y = _axis_taps(y, H)
    x0, x1, hx, lx, in_x = _axis_taps(x, W)
    v = (
        hy * hx * plane[:, y0, x0]
        + hy * lx * plane[:, y0, x1]
        + ly * hx * plane[:, y1, x0]
        + ly * lx * plane[:, y1, x1]
    )
    return torch.where(in_y & in_x, v, torch.zeros_like(v))


def roi_align_reference(
    input: Tensor,
    rois: Tensor,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else output_size
    K, C = rois.shape[0], input.shape[1]
    out = input.new_zeros((K, C, ph_n, pw_n))
    offset = 0.5 if aligned else 0.0
    for k in range(K):
        b, x1, y1, x2, y2 = rois[k].tolist()
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            out[k] = float("nan")
            continue
        start_w, start_h = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w, roi_h = x2 * spatial_scale - offset - start_w, y2 * spatial_scale - offset - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / ph_n, roi_w / pw_n
        gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / ph_n), 0)
        gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / pw_n), 0)
        count = max(gh * gw, 1)
        if gh == 0 or gw == 0:
            continue
        plane = input[int(b)]
        for ph in range(ph_n):
            ys = start_h + ph * bin_h + (torch.arange(gh, dtype=input.dtype) + 0.5) * bin_h / gh
            for pw in range(pw_n):
                xs = start_w + pw * bin_w + (torch.arange(gw, dtype=input.dtype) + 0.5) * bin_w / gw
                yy, xx = torch.meshgrid(ys, xs, indexing="ij")
                vals = bilinear_sample(plane, yy.reshape(-1), xx.reshape(-1))
                out[k, :, ph, pw] = vals.sum(dim=1) / count
    return out


def _nms_rank(scores: Tensor) -> Tensor:
    """Indices by (score descending, index ascending), NaN scores left out."""
    valid = torch.nonzero(~torch.isnan(scores))[:, 0]
    return valid[torch.sort(scores[valid], descending=True, stable=True)[1]]


def _pairwise_iou_row(boxes: Tensor, i: int, others: Tensor) -> Tensor:
    """IoU of box i with boxes[others], torchvision's CPU formula in the op-math dtype."""
    b = boxes.float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    o = b[others]
    w = (torch.minimum(o[:, 2], b[i, 2]) - torch.maximum(o[:, 0], b[i, 0])).clamp(min=0)
    h = (torch.minimum(o[:, 3], b[i, 3]) - torch.maximum(o[:, 1], b[i, 1])).clamp(min=0)
    inter = w * h
    return inter / ((area[i] + area[others]) - inter)


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS, one kept box at a time: the definition, with ties to the lower index."""
    order = _nms_rank(scores)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    keep = []
    for r in range(order.numel()):
        i = int(order[r])
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[r + 1 :]
        if rest.numel():
            over = _pairwise_iou_row(boxes, i, rest).double() > iou_threshold
            suppressed[rest[over]] = True
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms_reference(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float
) -> Tensor:
    """Per-class loop over nms_reference, merged by (score descending, index ascending)."""
    keep = [
        torch.nonzero(idxs == c)[:, 0][
            nms_reference(boxes[idxs == c], scores[idxs == c], iou_threshold)
        ]
        for c in torch.unique(idxs)
    ]
    keep = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64)
    keep = keep.sort()[0]
    return keep[torch.sort(scores[keep], descending=True, stable=True)[1]]


def soft_nms_reference(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
):
    """Soft-NMS (Bodla et al.) step by step: select the best current score (ties: lower
    index), decay the others, drop those below score_threshold. Scores in float64."""
    cur = scores.double().clone()
    alive = ~torch.isnan(cur) & (cur >= score_threshold)
    keep, kept_scores = [], []
    while bool(alive.any()):
        cand = torch.nonzero(alive)[:, 0]
        best = cand[torch.sort(cur[cand], descending=True, stable=True)[1][0]]
        keep.append(int(best))
        kept_scores.append(float(cur[best]))
        alive[best] = False
        rest = torch.nonzero(alive)[:, 0]
        if rest.numel() == 0:
            break
        o = _pairwise_iou_row(boxes, int(best), rest).double().nan_to_num(0.0)
        if method == "linear":
            w = torch.where(o > iou_threshold, 1 - o, torch.ones_like(o))
        else:
            w = torch.exp(-(o * o) / sigma)
        cur[rest] = cur[rest] * w
        alive[rest] = cur[rest] >= score_threshold
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(kept_scores, dtype=torch.float64)


def _c_round(v: float) -> float:
    """C's round(): halves away from zero (Python's round() rounds halves to even)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def roi_pool_reference(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0):
    """torchvision's RoI Pool, step by step: rounded corners, +1 sizes, floor/ceil bins clamped
    to the map, max per bin (first maximum wins), empty bins 0. Differentiable through
    ``torch.max``. Non-finite RoIs give NaN."""
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else output_size
    K, C = rois.shape[0], input.shape[1]
    H, W = input.shape[2], input.shape[3]
    rows = []
    for k in range(K):
        b, x1, y1, x2, y2 = rois[k].tolist()
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            rows.append(input.new_full((C, ph_n, pw_n), float("nan")))
            continue
        sw, sh = _c_round(x1 * spatial_scale), _c_round(y1 * spatial_scale)
        ew, eh = _c_round(x2 * spatial_scale), _c_round(y2 * spatial_scale)
        roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        # The bin size is computed in the input's precision, as torchvision does.
        bin_h = torch.tensor(roi_h, dtype=input.dtype) / ph_n
        bin_w = torch.tensor(roi_w, dtype=input.dtype) / pw_n
        plane = input[int(b)]
        bins = []
        for ph in range(ph_n):
            hs = min(max(int(torch.floor(ph * bin_h)) + int(sh), 0), H)
            he = min(max(int(torch.ceil((ph + 1) * bin_h)) + int(sh), 0), H)
            for pw in range(pw_n):
                ws = min(max(int(torch.floor(pw * bin_w)) + int(sw), 0), W)
                we = min(max(int(torch.ceil((pw + 1) * bin_w)) + int(sw), 0), W)
                if he <= hs or we <= ws:
                    bins.append(input.new_zeros(C))
                else:
                    bins.append(plane[:, hs:he, ws:we].reshape(C, -1).max(dim=1).values)
        rows.append(torch.stack(bins, dim=1).view(C, ph_n, pw_n))
    if not rows:
        return input.new_zeros((0, C, ph_n, pw_n))
    return torch.stack(rows, dim=0)


# ---------------------------------------------------------------------------------------
# Losses: composed PyTorch, step by step as the published formulas.
# ---------------------------------------------------------------------------------------


def softmax_focal_loss_reference(
    logits, target, alpha=None, gamma=2.0, ignore_index=-100, reduction="mean"
):
    """-alpha_y (1 - p_y)^gamma log p_y over non-ignored pixels (p = softmax over dim 1)."""
    valid = target != ignore_index
    y = torch.where(valid, target, torch.zeros_like(target)).long()
    logp = torch.log_softmax(logits, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if alpha is not None:
        a = (
            alpha
            if isinstance(alpha, Tensor)
            else torch.full((logits.size(1),), float(alpha), dtype=torch.float64)
        )
        loss = loss * a.to(loss)[y]
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / valid.sum()
    return loss


def dice_loss_reference(
    input,
    target,
    mode="binary",
    from_logits=True,
    smooth=0.0,
    eps=1e-7,
    ignore_index=None,
    log_loss=False,
    per_image=False,
    reduction="mean",
):
    """segmentation_models_pytorch 0.6 DiceLoss, composed (plus per_image and reduction)."""
    n, c = input.shape[:2]
    if from_logits:
        p = input.log_softmax(1).exp() if mode == "multiclass" else input.sigmoid()
    else:
        p = input
    if mode == "multiclass":
        y = target.reshape(n, -1)
        p = p.reshape(n, c, -1)
        mask = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
        t = torch.nn.functional.one_hot(torch.where(mask, y, 0).long(), c).permute(0, 2, 1)
        t = t * mask.unsqueeze(1)
        p = p * mask.unsqueeze(1)
    else:
        cc = 1 if mode == "binary" else c
        t = target.reshape(n, cc, -1)
        p = p.reshape(n, cc, -1)
        if ignore_index is not None:
            mask = t != ignore_index
            p, t = p * mask, t * mask
    t = t.to(p.dtype)
    dims = (2,) if per_image else (0, 2)
    ps, ts = p.sum(dims), t.sum(dims)
    inter = (ps + ts - (p - t).abs().sum(dims)) / 2
    score = (inter + smooth) / (inter + 0.5 * (ps - inter) + 0.5 * (ts - inter) + smooth).clamp_min(
        eps
    )
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    loss = loss * (ts > 0).to(loss.dtype)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
