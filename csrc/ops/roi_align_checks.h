// Host-side argument checks of the RoI Align ops, shared by the CPU and CUDA kernels.
// (The data-dependent batch-index check is cvops::check_roi_batch_indices in checks.h.)
#pragma once

#include "common/checks.h"

namespace cvops {

inline void check_roi_align_forward_args(const at::Tensor& input, const at::Tensor& rois,
                                         double spatial_scale, int64_t pooled_height,
                                         int64_t pooled_width, int64_t sampling_ratio) {
  constexpr const char* op = "cvops.roi_align";
  check_roi_op_args(op, input, rois, spatial_scale, pooled_height, pooled_width);
  TORCH_CHECK_VALUE(sampling_ratio >= -1, op,
                    ": sampling_ratio must be -1 or 0 (adaptive) or positive, got ",
                    sampling_ratio);
}

inline void check_roi_align_backward_args(const at::Tensor& grad, const at::Tensor& rois,
                                          double spatial_scale, int64_t pooled_height,
                                          int64_t pooled_width, int64_t batch_size,
                                          int64_t channels, int64_t height, int64_t width,
                                          int64_t sampling_ratio) {
  constexpr const char* op = "cvops._roi_align_backward";
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
                    ": input sizes must be non-negative, got [", batch_size, ", ", channels, ", ",
                    height, ", ", width, "]");
  // The gradient stands in for the input in the common checks (dtype, device, sizes).
  check_roi_op_args(op, grad, rois, spatial_scale, pooled_height, pooled_width);
  TORCH_CHECK_VALUE(grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                        grad.size(2) == pooled_height && grad.size(3) == pooled_width,
                    op, ": expected grad of shape [", rois.size(0), ", ", channels, ", ",
                    pooled_height, ", ", pooled_width, "], got ", grad.sizes());
  TORCH_CHECK_VALUE(sampling_ratio >= -1, op, ": sampling_ratio must be >= -1, got ",
                    sampling_ratio);
}

}  // namespace cvops
