"""Random feature maps and boxes for the RoI op tests (shared by RoI Align and RoI Pool)."""

import torch


def random_boxes(num, image_h, image_w, batch, dtype=torch.float32, device="cpu", generator=None):
    """[num, 5] RoIs in image coordinates: ordinary boxes, boxes partly and wholly outside
    the image, zero-size and sub-pixel boxes, and a few flipped (x2 < x1) ones."""
    g = generator
    kind = torch.randint(0, 6, (num,), generator=g)
    cx = torch.rand(num, generator=g, dtype=torch.float64) * image_w
    cy = torch.rand(num, generator=g, dtype=torch.float64) * image_h
    w = torch.rand(num, generator=g, dtype=torch.float64) * image_w * 0.6 + 1
    h = torch.rand(num, generator=g, dtype=torch.float64) * image_h * 0.6 + 1
    # partly outside: centre near or past an edge
    cx = torch.where(kind == 1, cx - image_w * 0.5, cx)
    cy = torch.where(kind == 1, cy + image_h * 0.5, cy)
    # wholly outside
    cx = torch.where(kind == 2, cx + image_w * 2, cx)
    # zero-size and tiny
    w = torch.where(kind == 3, torch.zeros_like(w), w)
    h = torch.where(kind == 4, h * 0.01, h)
    w = torch.where(kind == 4, w * 0.01, w)
    # flipped
    w = torch.where(kind == 5, -w * 0.3, w)
    b = torch.randint(0, batch, (num,), generator=g).to(torch.float64)
    rois = torch.stack([b, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return rois.to(dtype=dtype, device=device)


def rois_to_list(rois, batch):
    """[K, 5] -> list of [L_i, 4] and the RoI order of the concatenated list."""
    idx = rois[:, 0].long()
    boxes = [rois[idx == i, 1:] for i in range(batch)]
    order = torch.cat([torch.nonzero(idx == i).flatten() for i in range(batch)])
    return boxes, order
