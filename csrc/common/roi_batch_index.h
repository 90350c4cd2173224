// The batch index a RoI names, shared by RoI Align and RoI Pool on both backends.
//
// rois[k, 0] must be an integer in [0, batch_size): check_roi_batch_indices (checks.h)
// raises for anything else before a kernel runs. The CUDA ops skip that check while a CUDA
// graph is being captured (it needs a host sync), so the kernels apply the same rule
// themselves: a RoI whose index the check would refuse (negative, fractional such as -0.5,
// past the batch, NaN or infinite) names no image, and its outputs are NaN, its gradient 0.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace cvops {

// The image index of a RoI, or -1 when `index` names none (see above).
template <typename T>
CVOPS_HOST_DEVICE inline int64_t roi_batch_index(T index, int64_t batch_size) {
  // The comparisons are false for NaN; the range test comes first, so the conversion to
  // int64 below only sees values in [0, batch_size).
  if (!(index >= T(0) && index < static_cast<T>(batch_size))) return -1;
  const int64_t i = static_cast<int64_t>(index);
  return static_cast<T>(i) == index ? i : -1;
}

}  // namespace cvops
