// The depthwise convolution's CPU ops and the plan that picks their kernel.
//
// plan() walks kRules in priority order and runs the first kernel that can compute the call
// (its capability check, `<kernel>_applies`); the kernels themselves never route. The order
// is "most specialised first": each AVX-512 kernel is faster than the ones below it on every
// shape its check accepts (the measurements behind each rule are in
// docs/depthwise_conv2d.md, "Decision log"), and blocked computes everything.
// CVOPS_DEPTHWISE_CPU_PATH=<kernel>, read once, forces one kernel for the directions it
// implements and makes a call it cannot compute an error; python -m cvops.info --depthwise
// prints the plan for a shape.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/cpu_utils.h"
#include "ops/cpu/depthwise_conv2d_cpu.h"

namespace cvops {

bool avx512_float_nchw(const DepthwiseCall& call) {
  const DepthwiseParams& p = call.p;
  // The AVX-512 kernels' mask tables do their lane arithmetic in int32.
  const int64_t limit = int64_t(1) << 30;
  return cpu_has_avx512() && call.dtype == at::kFloat && call.nchw && p.multiplier == 1 &&
         p.height * p.width < limit && p.out_h * p.out_w < limit;
}

namespace {

struct Rule {
  DepthwiseKernel kernel;
  const char* name;
  // The kernel's capability check: whether it can compute the call.
  bool (*applies)(const DepthwiseCall&, DepthwiseDirection);
};

// Priority order: the plan runs the first kernel that applies.
constexpr Rule kRules[] = {
    {DepthwiseKernel::kBackward512, "backward512", &backward512_applies},
    {DepthwiseKernel::kStride2_512, "stride2_512", &stride2_512_applies},
    {DepthwiseKernel::kRows512, "rows512", &rows512_applies},
    {DepthwiseKernel::kMasked, "masked", &masked_applies},
    {DepthwiseKernel::kBlocked, "blocked", &blocked_applies},
};

const Rule* rule_named(const std::string& name) {
  for (const Rule& r : kRules)
    if (name == r.name) return &r;
  return nullptr;
}

std::string kernel_names() {
  std::string names;
  for (const Rule& r : kRules) names += std::string(names.empty() ? "" : ", ") + r.name;
  return names;
}

// Whether a kernel has an implementation for a direction at all (as opposed to one that
// does not apply to a given call): backward512 only computes both gradients at once, and only
// backward512 does.
bool implements(DepthwiseKernel k, DepthwiseDirection d) {
  return (k == DepthwiseKernel::kBackward512) == (d == DepthwiseDirection::kBackward);
}

const char* direction_name(DepthwiseDirection d) {
  switch (d) {
    case DepthwiseDirection::kForward: return "forward";
    case DepthwiseDirection::kInputGrad: return "input gradient";
    case DepthwiseDirection::kWeightGrad: return "weight gradient";
    case DepthwiseDirection::kBackward: return "fused backward";
  }
  return "?";
}

// The forced kernel: CVOPS_DEPTHWISE_CPU_PATH, read on the first call, then whatever
// _depthwise_cpu_force sets (tests). Lock-free after the first read: plan() runs on every call.
std::atomic<const Rule*> forced{nullptr};
std::once_flag env_once;
std::string env_error;

const Rule* forced_rule() {
  std::call_once(env_once, [] {
    const char* env = std::getenv("CVOPS_DEPTHWISE_CPU_PATH");
    if (env == nullptr || *env == '\0') return;
    const Rule* rule = rule_named(env);
    if (rule == nullptr)
      env_error = std::string("CVOPS_DEPTHWISE_CPU_PATH=") + env +
                  " names no depthwise CPU kernel; expected one of: " + kernel_names();
    forced.store(rule);
  });
  TORCH_CHECK(env_error.empty(), env_error);
  return forced.load(std::memory_order_relaxed);
}

// The kernel that runs `direction` of `call`; nullptr for kBackward means the input and the
// weight gradient are computed separately, each with its own plan.
const Rule* plan(const DepthwiseCall& call, DepthwiseDirection direction) {
  if (const Rule* f = forced_rule()) {
    if (implements(f->kernel, direction)) {
      TORCH_CHECK(f->applies(call, direction), "CVOPS_DEPTHWISE_CPU_PATH=", f->name, ": the ",
                  f->name, " kernel does not apply to this ", direction_name(direction),
                  " (input [", call.p.batch, ", ", call.p.channels, ", ", call.p.height, ", ",
                  call.p.width, "], kernel ", call.p.kernel_h, "x", call.p.kernel_w, ", stride (",
                  call.p.stride_h, ", ", call.p.stride_w, "), padding (", call.p.pad_h, ", ",
                  call.p.pad_w, "), dilation (", call.p.dil_h, ", ", call.p.dil_w, "), multiplier ",
                  call.p.multiplier, ", ", call.dtype, call.nchw ? "" : ", channels-last",
                  "); see cvops.info --depthwise");
      return f;
    }
    if (direction == DepthwiseDirection::kBackward) return nullptr;
  }
  for (const Rule& r : kRules)
    if (implements(r.kernel, direction) && r.applies(call, direction)) return &r;
  TORCH_INTERNAL_ASSERT(direction == DepthwiseDirection::kBackward,
                        "no depthwise CPU kernel for this call");
  return nullptr;
}

bool is_nchw(const at::Tensor& t) {
  return depthwise_result_format(t) == at::MemoryFormat::Contiguous;
}

// Calls the chosen rule's function for one direction, e.g. CVOPS_DW_RUN(k, forward, ...) runs
// masked_forward(...) when k is the masked rule.
#define CVOPS_DW_RUN(rule, fn, ...)                                           \
  switch (rule->kernel) {                                                     \
    case DepthwiseKernel::kStride2_512: stride2_512_##fn(__VA_ARGS__); break; \
    case DepthwiseKernel::kRows512: rows512_##fn(__VA_ARGS__); break;         \
    case DepthwiseKernel::kMasked: masked_##fn(__VA_ARGS__); break;           \
    case DepthwiseKernel::kBlocked: blocked_##fn(__VA_ARGS__); break;         \
    case DepthwiseKernel::kBackward512: TORCH_INTERNAL_ASSERT(false);         \
  }

at::Tensor depthwise_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  const auto p = check_depthwise_forward_args(input, weight, bias, stride, padding, dilation);
  const auto format = depthwise_result_format(input);
  const Rule* k = plan({p, input.scalar_type(), is_nchw(input)}, DepthwiseDirection::kForward);
  // blocked writes the result in its final memory format, through strides; the others write
  // NCHW.
  const bool strided = k->kernel == DepthwiseKernel::kBlocked;
  at::Tensor output =
      at::empty({p.batch, p.out_channels(), p.out_h, p.out_w},
                input.options().memory_format(strided ? format : at::MemoryFormat::Contiguous));
  if (output.numel() == 0) return output.contiguous(format);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const at::Tensor x = strided ? input : input.contiguous();
  CVOPS_DW_RUN(k, forward, x, weight.contiguous(), b, output, p)
  return output.contiguous(format);
}

at::Tensor depthwise_conv2d_backward_input_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                               int64_t batch, int64_t channels, int64_t height,
                                               int64_t width, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_input_args(grad, weight, batch, channels, height, width,
                                                     stride, padding, dilation);
  const auto format = depthwise_result_format(grad);
  const Rule* k = plan({p, grad.scalar_type(), is_nchw(grad)}, DepthwiseDirection::kInputGrad);
  const bool strided = k->kernel == DepthwiseKernel::kBlocked;
  at::Tensor grad_input =
      at::empty({batch, channels, height, width},
                grad.options().memory_format(strided ? format : at::MemoryFormat::Contiguous));
  if (grad_input.numel() == 0) return grad_input.contiguous(format);
  const at::Tensor g = strided ? grad : grad.contiguous();
  CVOPS_DW_RUN(k, backward_input, g, weight.contiguous(), grad_input, p)
  return grad_input.contiguous(format);
}

