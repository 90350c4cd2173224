// Autocast for the NMS ops, on CPU and CUDA: boxes and scores go to float32 (as in
// torchvision), which also reconciles float16 boxes with float32 scores. soft_nms returns its
// scores in the dtype of the scores it was given.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

namespace cvops {
namespace {

template <c10::DeviceType device_type>
at::Tensor to_float(const at::Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, device_type);
}

template <c10::DispatchKey key, c10::DeviceType device_type>
at::Tensor nms_autocast(const at::Tensor& boxes, const at::Tensor& scores, double threshold) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cvops::nms", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(to_float<device_type>(boxes), to_float<device_type>(scores), threshold);
}

template <c10::DispatchKey key, c10::DeviceType device_type>
at::Tensor batched_nms_autocast(const at::Tensor& boxes, const at::Tensor& scores,
                                const at::Tensor& idxs, double threshold) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cvops::batched_nms", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(to_float<device_type>(boxes), to_float<device_type>(scores), idxs, threshold);
}

template <c10::DispatchKey key, c10::DeviceType device_type>
std::tuple<at::Tensor, at::Tensor> nms_fixed_autocast(const at::Tensor& boxes,
                                                      const at::Tensor& scores, double threshold,
                                                      int64_t max_output) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cvops::nms_fixed", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, double, int64_t)>();
  return op.call(to_float<device_type>(boxes), to_float<device_type>(scores), threshold,
                 max_output);
}

template <c10::DispatchKey key, c10::DeviceType device_type>
std::tuple<at::Tensor, at::Tensor> soft_nms_autocast(const at::Tensor& boxes,
                                                     const at::Tensor& scores, double threshold,
                                                     double sigma, double score_threshold,
                                                     int64_t method) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cvops::soft_nms", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                    double, double, int64_t)>();
  auto out = op.call(to_float<device_type>(boxes), to_float<device_type>(scores), threshold, sigma,
                     score_threshold, method);
  return {std::get<0>(out), std::get<1>(out).to(scores.scalar_type())};
}

template <c10::DispatchKey key, c10::DeviceType device_type>
void register_autocast(torch::Library& m) {
  m.impl("nms", &nms_autocast<key, device_type>);
  m.impl("batched_nms", &batched_nms_autocast<key, device_type>);
  m.impl("nms_fixed", &nms_fixed_autocast<key, device_type>);
  m.impl("soft_nms", &soft_nms_autocast<key, device_type>);
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, AutocastCPU, m) {
  register_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(cvops, AutocastCUDA, m) {
  register_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>(m);
}

}  // namespace cvops
