// IoU math of the NMS ops, shared by the CPU and CUDA kernels.
//
// The IoU is computed exactly like torchvision's CPU kernel: both areas as
// (x2 - x1) * (y2 - y1), the intersection as max(0, w) * max(0, h), and
// inter / ((area_a + area_b) - inter), each step rounded in acc_t (the box dtype for float and
// double, float for half and bfloat16). A box is suppressed when that IoU is strictly greater
// than the threshold (compared in double). Every step is explicitly rounded (common/rounded_math.h)
// so neither nvcc nor an FMA-enabled host compiler contracts a*b+c into one fma.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "common/rounded_math.h"

namespace cvops {
namespace nms_math {

// One box in the accumulation type, with its area precomputed.
template <typename acc_t>
struct Box {
  acc_t x1, y1, x2, y2, area;
};

template <typename acc_t>
CVOPS_HOST_DEVICE inline Box<acc_t> make_box(acc_t x1, acc_t y1, acc_t x2, acc_t y2) {
  return Box<acc_t>{x1, y1, x2, y2, mul_rn(sub_rn(x2, x1), sub_rn(y2, y1))};
}

// A box takes part in NMS only when its coordinates are finite, x1 <= x2, y1 <= y2 and its
// score is not NaN. (The host wrappers reject bad coordinates with a ValueError before the
// kernels run, except for nms_fixed which drops such boxes instead.)
template <typename acc_t>
CVOPS_HOST_DEVICE inline bool box_is_valid(acc_t x1, acc_t y1, acc_t x2, acc_t y2) {
  return is_finite(x1) && is_finite(y1) && is_finite(x2) && is_finite(y2) && x1 <= x2 && y1 <= y2;
}

template <typename acc_t>
CVOPS_HOST_DEVICE inline bool score_is_valid(acc_t s) {
  return !(s != s);
}

// Intersection over union, torchvision's formula and rounding (NaN for two empty boxes).
template <typename acc_t>
CVOPS_HOST_DEVICE inline acc_t iou(const Box<acc_t>& a, const Box<acc_t>& b) {
  const acc_t w = max_of(acc_t(0), sub_rn(min_of(a.x2, b.x2), max_of(a.x1, b.x1)));
  const acc_t h = max_of(acc_t(0), sub_rn(min_of(a.y2, b.y2), max_of(a.y1, b.y1)));
  const acc_t inter = mul_rn(w, h);
  return inter / sub_rn(add_rn(a.area, b.area), inter);
}

// The suppression test: IoU(a, b) > threshold (false when the IoU is NaN).
template <typename acc_t>
CVOPS_HOST_DEVICE inline bool iou_above(const Box<acc_t>& a, const Box<acc_t>& b,
                                        double threshold) {
  // Disjoint boxes: intersection 0, IoU 0 (or NaN), never above a threshold >= 0.
  if (a.x1 >= b.x2 || b.x1 >= a.x2 || a.y1 >= b.y2 || b.y1 >= a.y2) return false;
  return static_cast<double>(iou(a, b)) > threshold;
}

// Soft-NMS score decay of a box overlapping the selected one with IoU `o` (Bodla et al.).
// method 0: linear, 1 - o above the threshold, 1 otherwise; method 1: gaussian, exp(-o^2/sigma).
enum SoftNmsMethod : int64_t { kLinear = 0, kGaussian = 1 };

template <typename acc_t>
CVOPS_HOST_DEVICE inline acc_t soft_nms_weight(acc_t o, int64_t method, double iou_threshold,
                                               acc_t sigma) {
  if (method == kLinear) {
    return static_cast<double>(o) > iou_threshold ? acc_t(1) - o : acc_t(1);
  }
#if defined(__CUDA_ARCH__)
  return exp(-(o * o) / sigma);
#else
  return std::exp(-(o * o) / sigma);
#endif
}

}  // namespace nms_math
}  // namespace cvops
