// Argument checks shared by the RoI ops (host code only).
//
// Shape, dtype and device checks raise ValueError/TypeError in Python through
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE, and every message names the argument.
#pragma once

#include <ATen/ATen.h>

namespace cvops {

// input [N, C, H, W] and rois [K, 5] = (batch_index, x1, y1, x2, y2).
inline void check_roi_op_args(const char* op, const at::Tensor& input, const at::Tensor& rois,
                              double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": expected input of shape [N, C, H, W], got a ",
                    input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op,
                    ": expected boxes of shape [K, 5] (batch_index, x1, y1, x2, y2), got ",
                    rois.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op,
                   ": expected a floating-point input, got ", input.scalar_type());
  TORCH_CHECK_TYPE(input.scalar_type() == rois.scalar_type(), op,
                   ": input and boxes must have the same dtype, got input ", input.scalar_type(),
                   " and boxes ", rois.scalar_type());
  TORCH_CHECK(input.device() == rois.device(), op,
              ": input and boxes must be on the same device, got input on ", input.device(),
              " and boxes on ", rois.device());
  TORCH_CHECK_VALUE(pooled_height > 0 && pooled_width > 0, op,
                    ": output_size must be positive, got (", pooled_height, ", ", pooled_width,
                    ")");
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale >= 0, op,
                    ": spatial_scale must be finite and non-negative, got ", spatial_scale);
}

// Every rois[:, 0] must be an integer in [0, batch_size). A bad index would otherwise read
// outside the input. Costs a few tiny reductions over K values (one host sync on CUDA); the
// CUDA ops skip it while a CUDA graph is being captured, and their kernels then write NaN for
// such RoIs instead of reading out of bounds.
inline void check_roi_batch_indices(const char* op, const at::Tensor& rois, int64_t batch_size) {
  if (rois.size(0) == 0) return;
  at::Tensor index = rois.select(1, 0);
  at::Tensor bad = (index < 0)
                       .logical_or_(index >= static_cast<double>(batch_size))
                       .logical_or_(index != index.trunc());  // also catches NaN
  if (!bad.any().item<bool>()) return;
  const int64_t k = bad.nonzero().select(1, 0)[0].item<int64_t>();
  TORCH_CHECK_VALUE(false, op, ": boxes[", k, ", 0] = ", index[k].item<double>(),
                    " is not a valid batch index: expected an integer in [0, ", batch_size,
                    ") for an input with batch size ", batch_size);
}

}  // namespace cvops
