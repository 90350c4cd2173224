// Sigmoid focal loss CPU kernels: cvops.sigmoid_focal_loss (elementwise, or reduced through
// row_stats of losses_stats_rows.cpp), its backward, and the fused loss-and-gradient op that
// the autograd path uses. SIMD, dtypes and determinism: see losses_cpu.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/cpu/losses_cpu.h"
#include "ops/losses_checks.h"

namespace cvops {
namespace {

using namespace loss_cpu;

// ---------------------------------------------------------------------------------------
// Sigmoid focal loss, elementwise (reduction='none') and its backward
// ---------------------------------------------------------------------------------------

// out[i] = scale[i or 0] * f(x[i], t[i]) for the focal term (grad=false) or its gradient,
// over elements [begin, end).
template <typename scalar_t, int G, bool kGrad, int L>
CVOPS_CPU_INLINE void sigmoid_focal_range(const scalar_t* x, const scalar_t* t, const scalar_t* g,
                                          bool g_full, double g_mult, scalar_t* out, int64_t begin,
                                          int64_t end, const SigmoidFocalParams& fp) {
  using S = SimdT<scalar_t, L>;
  using M = typename S::M;
  using V = typename S::V;
  constexpr int64_t W = S::W;
  const V a1 = M::c(fp.a1), a0 = M::c(fp.a0), gm = M::c(fp.gamma);
  const V g0 = M::c((g == nullptr ? 1.0 : static_cast<double>(g[0])) * g_mult);
  const V mult = M::c(g_mult);
  auto value = [&](V xv, V tv) __attribute__((always_inline)) {
    if constexpr (kGrad) {
      return sigmoid_focal_grad<G, M>(xv, tv, a1, a0, gm);
    } else {
      return sigmoid_focal_term<G, M>(xv, tv, a1, a0, gm);
    }
  };
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    V r = value(S::load(x + i), S::load(t + i));
    r = r * (g_full ? S::load(g + i) * mult : g0);
    S::store(out + i, r);
  }
  if (i < end) {
    const int64_t n = end - i;
    const Padded<scalar_t, W> px(x + i, n), pt(t + i, n);
    V r = value(S::load(px.v), S::load(pt.v));
    if (g_full) {
      const Padded<scalar_t, W> pg(g + i, n);
      r = r * S::load(pg.v) * mult;
    } else {
      r = r * g0;
    }
    scalar_t buf[W];
    S::store(buf, r);
    for (int64_t k = 0; k < n; ++k) out[i + k] = buf[k];
  }
}

template <typename scalar_t, int G, bool kGrad>
void sigmoid_focal_elementwise(const scalar_t* x, const scalar_t* t, const scalar_t* g, bool g_full,
                               double g_mult, scalar_t* out, int64_t n,
                               const SigmoidFocalParams& fp) {
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    dispatch_isa([&](auto lanes) __attribute__((always_inline)) {
      sigmoid_focal_range<scalar_t, G, kGrad, decltype(lanes)::value>(x, t, g, g_full, g_mult, out,
                                                                      begin, end, fp);
    });
  });
}

// Loss and gradient in one pass over [begin, end): loss elementwise (out != null) or summed
// into *sum; grad scaled by g_mult.
template <typename scalar_t, int G, int L>
CVOPS_CPU_INLINE void sigmoid_focal_fused_range(const scalar_t* x, const scalar_t* t, scalar_t* out,
                                                double* sum, scalar_t* grad, double g_mult,
                                                int64_t begin, int64_t end,
                                                const SigmoidFocalParams& fp) {
  using S = SimdT<scalar_t, L>;
  using M = typename S::M;
  using V = typename S::V;
  constexpr int64_t W = S::W;
  const V a1 = M::c(fp.a1), a0 = M::c(fp.a0), gm = M::c(fp.gamma), mult = M::c(g_mult);
  V acc = M::c(0);
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    V loss, g;
    sigmoid_focal_term_and_grad<G, M>(S::load(x + i), S::load(t + i), a1, a0, gm, loss, g);
    S::store(grad + i, g * mult);
    if (out != nullptr) {
      S::store(out + i, loss);
    } else {
      acc = acc + loss;
    }
  }
  if (i < end) {
    const int64_t n = end - i;
    const Padded<scalar_t, W> px(x + i, n), pt(t + i, n);
    V loss, g;
    sigmoid_focal_term_and_grad<G, M>(S::load(px.v), S::load(pt.v), a1, a0, gm, loss, g);
    scalar_t lb[W], gb[W];
    S::store(lb, loss);
    S::store(gb, g * mult);
    for (int64_t k = 0; k < n; ++k) {
      grad[i + k] = gb[k];
      if (out != nullptr) out[i + k] = lb[k];
    }
    if (out == nullptr) acc = acc + loss * lane_mask<S>(n);
  }
  if (sum != nullptr) *sum = S::sum(acc);
}

