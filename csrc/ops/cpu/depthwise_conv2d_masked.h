// The depthwise CPU kernels' AVX-512 masked-load path (float32, NCHW, stride 1 or 2): every
// kernel tap of 16 consecutive outputs is one masked vector load straight from the input
// plane (at stride 2 from its even/odd column planes), the mask dropping the lanes whose tap
// falls in the padding (see depthwise_conv2d_masked.cpp). The other paths are in depthwise_conv2d_kernel.cpp (plane)
// and depthwise_conv2d_blocked.cpp (channel-blocked).
#pragma once

#include <ATen/ATen.h>

#include "ops/depthwise_conv2d_checks.h"

namespace cvops {

// Whether a call takes the masked path: the CPU has AVX-512 (cpu_has_avx512()), float32,
// multiplier 1, stride 1 or 2 along each axis, and `t` (the tensor the kernel reads planes of: the input, or the
// output gradient) is not channels-last. CVOPS_DEPTHWISE_CPU_PATH=blocked / plane turns it
// off (read on every call).
bool depthwise_use_masked_path(const DepthwiseParams& p, const at::Tensor& t);

// The kernels take NCHW-contiguous tensors and write NCHW-contiguous outputs. bias may be
// undefined.
void depthwise_masked_forward(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& bias, at::Tensor& output,
                              const DepthwiseParams& p);
void depthwise_masked_backward_input(const at::Tensor& grad, const at::Tensor& weight,
                                     at::Tensor& grad_input, const DepthwiseParams& p);
// result: [C, KH * KW + 1] float32, each channel's weight gradient then its bias gradient;
// deterministic (one task per channel sums its images in index order).
void depthwise_masked_backward_weight(const at::Tensor& grad, const at::Tensor& input,
                                      at::Tensor& result, const DepthwiseParams& p);

}  // namespace cvops
