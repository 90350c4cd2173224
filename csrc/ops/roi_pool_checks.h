// Host-side argument checks of the RoI Pool ops, shared by the CPU and CUDA kernels.
// (The data-dependent batch-index check is cvops::check_roi_batch_indices in checks.h.)
#pragma once

#include <limits>

#include "common/checks.h"

namespace cvops {

// argmax is an int32 index into one H x W plane, as in torchvision.
inline void check_roi_pool_plane_size(const char* op, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(height * width <= std::numeric_limits<int32_t>::max(), op,
                    ": feature maps with more than 2^31 - 1 pixels per channel are not "
                    "supported, got ",
                    height, " x ", width);
}

inline void check_roi_pool_forward_args(const at::Tensor& input, const at::Tensor& rois,
                                        double spatial_scale, int64_t pooled_height,
                                        int64_t pooled_width) {
  constexpr const char* op = "cvops.roi_pool";
  check_roi_op_args(op, input, rois, spatial_scale, pooled_height, pooled_width);
  check_roi_pool_plane_size(op, input.size(2), input.size(3));
}

inline void check_roi_pool_backward_args(const at::Tensor& grad, const at::Tensor& rois,
                                         const at::Tensor& argmax, double spatial_scale,
                                         int64_t pooled_height, int64_t pooled_width,
                                         int64_t batch_size, int64_t channels, int64_t height,
                                         int64_t width) {
  constexpr const char* op = "cvops._roi_pool_backward";
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
                    ": input sizes must be non-negative, got [", batch_size, ", ", channels, ", ",
                    height, ", ", width, "]");
  // The gradient stands in for the input in the common checks (dtype, device, sizes).
  check_roi_op_args(op, grad, rois, spatial_scale, pooled_height, pooled_width);
  check_roi_pool_plane_size(op, height, width);
  TORCH_CHECK_VALUE(grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                        grad.size(2) == pooled_height && grad.size(3) == pooled_width,
                    op, ": expected grad of shape [", rois.size(0), ", ", channels, ", ",
                    pooled_height, ", ", pooled_width, "], got ", grad.sizes());
  TORCH_CHECK_TYPE(argmax.scalar_type() == at::kInt, op,
                   ": expected an int32 argmax (from cvops.roi_pool), got ", argmax.scalar_type());
  TORCH_CHECK_VALUE(argmax.sizes() == grad.sizes(), op, ": expected argmax of shape ", grad.sizes(),
                    ", got ", argmax.sizes());
  TORCH_CHECK(argmax.device() == grad.device(), op,
              ": grad and argmax must be on the same device, got grad on ", grad.device(),
              " and argmax on ", argmax.device());
}

}  // namespace cvops
