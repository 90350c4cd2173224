// Autocast for depthwise convolution: like F.conv2d, run in the autocast dtype (float16 or
// bfloat16 on CUDA, bfloat16 on CPU by default) and return that dtype.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

namespace cvops {
namespace {

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor depthwise_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cvops::depthwise_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    b = at::autocast::cached_cast(dtype, *bias, device_type);
  }
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type), b, stride, padding,
                 dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, AutocastCPU, m) {
  m.impl("depthwise_conv2d",
         &depthwise_conv2d_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(cvops, AutocastCUDA, m) {
  m.impl("depthwise_conv2d",
         &depthwise_conv2d_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace cvops
