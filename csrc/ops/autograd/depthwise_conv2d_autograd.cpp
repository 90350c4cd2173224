// Autograd for cvops::depthwise_conv2d, in C++ (the Autograd dispatch key).
//
// Python's torch.library.register_autograd costs ~45 us per forward+backward of this op on the
// project's CPU, against ~15 us for a C++ autograd function (measured 2026-11-29 on a
// [1,16,4,4] input: 59 us per step with the Python registration, ~44 us with a plain Python
// autograd.Function; and 3.3 us of the forward alone, with no gradient wanted). On
// MobileNet's small planes the three kernels take 150-200 us, so that overhead was a fifth of
// the step. torchvision registers its ops' autograd the same way, and torch.compile and
// opcheck see through it: the forward calls the op below autograd (its CPU/CUDA kernels, or
// the fake kernel when traced); the backward calls _depthwise_conv2d_backward (both gradients,
// fused on the CPU where it can be) when it needs the input's and the weight's gradients and
// no graph of them, else the two backward ops. Their autograd (double backward) stays
// registered in Python (cvops/ops/depthwise_conv2d.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace cvops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward op's handle, for calls below autograd.
using ForwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&,
                                    const std::optional<at::Tensor>&, c10::IntArrayRef,
                                    c10::IntArrayRef, c10::IntArrayRef);
const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cvops::depthwise_conv2d", "")
                             .typed<ForwardSignature>();
  return op;
}

class DepthwiseConv2dFunction : public torch::autograd::Function<DepthwiseConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor output = forward_op().call(input, weight, bias, stride, padding, dilation);
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto input_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("cvops::_depthwise_conv2d_backward_input", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt,
                              c10::SymInt, c10::SymInt, c10::IntArrayRef, c10::IntArrayRef,
                              c10::IntArrayRef)>();
    static auto weight_op = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("cvops::_depthwise_conv2d_backward_weight", "")
                                .typed<std::tuple<at::Tensor, at::Tensor>(
                                    const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                    c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef)>();
    static auto both_op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("cvops::_depthwise_conv2d_backward", "")
                              .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                  const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grad_outputs[0];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    at::Tensor grad_input, grad_weight, grad_bias;
    // Without create_graph, grad mode is off and the backward ops' own (Python) autograd
    // would only pass the call on: go below it (~3 us per op). With create_graph, through it,
    // for double backward.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below;
    if (!at::GradMode::is_enabled()) below.emplace();
    const bool weight_or_bias = ctx->needs_input_grad(1) || (has_bias && ctx->needs_input_grad(2));
    if (ctx->needs_input_grad(0) && weight_or_bias && below.has_value()) {
      // Both, and no graph of them wanted: one op (one pass over grad on the fused CPU kernel).
      std::tie(grad_input, grad_weight, grad_bias) =
          both_op.call(grad, input, weight, stride, padding, dilation);
      if (!ctx->needs_input_grad(1)) grad_weight = at::Tensor();
      if (!has_bias || !ctx->needs_input_grad(2)) grad_bias = at::Tensor();
      return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor()};
    }
    if (ctx->needs_input_grad(0)) {
      grad_input = input_op.call(grad, weight, input.sym_size(0), input.sym_size(1),
                                 input.sym_size(2), input.sym_size(3), stride, padding, dilation);
    }
    if (weight_or_bias) {
      std::tie(grad_weight, grad_bias) =
          weight_op.call(grad, input, weight.size(2), weight.size(3), stride, padding, dilation);
      if (!ctx->needs_input_grad(1)) grad_weight = at::Tensor();
      if (!has_bias || !ctx->needs_input_grad(2)) grad_bias = at::Tensor();
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor depthwise_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                     c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  // No gradient wanted (inference, or inputs that do not require it): call the op below
  // autograd directly. The autograd function would still build its node and save its
  // arguments, ~1 us of a 7x7 layer's ~38 us forward.
  const bool bias_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (!at::GradMode::is_enabled() ||
      (!input.requires_grad() && !weight.requires_grad() && !bias_grad)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return forward_op().call(input, weight, bias, stride, padding, dilation);
  }
  return DepthwiseConv2dFunction::apply(input, weight, bias, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, Autograd, m) { m.impl("depthwise_conv2d", &depthwise_conv2d_autograd); }

}  // namespace cvops
