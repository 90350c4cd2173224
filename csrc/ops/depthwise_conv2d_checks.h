// Host-side argument checks of the depthwise convolution ops, shared by the CPU and CUDA
// kernels. Everything raises ValueError/TypeError (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE)
// naming the argument.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "ops/depthwise_conv2d.h"

namespace cvops {

inline void check_depthwise_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", name, " must have two values (h, w), got ", v);
  TORCH_CHECK_VALUE(v[0] >= min && v[1] >= min, op, ": ", name, " must be ",
                    min == 0 ? "non-negative" : "positive", ", got ", v);
}

// Geometry checks shared by the forward and backward ops; returns the parameters.
inline DepthwiseParams depthwise_params(const char* op, at::IntArrayRef input_size,
                                        int64_t out_channels, int64_t kernel_h, int64_t kernel_w,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  check_depthwise_pair(op, "stride", stride, 1);
  check_depthwise_pair(op, "padding", padding, 0);
  check_depthwise_pair(op, "dilation", dilation, 1);
  TORCH_CHECK_VALUE(input_size.size() == 4, op, ": expected input of shape [N, C, H, W], got a ",
                    input_size.size(), "-D tensor of shape ", input_size);
  const int64_t channels = input_size[1];
  TORCH_CHECK_VALUE(channels > 0, op, ": input must have at least one channel, got shape ",
                    input_size);
  TORCH_CHECK_VALUE(out_channels > 0 && out_channels % channels == 0, op,
                    ": weight.size(0) must be a positive multiple of the input channels (",
                    channels, "), got ", out_channels);
  TORCH_CHECK_VALUE(kernel_h > 0 && kernel_w > 0, op, ": kernel size must be positive, got (",
                    kernel_h, ", ", kernel_w, ")");
  DepthwiseParams p;
  p.batch = input_size[0];
  p.channels = channels;
  p.multiplier = out_channels / channels;
  p.height = input_size[2];
  p.width = input_size[3];
  p.kernel_h = kernel_h;
  p.kernel_w = kernel_w;
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dil_h = dilation[0];
  p.dil_w = dilation[1];
  p.out_h = depthwise_math::output_size(p.height, kernel_h, p.stride_h, p.pad_h, p.dil_h);
  p.out_w = depthwise_math::output_size(p.width, kernel_w, p.stride_w, p.pad_w, p.dil_w);
  TORCH_CHECK_VALUE(p.out_h > 0 && p.out_w > 0, op, ": the dilated kernel (",
                    p.dil_h * (kernel_h - 1) + 1, ", ", p.dil_w * (kernel_w - 1) + 1,
                    ") is larger than the padded input (", p.height + 2 * p.pad_h, ", ",
                    p.width + 2 * p.pad_w, ")");
  return p;
}

// Memory format of a result computed from t: channels-last when t has channels-last strides
// and is not also NCHW-contiguous (the Python fake kernels apply the same rule).
inline at::MemoryFormat depthwise_result_format(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

inline void check_depthwise_same(const char* op, const char* name, const at::Tensor& t,
                                 const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " and ", ref_name,
                   " must have the same dtype, got ", name, " ", t.scalar_type(), " and ", ref_name,
                   " ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " and ", ref_name,
              " must be on the same device, got ", name, " on ", t.device(), " and ", ref_name,
              " on ", ref.device());
}

inline DepthwiseParams check_depthwise_forward_args(const at::Tensor& input,
                                                    const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                    at::IntArrayRef dilation) {
  constexpr const char* op = "cvops.depthwise_conv2d";
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": expected input of shape [N, C, H, W], got a ",
                    input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1, op,
                    ": expected weight of shape [C_out, 1, kH, kW], got ", weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op,
                   ": expected a floating-point input, got ", input.scalar_type());
  check_depthwise_same(op, "weight", weight, input, "input");
  const auto p = depthwise_params(op, input.sizes(), weight.size(0), weight.size(2), weight.size(3),
                                  stride, padding, dilation);
  if (bias.has_value() && bias->defined()) {
    check_depthwise_same(op, "bias", *bias, input, "input");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                      ": expected bias of shape [", weight.size(0), "], got ", bias->sizes());
  }
  return p;
}

inline DepthwiseParams check_depthwise_backward_input_args(const at::Tensor& grad,
                                                           const at::Tensor& weight, int64_t batch,
                                                           int64_t channels, int64_t height,
                                                           int64_t width, at::IntArrayRef stride,
                                                           at::IntArrayRef padding,
                                                           at::IntArrayRef dilation) {
  constexpr const char* op = "cvops._depthwise_conv2d_backward_input";
  TORCH_CHECK_VALUE(batch >= 0 && height >= 0 && width >= 0, op,
                    ": input sizes must be non-negative, got [", batch, ", ", channels, ", ",
                    height, ", ", width, "]");
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1, op,
                    ": expected weight of shape [C_out, 1, kH, kW], got ", weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op,
                   ": expected a floating-point grad, got ", grad.scalar_type());
  check_depthwise_same(op, "weight", weight, grad, "grad");
  const std::vector<int64_t> size{batch, channels, height, width};
  const auto p = depthwise_params(op, size, weight.size(0), weight.size(2), weight.size(3), stride,
                                  padding, dilation);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == batch && grad.size(1) == p.out_channels() &&
                        grad.size(2) == p.out_h && grad.size(3) == p.out_w,
                    op, ": expected grad of shape [", batch, ", ", p.out_channels(), ", ", p.out_h,
                    ", ", p.out_w, "], got ", grad.sizes());
  return p;
}

inline DepthwiseParams check_depthwise_backward_weight_args(
    const at::Tensor& grad, const at::Tensor& input, int64_t kernel_h, int64_t kernel_w,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    const char* op = "cvops._depthwise_conv2d_backward_weight") {
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": expected input of shape [N, C, H, W], got ",
                    input.sizes());
  TORCH_CHECK_VALUE(grad.dim() == 4, op, ": expected grad of shape [N, C_out, oH, oW], got ",
                    grad.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op,
                   ": expected a floating-point input, got ", input.scalar_type());
  check_depthwise_same(op, "grad", grad, input, "input");
  const auto p = depthwise_params(op, input.sizes(), grad.size(1), kernel_h, kernel_w, stride,
                                  padding, dilation);
  TORCH_CHECK_VALUE(grad.size(0) == p.batch && grad.size(2) == p.out_h && grad.size(3) == p.out_w,
                    op, ": expected grad of shape [", p.batch, ", ", p.out_channels(), ", ",
                    p.out_h, ", ", p.out_w, "], got ", grad.sizes());
  return p;
}

// _depthwise_conv2d_backward (both gradients): the weight gradient's checks, and the weight
// must be [grad.size(1), 1, kH, kW] with the input's dtype and device.
inline DepthwiseParams check_depthwise_backward_args(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "cvops._depthwise_conv2d_backward";
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1, op,
                    ": expected weight of shape [C_out, 1, kH, kW], got ", weight.sizes());
  check_depthwise_same(op, "weight", weight, input, "input");
  const auto p = check_depthwise_backward_weight_args(grad, input, weight.size(2), weight.size(3),
                                                      stride, padding, dilation, op);
  TORCH_CHECK_VALUE(weight.size(0) == p.out_channels(), op, ": weight.size(0) (", weight.size(0),
                    ") must equal grad.size(1) (", p.out_channels(), ")");
  return p;
}

}  // namespace cvops
