// Autocast for RoI Pool: run the kernel in float32 and return the input's dtype (the argmax
// is unchanged), on CPU and CUDA. This also reconciles a half/bfloat16 feature map with
// float32 boxes.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

namespace cvops {
namespace {

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
std::tuple<at::Tensor, at::Tensor> roi_pool_autocast(const at::Tensor& input,
                                                     const at::Tensor& rois, double spatial_scale,
                                                     int64_t pooled_height, int64_t pooled_width) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cvops::roi_pool", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, double, int64_t, int64_t)>();
  auto result = op.call(at::autocast::cached_cast(at::kFloat, input, device_type),
                        at::autocast::cached_cast(at::kFloat, rois, device_type), spatial_scale,
                        pooled_height, pooled_width);
  return {std::get<0>(result).to(input.scalar_type()), std::get<1>(result)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, AutocastCPU, m) {
  m.impl("roi_pool", &roi_pool_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(cvops, AutocastCUDA, m) {
  m.impl("roi_pool", &roi_pool_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace cvops