// The kernels' [C_out][KK + 1] sums (KK taps, then the bias) as the weight gradient
// [C_out, 1, kh, kw] and the bias gradient [C_out] in `dtype`. A plain loop when no cast is
// needed: narrow + reshape + select through the dispatcher cost ~6 us a call.
std::tuple<at::Tensor, at::Tensor> split_weight_and_bias(const at::Tensor& result, int64_t kernel_h,
                                                         int64_t kernel_w, at::ScalarType dtype) {
  const int64_t C_out = result.size(0), KK = kernel_h * kernel_w;
  if (dtype != result.scalar_type()) {
    at::Tensor grad_weight = result.narrow(1, 0, KK).reshape({C_out, 1, kernel_h, kernel_w});
    return {grad_weight.to(dtype).contiguous(), result.select(1, KK).to(dtype).contiguous()};
  }
  at::Tensor grad_weight = at::empty({C_out, 1, kernel_h, kernel_w}, result.options());
  at::Tensor grad_bias = at::empty({C_out}, result.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "cvops_depthwise_split_weight_and_bias", [&] {
    const scalar_t* sums = result.const_data_ptr<scalar_t>();
    scalar_t* weight = grad_weight.mutable_data_ptr<scalar_t>();
    scalar_t* bias = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C_out; ++c) {
      std::copy_n(sums + c * (KK + 1), KK, weight + c * KK);
      bias[c] = sums[c * (KK + 1) + KK];
    }
  });
  return {grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward_weight_cpu(
    const at::Tensor& grad, const at::Tensor& input, int64_t kernel_h, int64_t kernel_w,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_weight_args(grad, input, kernel_h, kernel_w, stride,
                                                      padding, dilation);
  const auto acc_type = at::toOpMathType(input.scalar_type());
  const DepthwiseCall call{p, input.scalar_type(), is_nchw(input) && is_nchw(grad)};
  const Rule* k = plan(call, DepthwiseDirection::kWeightGrad);
  at::Tensor result;
  if (p.batch > 0) {
    // Every element is written by the kernel (no fill: under load, even a parallel fill of a
    // small buffer can wait milliseconds for a descheduled thread).
    result =
        at::empty({p.out_channels(), kernel_h * kernel_w + 1}, input.options().dtype(acc_type));
    const bool strided = k->kernel == DepthwiseKernel::kBlocked;
    CVOPS_DW_RUN(k, backward_weight, strided ? grad : grad.contiguous(),
                 strided ? input : input.contiguous(), result, p)
  } else {
    result =
        at::zeros({p.out_channels(), kernel_h * kernel_w + 1}, input.options().dtype(acc_type));
  }
  return split_weight_and_bias(result, kernel_h, kernel_w, input.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_args(grad, input, weight, stride, padding, dilation);
  const DepthwiseCall call{p, input.scalar_type(), is_nchw(input) && is_nchw(grad)};
  // (decided before allocating: a grad_input allocated and then not used cost a 14 MB
  // allocation, and its page faults, on every backward of a [8,144,56,56] layer)
  if (plan(call, DepthwiseDirection::kBackward) != nullptr) {
    const at::Tensor x = input.contiguous();
    at::Tensor grad_input = at::empty(x.sizes(), x.options());
    at::Tensor sums = at::empty({p.channels, p.kernel_h * p.kernel_w + 1}, x.options());
    backward512_backward(grad.contiguous(), x, weight.contiguous(), grad_input, sums, p);
    auto [grad_weight, grad_bias] = split_weight_and_bias(sums, p.kernel_h, p.kernel_w, at::kFloat);
    return {grad_input, grad_weight, grad_bias};
  }
  at::Tensor grad_input = depthwise_conv2d_backward_input_cpu(
      grad, weight, p.batch, p.channels, p.height, p.width, stride, padding, dilation);
  auto [grad_weight, grad_bias] = depthwise_conv2d_backward_weight_cpu(
      grad, input, p.kernel_h, p.kernel_w, stride, padding, dilation);
  return {grad_input, grad_weight, grad_bias};
}

// _depthwise_cpu_plan: the kernel of each direction (forward, input gradient, weight
// gradient, fused backward or "separate") for a call of this geometry, dtype and format
// (python -m cvops.info --depthwise; the route tests).
std::vector<std::string> depthwise_cpu_plan(at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, at::ScalarType dtype,
                                            bool channels_last) {
  constexpr const char* op = "cvops._depthwise_cpu_plan";
  TORCH_CHECK_VALUE(weight_size.size() == 4 && weight_size[1] == 1, op,
                    ": expected weight size [C_out, 1, kH, kW], got ", weight_size);
  const auto p = depthwise_params(op, input_size, weight_size[0], weight_size[2], weight_size[3],
                                  stride, padding, dilation);
  const DepthwiseCall call{p, dtype, !channels_last};
  std::vector<std::string> names;
  for (const auto d : {DepthwiseDirection::kForward, DepthwiseDirection::kInputGrad,
                       DepthwiseDirection::kWeightGrad, DepthwiseDirection::kBackward}) {
    const Rule* r = plan(call, d);
    names.emplace_back(r != nullptr ? r->name : "separate");
  }
  return names;
}

// _depthwise_cpu_force: forces a kernel (None: the plan's choice) for this process, returns
// the previous setting (tests; the environment variable sets the initial one).
std::optional<std::string> depthwise_cpu_force(std::optional<std::string> name) {
  const Rule* rule = nullptr;
  if (name.has_value()) {
    rule = rule_named(*name);
    TORCH_CHECK_VALUE(rule != nullptr, "cvops._depthwise_cpu_force: unknown kernel '", *name,
                      "'; expected one of: ", kernel_names());
  }
  forced_rule();  // reads the environment first, so it cannot override this later
  const Rule* previous = forced.exchange(rule);
  return previous != nullptr ? std::optional<std::string>(previous->name) : std::nullopt;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cvops, m) {
  m.def(
      "_depthwise_cpu_plan(int[] input_size, int[] weight_size, int[2] stride, int[2] padding, "
      "int[2] dilation, ScalarType dtype, bool channels_last) -> str[]",
      &depthwise_cpu_plan);
  m.def("_depthwise_cpu_force(str? kernel) -> str?", &depthwise_cpu_force);
  // Whether the AVX-512 kernels can run here (built in, and the CPU and OS support them).
  m.def("_cpu_has_avx512() -> bool", [] { return cpu_has_avx512(); });
}

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
  m.impl("depthwise_conv2d", &depthwise_conv2d_forward_cpu);
  m.impl("_depthwise_conv2d_backward_input", &depthwise_conv2d_backward_input_cpu);
  m.impl("_depthwise_conv2d_backward_weight", &depthwise_conv2d_backward_weight_cpu);
}

}  // namespace cvops
