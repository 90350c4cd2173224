// The depthwise CPU kernels' channel-blocked path for small planes (8 channels of one image
// interleaved, the vector across channels; see depthwise_conv2d_blocked.cpp). The plane path
// and the op registrations are in depthwise_conv2d_kernel.cpp.
#pragma once

#include <ATen/ATen.h>

#include "ops/depthwise_conv2d_checks.h"

namespace cvops {

// Whether a call takes the blocked path: multiplier 1 and a small output plane (the rule and
// its measurements are in the .cpp); CVOPS_DEPTHWISE_CPU_PATH=blocked / plane forces it,
// read on every call.
bool depthwise_use_blocked_path(const DepthwiseParams& p);

// The three kernels read their inputs and write their outputs through the tensors' strides
// (any memory format). bias may be undefined.
void depthwise_blocked_forward(const at::Tensor& input, const at::Tensor& weight,
                               const at::Tensor& bias, at::Tensor& output,
                               const DepthwiseParams& p);
void depthwise_blocked_backward_input(const at::Tensor& grad, const at::Tensor& weight,
                                      at::Tensor& grad_input, const DepthwiseParams& p);
// result: [C, KH * KW + 1] in the op-math dtype, each channel's weight gradient then its bias
// gradient; deterministic (per-image partials summed in index order).
void depthwise_blocked_backward_weight(const at::Tensor& grad, const at::Tensor& input,
                                       at::Tensor& result, const DepthwiseParams& p);

}  // namespace cvops
