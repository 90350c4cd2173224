// The depthwise CPU kernels, and the plan that picks one for a call
// (depthwise_conv2d_dispatch.cpp: the rules, in priority order, are in one table there).
//
// Every kernel has the same shape: a capability check, `<kernel>_applies(call, direction)`,
// that says whether it computes that call (CPU features, dtype, memory format, geometry), and
// one function per direction it implements. The dispatch file allocates the results and hands
// the kernels tensors in the layout the check promised; no kernel routes to another.
//
// | kernel      | file                          | directions                     |
// |-------------|-------------------------------|--------------------------------|
// | backward512 | depthwise_conv2d_rows512.cpp  | both gradients in one pass     |
// | stride2_512 | depthwise_conv2d_rows512.cpp  | forward, input and weight grad |
// | rows512     | depthwise_conv2d_rows512.cpp  | forward, input and weight grad |
// | masked      | depthwise_conv2d_masked.cpp   | forward, input and weight grad |
// | blocked     | depthwise_conv2d_blocked.cpp  | forward, input and weight grad |
#pragma once

#include <ATen/ATen.h>

#include "ops/depthwise_conv2d_checks.h"

namespace cvops {

enum class DepthwiseDirection {
  kForward,
  kInputGrad,
  kWeightGrad,
  kBackward,  // both gradients at once (only backward512 implements it as one kernel)
};

enum class DepthwiseKernel { kBackward512, kStride2_512, kRows512, kMasked, kBlocked };

// What a capability check sees of a call besides its geometry.
struct DepthwiseCall {
  DepthwiseParams p;
  at::ScalarType dtype;
  // Whether every tensor the kernel reads is NCHW (not channels-last): the input for the
  // forward, the output gradient for the input gradient, both for the weight gradient.
  bool nchw;
};

// The AVX-512 kernels' common requirements: an AVX-512 CPU, float32, NCHW, multiplier 1,
// planes small enough for int32 lane arithmetic.
bool avx512_float_nchw(const DepthwiseCall& call);

// Tensors handed to the kernels:
// * AVX-512 kernels (backward512, stride2_512, rows512, masked): NCHW-contiguous float32;
// * blocked: any floating dtype, any strides (it reads and writes through them).
// `bias` may be undefined. A weight-gradient `result` is [C_out, KH * KW + 1] in the op-math
// dtype: each channel's weight gradient, then its bias gradient, summed in a fixed order (the
// same for any thread count). Outputs are allocated by the caller; every element is written.
#define CVOPS_DW_DECLARE_KERNEL(name)                                                              \
  bool name##_applies(const DepthwiseCall& call, DepthwiseDirection direction);                    \
  void name##_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,   \
                      at::Tensor& output, const DepthwiseParams& p);                               \
  void name##_backward_input(const at::Tensor& grad, const at::Tensor& weight,                     \
                             at::Tensor& grad_input, const DepthwiseParams& p);                    \
  void name##_backward_weight(const at::Tensor& grad, const at::Tensor& input, at::Tensor& result, \
                              const DepthwiseParams& p);

CVOPS_DW_DECLARE_KERNEL(stride2_512)
CVOPS_DW_DECLARE_KERNEL(rows512)
CVOPS_DW_DECLARE_KERNEL(masked)
CVOPS_DW_DECLARE_KERNEL(blocked)
#undef CVOPS_DW_DECLARE_KERNEL

// The fused backward: both gradients of a 3x3, stride-1, padding-1, undilated call in one
// pass. result as for the weight gradient.
bool backward512_applies(const DepthwiseCall& call, DepthwiseDirection direction);
void backward512_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                          at::Tensor& grad_input, at::Tensor& result, const DepthwiseParams& p);

}  // namespace cvops
