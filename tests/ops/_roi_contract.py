"""Bad-input cases shared by the RoI Align and RoI Pool contract tests: both ops take
(input, boxes, output_size, ...) and run the same argument checks."""

import torch


def ok_inputs():
    x = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0], [1, 0.0, 2.0, 3.0, 7.0]])
    return x, rois


# (make(x, rois) -> (input, boxes, output_size, kwargs), exception type, message pattern)
BAD_ARGUMENTS = [
    (lambda x, r: (x[0], r, 2, {}), ValueError, r"input of shape \[N, C, H, W\]"),
    (lambda x, r: (x, r[:, :4], 2, {}), ValueError, r"boxes must be a Tensor\[K, 5\]"),
    (lambda x, r: (x, r[None], 2, {}), ValueError, r"boxes must be a Tensor\[K, 5\]"),
    (lambda x, r: (x, [r[:, :3]], 2, {}), ValueError, r"boxes\[0\] must be a Tensor\[L, 4\]"),
    (lambda x, r: (x, [], 2, {}), ValueError, "empty list"),
    (lambda x, r: (x, "boxes", 2, {}), TypeError, "boxes must be"),
    (lambda x, r: (x, r.double(), 2, {}), TypeError, "same dtype"),
    (lambda x, r: (x.long(), r.long(), 2, {}), TypeError, "floating-point input"),
    (lambda x, r: (x, r, 0, {}), ValueError, "output_size must be positive"),
    (lambda x, r: (x, r, (2, -1), {}), ValueError, "output_size must be positive"),
    (lambda x, r: (x, r, (2, 2, 2), {}), ValueError, "output_size must be an int or a pair"),
    (lambda x, r: (x, r, 2.5, {}), TypeError, "output_size must be an int or a pair"),
    (lambda x, r: (x, r, 2, {"spatial_scale": -0.5}), ValueError, "spatial_scale"),
    (lambda x, r: ("x", r, 2, {}), TypeError, "input must be a Tensor"),
]

# Batch indices (column 0 of the boxes) that must be rejected for an input of batch 2.
BAD_BATCH_INDICES = [2.0, -1.0, 0.5, float("nan"), 1e10]
BAD_BATCH_INDEX_MESSAGE = r"boxes\[1, 0\] = .* is not a valid batch index"
