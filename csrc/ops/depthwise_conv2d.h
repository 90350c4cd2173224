// Depthwise 2-D convolution index math shared by the CPU and CUDA kernels.
//
// Semantics are F.conv2d(input, weight, bias, stride, padding, dilation, groups=C_in) with
// weight [C_in * multiplier, 1, KH, KW]: output channel co reads input channel
// co / multiplier, and output pixel o along one axis reads input i = o * s - p + k * d for the
// kernel taps k in [0, K).
//
// The blocked CPU kernel's strided input gradient splits the zero-padded plane by stride
// phase (padded coordinate c goes to phase c % s at index c / s): tap k of output o then reads
// phase (k * d) % s at index o + (k * d) / s, so each phase is a stride-1 correlation.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace cvops {
namespace depthwise_math {

// Output size along one axis; <= 0 when the dilated kernel is larger than the padded input.
CVOPS_HOST_DEVICE inline int64_t output_size(int64_t in, int64_t k, int64_t s, int64_t p,
                                             int64_t d) {
  const int64_t span = d * (k - 1) + 1;
  const int64_t padded = in + 2 * p;
  if (padded < span) return 0;
  return (padded - span) / s + 1;
}

// Input coordinate that kernel tap k of output o reads (may be outside [0, in): padding).
CVOPS_HOST_DEVICE inline int64_t input_index(int64_t o, int64_t k, int64_t s, int64_t p,
                                             int64_t d) {
  return o * s - p + k * d;
}

// The taps [k_lo, k_hi) of output o that land inside [0, in): the window bounds.
CVOPS_HOST_DEVICE inline void tap_range(int64_t o, int64_t k, int64_t s, int64_t p, int64_t d,
                                        int64_t in, int64_t* k_lo, int64_t* k_hi) {
  const int64_t start = o * s - p;  // input coordinate of tap 0
  // smallest k with start + k * d >= 0
  int64_t lo = start >= 0 ? 0 : (-start + d - 1) / d;
  // largest k with start + k * d <= in - 1, plus one
  int64_t hi = start > in - 1 ? 0 : (in - 1 - start) / d + 1;
  if (hi > k) hi = k;
  if (lo > hi) lo = hi;
  *k_lo = lo;
  *k_hi = hi;
}

// The output that kernel tap k scatters input i into, or -1 when there is none (the
// transposed direction, used by the input gradient): o * s = i + p - k * d, 0 <= o < out.
CVOPS_HOST_DEVICE inline int64_t source_output(int64_t i, int64_t k, int64_t s, int64_t p,
                                               int64_t d, int64_t out) {
  const int64_t t = i + p - k * d;
  if (t < 0 || t % s != 0) return -1;
  const int64_t o = t / s;
  return o < out ? o : -1;
}

// Phase-split padded layout (the blocked kernel): padded column c -> (phase, index).
CVOPS_HOST_DEVICE inline int64_t phase_index(int64_t c, int64_t s) { return c / s; }
// Length of every phase row for a padded width wp (the longest phase, phase 0).
CVOPS_HOST_DEVICE inline int64_t phase_length(int64_t wp, int64_t s) { return (wp + s - 1) / s; }

}  // namespace depthwise_math

// One call's geometry, the only one every depthwise kernel (CPU and CUDA) reads: the sizes and
// hyper-parameters, and the window math above as methods. Built and checked by
// depthwise_params (depthwise_conv2d_checks.h).
struct DepthwiseParams {
  int64_t batch, channels, multiplier, height, width;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t out_h, out_w;

  CVOPS_HOST_DEVICE int64_t out_channels() const { return channels * multiplier; }
  // The input row / column that tap kh / kw of output row oh / column ow reads (outside
  // [0, height) / [0, width): padding).
  CVOPS_HOST_DEVICE int64_t input_row(int64_t oh, int64_t kh) const {
    return depthwise_math::input_index(oh, kh, stride_h, pad_h, dil_h);
  }
  CVOPS_HOST_DEVICE int64_t input_col(int64_t ow, int64_t kw) const {
    return depthwise_math::input_index(ow, kw, stride_w, pad_w, dil_w);
  }
  CVOPS_HOST_DEVICE bool unit_stride() const { return stride_h == 1 && stride_w == 1; }
  CVOPS_HOST_DEVICE bool undilated() const { return dil_h == 1 && dil_w == 1; }
  CVOPS_HOST_DEVICE bool square(int64_t k) const { return kernel_h == k && kernel_w == k; }
  // The input gradient of a stride-1 call is itself a stride-1 correlation: the output
  // gradient (out_h x out_w planes) with the kernel flipped in both directions, padded by
  // (k - 1) * d - p, gives height x width. This is that correlation's geometry.
  CVOPS_HOST_DEVICE DepthwiseParams input_grad_as_correlation() const {
    DepthwiseParams t = *this;
    t.height = out_h;
    t.width = out_w;
    t.out_h = height;
    t.out_w = width;
    t.pad_h = (kernel_h - 1) * dil_h - pad_h;
    t.pad_w = (kernel_w - 1) * dil_w - pad_w;
    return t;
  }
};

}  // namespace cvops
