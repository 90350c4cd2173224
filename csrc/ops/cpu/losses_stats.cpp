// cvops._loss_stats and its backward on CPU: the per-(sample, class) Dice and focal
// statistics of dice_loss, dice_focal_loss and softmax_focal_loss. This file checks the
// arguments, dispatches the dtype and registers the ops; the kernels are row_stats
// (binary / multilabel; losses_stats_rows.cpp), row_stats_backward
// (losses_stats_rows_backward.cpp) and the multiclass ones (losses_stats_multiclass.cpp).
// SIMD, dtypes and determinism: see losses_cpu.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "ops/cpu/losses_cpu.h"
#include "ops/losses_checks.h"

namespace cvops {
namespace {

using namespace loss_cpu;

at::Tensor loss_stats_cpu(const at::Tensor& input, const at::Tensor& target,
                          const at::Tensor& alpha, int64_t mode, bool from_logits, bool has_ignore,
                          int64_t ignore_index, double gamma, bool focal) {
  constexpr const char* op = "cvops._loss_stats";
  check_loss_stats_args(op, input, target, alpha, mode, from_logits, gamma, focal);
  const int64_t N = input.size(0), C = input.size(1), L = input.size(2);
  const auto acc = at::toOpMathType(input.scalar_type());
  at::Tensor stats64 = at::zeros({N, C, kNumStats}, input.options().dtype(at::kDouble));
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const at::Tensor al = alpha.to(at::kDouble).contiguous();
  double* st = stats64.mutable_data_ptr<double>();
  if (N * C > 0 && (L > 0 || mode == kModeMulticlass)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
      if (mode == kModeMulticlass) {
        const MulticlassArgs a{
            C, L, from_logits, has_ignore, ignore_index, gamma, al.const_data_ptr<double>()};
        if (L > 0)
          multiclass_stats<scalar_t>(x.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(), N,
                                     a, focal, st);
      } else {
        const StatsArgs a{from_logits, has_ignore, static_cast<double>(ignore_index),
                          sigmoid_focal_params(al.const_data_ptr<double>()[0], gamma)};
        row_stats<scalar_t>(x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), N * C, L, a,
                            true, focal, st);
      }
    });
  }
  return stats64.to(acc);
}

at::Tensor loss_stats_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                   const at::Tensor& target, const at::Tensor& alpha, int64_t mode,
                                   bool from_logits, bool has_ignore, int64_t ignore_index,
                                   double gamma, bool focal) {
  constexpr const char* op = "cvops._loss_stats_backward";
  check_loss_stats_args(op, input, target, alpha, mode, from_logits, gamma, focal);
  const int64_t N = input.size(0), C = input.size(1), L = input.size(2);
  check_loss_stats_grad(op, grad, input);
  at::Tensor out = at::empty(input.sizes(), input.options());
  if (out.numel() == 0) return out;
  const at::Tensor g = grad.to(at::kDouble).contiguous();
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const at::Tensor al = alpha.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    if (mode == kModeMulticlass) {
      const MulticlassArgs a{
          C, L, from_logits, has_ignore, ignore_index, gamma, al.const_data_ptr<double>()};
      multiclass_stats_backward<scalar_t>(g.const_data_ptr<double>(), x.const_data_ptr<scalar_t>(),
                                          t.const_data_ptr<int64_t>(), N, a, focal,
                                          out.mutable_data_ptr<scalar_t>());
    } else {
      const StatsArgs a{from_logits, has_ignore, static_cast<double>(ignore_index),
                        sigmoid_focal_params(al.const_data_ptr<double>()[0], gamma)};
      dispatch_gamma(gamma, [&](auto gtag) {
        row_stats_backward<scalar_t, decltype(gtag)::value>(
            g.const_data_ptr<double>(), x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
            N * C, L, a, focal, out.mutable_data_ptr<scalar_t>());
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("_loss_stats", &loss_stats_cpu);
  m.impl("_loss_stats_backward", &loss_stats_backward_cpu);
}

}  // namespace cvops
