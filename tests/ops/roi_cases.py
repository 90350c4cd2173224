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


# Batch indices check_roi_batch_indices refuses, for an input of batch 2. Under CUDA graph
# capture that check (a host sync) is skipped and the kernels must give NaN outputs and no
# gradient for them instead (csrc/common/roi_batch_index.h).
BAD_BATCH_INDICES_UNDER_CAPTURE = [-0.5, 0.5, float("nan"), 2.0, -1.0]


def capture(fn):
    """Capture fn() in a CUDA graph (after one warm-up call on the capture stream); returns
    (graph, output of the captured call). Replaying re-runs the kernels on the same memory."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        with torch.cuda.graph(graph):
            out = fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph, out


def replay_with_bad_batch_index(graph, rois, bad, row=2):
    """Write `bad` into rois[row, 0] (after capture: the check never sees it), replay the
    graph and return the indices of the other RoIs."""
    rois[row, 0] = bad
    graph.replay()
    torch.cuda.synchronize()
    return [k for k in range(rois.size(0)) if k != row]
