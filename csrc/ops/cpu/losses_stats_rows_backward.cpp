// row_stats_backward (declared in losses_cpu.h): dx of rows x, t [R, L] from the grad of their
// statistics, for the binary and multilabel Dice / focal losses, instantiated here for the four
// dtypes and both gamma tags. SIMD, dtypes and determinism: see losses_cpu.h.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "ops/cpu/losses_cpu.h"

namespace cvops {
namespace loss_cpu {

// Backward of row_stats: dx = m [(gD sign(p - t) + gP) dp/dx + gF dfocal/dx]. The flags
// are template parameters so that the loop carries no per-element branches.
template <typename scalar_t, int G, bool kFocal, bool kIgnore, bool kLogits, int L>
CVOPS_CPU_INLINE void row_chunk_backward(const double* gs, const scalar_t* xr, const scalar_t* tr,
                                         int64_t n, const StatsArgs& a, scalar_t* out) {
  using S = SimdT<scalar_t, L>;
  using M = typename S::M;
  using V = typename S::V;
  constexpr int64_t W = S::W;
  const V a1 = M::c(a.fp.a1), a0 = M::c(a.fp.a0), gm = M::c(a.fp.gamma);
  const V ign = M::c(a.ignore), zero = M::c(0);
  const V gP = M::c(gs[kStatP]), gF = M::c(gs[kStatF]);
  const V gPpD = M::c(gs[kStatP] + gs[kStatD]), gPmD = M::c(gs[kStatP] - gs[kStatD]);
  auto value = [&](V xv, V tv) __attribute__((always_inline)) {
    V m = M::c(1);
    if constexpr (kIgnore) {
      m = M::where(M::eq(tv, ign), zero, m);
      tv = M::where(M::eq(m, zero), zero, tv);
    }
    V p = xv, dp = M::c(1);
    if constexpr (kLogits) {
      V q, l;
      sigmoid_parts<M>(xv, p, q, l);
      dp = p * q;
    }
    // gD sign(p - t) + gP, the sign as two selects between precomputed sums.
    V d = M::where(M::gt(p, tv), gPpD, M::where(M::gt(tv, p), gPmD, gP)) * dp;
    if constexpr (kFocal) d = d + gF * sigmoid_focal_grad<G, M>(xv, tv, a1, a0, gm);
    if constexpr (kIgnore) d = masked<M>(m, d);
    return d;
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) S::store(out + i, value(S::load(xr + i), S::load(tr + i)));
  if (i < n) {
    const Padded<scalar_t, W> px(xr + i, n - i), pt(tr + i, n - i);
    scalar_t buf[W];
    S::store(buf, value(S::load(px.v), S::load(pt.v)));
    for (int64_t j = 0; j < n - i; ++j) out[i + j] = buf[j];
  }
}

template <typename scalar_t, int G>
void row_stats_backward(const double* gstats, const scalar_t* x, const scalar_t* t, int64_t rows,
                        int64_t len, const StatsArgs& a, bool focal, scalar_t* dx) {
  const int64_t chunks = std::max<int64_t>(1, (len + kRowChunk - 1) / kRowChunk);
  at::parallel_for(0, rows * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / chunks, k = task % chunks;
      const int64_t s0 = k * kRowChunk, n = std::min(kRowChunk, len - s0);
      if (n <= 0) continue;
      const int64_t off = r * len + s0;
      dispatch_bool(focal, [&](auto f) __attribute__((always_inline)) {
        dispatch_bool(a.has_ignore, [&](auto ig) __attribute__((always_inline)) {
          dispatch_bool(a.from_logits, [&](auto lg) __attribute__((always_inline)) {
            dispatch_isa([&](auto lanes) __attribute__((always_inline)) {
              row_chunk_backward<scalar_t, G, decltype(f)::value, decltype(ig)::value,
                                 decltype(lg)::value, decltype(lanes)::value>(
                  gstats + r * kNumStats, x + off, t + off, n, a, dx + off);
            });
          });
        });
      });
    }
  });
}

// The explicit instances losses_stats.cpp calls.
template void row_stats_backward<float, kGamma2>(const double*, const float*, const float*, int64_t,
                                                 int64_t, const StatsArgs&, bool, float*);
template void row_stats_backward<double, kGamma2>(const double*, const double*, const double*,
                                                  int64_t, int64_t, const StatsArgs&, bool,
                                                  double*);
template void row_stats_backward<c10::Half, kGamma2>(const double*, const c10::Half*,
                                                     const c10::Half*, int64_t, int64_t,
                                                     const StatsArgs&, bool, c10::Half*);
template void row_stats_backward<c10::BFloat16, kGamma2>(const double*, const c10::BFloat16*,
                                                         const c10::BFloat16*, int64_t, int64_t,
                                                         const StatsArgs&, bool, c10::BFloat16*);
template void row_stats_backward<float, kGammaAny>(const double*, const float*, const float*,
                                                   int64_t, int64_t, const StatsArgs&, bool,
                                                   float*);
template void row_stats_backward<double, kGammaAny>(const double*, const double*, const double*,
                                                    int64_t, int64_t, const StatsArgs&, bool,
                                                    double*);
template void row_stats_backward<c10::Half, kGammaAny>(const double*, const c10::Half*,
                                                       const c10::Half*, int64_t, int64_t,
                                                       const StatsArgs&, bool, c10::Half*);
template void row_stats_backward<c10::BFloat16, kGammaAny>(const double*, const c10::BFloat16*,
                                                           const c10::BFloat16*, int64_t, int64_t,
                                                           const StatsArgs&, bool, c10::BFloat16*);

}  // namespace loss_cpu
}  // namespace cvops
