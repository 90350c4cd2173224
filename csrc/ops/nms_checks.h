// Host-side argument checks of the NMS ops, shared by the CPU and CUDA kernels.
//
// Shape, dtype, device and threshold errors raise ValueError/TypeError in Python through
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE, and every message names the argument.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace cvops {

inline void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                           double iou_threshold) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": expected boxes of shape [N, 4] (x1, y1, x2, y2), got ", boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1, op, ": expected scores of shape [N], got ", scores.sizes());
  TORCH_CHECK_VALUE(boxes.size(0) == scores.size(0), op,
                    ": boxes and scores must have the same length, got ", boxes.size(0),
                    " boxes and ", scores.size(0), " scores");
  TORCH_CHECK_TYPE(at::isFloatingType(boxes.scalar_type()), op,
                   ": expected floating-point boxes, got ", boxes.scalar_type());
  TORCH_CHECK_TYPE(boxes.scalar_type() == scores.scalar_type(), op,
                   ": boxes and scores must have the same dtype, got boxes ", boxes.scalar_type(),
                   " and scores ", scores.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == scores.device(), op,
                    ": boxes and scores must be on the same device, got boxes on ", boxes.device(),
                    " and scores on ", scores.device());
  TORCH_CHECK_VALUE(iou_threshold >= 0.0 && iou_threshold <= 1.0, op,
                    ": iou_threshold must be in [0, 1], got ", iou_threshold);
}

inline void check_idxs(const char* op, const at::Tensor& boxes, const at::Tensor& idxs) {
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op,
                    ": expected idxs of shape [", boxes.size(0), "] (one class per box), got ",
                    idxs.sizes());
  TORCH_CHECK_TYPE(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), op,
                   ": idxs must be an integer tensor (int64), got ", idxs.scalar_type());
  TORCH_CHECK_VALUE(idxs.device() == boxes.device(), op,
                    ": boxes and idxs must be on the same device, got boxes on ", boxes.device(),
                    " and idxs on ", idxs.device());
}

inline void check_soft_nms_args(const char* op, double sigma, double score_threshold,
                                int64_t method) {
  TORCH_CHECK_VALUE(method == 0 || method == 1, op,
                    ": method must be 0 (linear) or 1 (gaussian), got ", method);
  TORCH_CHECK_VALUE(std::isfinite(sigma) && sigma > 0, op,
                    ": sigma must be finite and positive, got ", sigma);
  TORCH_CHECK_VALUE(!std::isnan(score_threshold), op, ": score_threshold must not be NaN");
}

// The ValueError for a box with a non-finite coordinate or x2 < x1 or y2 < y1.
inline void raise_bad_box(const char* op, int64_t k, double x1, double y1, double x2, double y2) {
  TORCH_CHECK_VALUE(false, op, ": boxes[", k, "] = (", x1, ", ", y1, ", ", x2, ", ", y2,
                    ") is not a valid box: expected finite coordinates with x1 <= x2 and "
                    "y1 <= y2");
}

inline void raise_bad_box(const char* op, const at::Tensor& boxes, int64_t k) {
  at::Tensor row = boxes[k].to(at::kDouble).cpu();
  const double* r = row.const_data_ptr<double>();
  raise_bad_box(op, k, r[0], r[1], r[2], r[3]);
}

// Raises a ValueError naming the first box with a non-finite coordinate or x2 < x1 or
// y2 < y1. Tensor ops, so it works on any device (one host sync on CUDA).
inline void check_box_coordinates(const char* op, const at::Tensor& boxes) {
  if (boxes.size(0) == 0) return;
  at::Tensor b = boxes.to(at::kFloat);
  if (boxes.scalar_type() == at::kDouble) b = boxes;
  at::Tensor bad = at::isfinite(b).all(1).logical_not_();
  bad.logical_or_(b.select(1, 2) < b.select(1, 0)).logical_or_(b.select(1, 3) < b.select(1, 1));
  if (!bad.any().item<bool>()) return;
  raise_bad_box(op, boxes, bad.nonzero().select(1, 0)[0].item<int64_t>());
}

}  // namespace cvops