// ---------------------------------------------------------------------------------------
// Op entry points
// ---------------------------------------------------------------------------------------

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& input, const at::Tensor& target, double alpha,
                                  double gamma, int64_t reduction) {
  constexpr const char* op = "cvops.sigmoid_focal_loss";
  check_sigmoid_focal_args(op, input, target, gamma, reduction);
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const int64_t n = x.numel();
  const auto fp = sigmoid_focal_params(alpha, gamma);
  if (reduction == kReduceNone) {
    at::Tensor out = at::empty(input.sizes(), input.options());
    if (n == 0) return out;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
      dispatch_gamma(gamma, [&](auto gtag) {
        sigmoid_focal_elementwise<scalar_t, decltype(gtag)::value, false>(
            x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), nullptr, false, 1.0,
            out.mutable_data_ptr<scalar_t>(), n, fp);
      });
    });
    return out;
  }
  double stats[kNumStats] = {0, 0, 0, 0, 0};
  if (n > 0) {
    const StatsArgs a{true, false, 0.0, fp};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
      row_stats<scalar_t>(x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), 1, n, a,
                          false, true, stats);
    });
  }
  const double value = reduction == kReduceSum ? stats[kStatF]
                                               : (n > 0 ? stats[kStatF] / static_cast<double>(n)
                                                        : std::numeric_limits<double>::quiet_NaN());
  return at::scalar_tensor(value, input.options());
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                           const at::Tensor& target, double alpha, double gamma,
                                           int64_t reduction) {
  constexpr const char* op = "cvops._sigmoid_focal_loss_backward";
  check_sigmoid_focal_args(op, input, target, gamma, reduction);
  check_sigmoid_focal_backward_args(op, grad, input, reduction);
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const at::Tensor g = grad.to(input.scalar_type()).contiguous();
  const int64_t n = x.numel();
  at::Tensor out = at::empty(input.sizes(), input.options());
  if (n == 0) return out;
  const auto fp = sigmoid_focal_params(alpha, gamma);
  const bool full = reduction == kReduceNone;
  const double mult = reduction == kReduceMean ? 1.0 / static_cast<double>(n) : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    dispatch_gamma(gamma, [&](auto gtag) {
      sigmoid_focal_elementwise<scalar_t, decltype(gtag)::value, true>(
          x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
          full, mult, out.mutable_data_ptr<scalar_t>(), n, fp);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_fused_cpu(const at::Tensor& input,
                                                                const at::Tensor& target,
                                                                double alpha, double gamma,
                                                                int64_t reduction) {
  constexpr const char* op = "cvops.sigmoid_focal_loss";
  check_sigmoid_focal_args(op, input, target, gamma, reduction);
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const int64_t n = x.numel();
  const auto fp = sigmoid_focal_params(alpha, gamma);
  at::Tensor grad = at::empty(input.sizes(), input.options());
  const bool none = reduction == kReduceNone;
  at::Tensor out = none ? at::empty(input.sizes(), input.options()) : at::Tensor();
  const double mult = reduction == kReduceMean && n > 0 ? 1.0 / static_cast<double>(n) : 1.0;
  // Fixed chunks (not per-thread ranges) so the sum is the same for any thread count.
  const int64_t chunks = (n + kRowChunk - 1) / kRowChunk;
  std::vector<double> partial(none ? 0 : chunks, 0.0);
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* tp = t.const_data_ptr<scalar_t>();
      scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
      scalar_t* op_ = none ? out.mutable_data_ptr<scalar_t>() : nullptr;
      dispatch_gamma(gamma, [&](auto gtag) {
        constexpr int G = decltype(gtag)::value;
        at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t k = begin; k < end; ++k) {
            const int64_t b = k * kRowChunk, e = std::min(n, b + kRowChunk);
            dispatch_isa([&](auto lanes) __attribute__((always_inline)) {
              sigmoid_focal_fused_range<scalar_t, G, decltype(lanes)::value>(
                  xp, tp, op_, none ? nullptr : &partial[k], gp, mult, b, e, fp);
            });
          }
        });
      });
    });
  }
  if (none) return {out, grad};
  double total = 0;
  for (double v : partial) total += v;
  const double value = reduction == kReduceSum ? total
                                               : (n > 0 ? total / static_cast<double>(n)
                                                        : std::numeric_limits<double>::quiet_NaN());
  return {at::scalar_tensor(value, input.options()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cpu);
  m.impl("_sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cpu);
  m.impl("_sigmoid_focal_loss_fused", &sigmoid_focal_loss_fused_cpu);
}

}  // namespace cvops
