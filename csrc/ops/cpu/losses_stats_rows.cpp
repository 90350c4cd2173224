// row_stats (losses_cpu.h): the statistics of rows x, t [R, L] for the binary and
// multilabel Dice / focal losses and the sigmoid focal loss's reductions, in fixed chunks of
// kRowChunk elements. SIMD, dtypes and determinism: see losses_cpu.h.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/losses_cpu.h"

namespace cvops {
namespace loss_cpu {
namespace {

// Sums of one chunk [begin, end) of one row into out[kNumStats].
template <typename scalar_t, int G, bool kDice, bool kFocal, bool kIgnore, int L>
CVOPS_CPU_INLINE void row_chunk_stats(const scalar_t* x, const scalar_t* t, int64_t len,
                                      const StatsArgs& a, double* out) {
  using S = SimdT<scalar_t, L>;
  using M = typename S::M;
  using V = typename S::V;
  constexpr int64_t W = S::W;
  const V a1 = M::c(a.fp.a1), a0 = M::c(a.fp.a0), gm = M::c(a.fp.gamma);
  const V ign = M::c(a.ignore), one = M::c(1), zero = M::c(0);
  V sD = zero, sP = zero, sT = zero, sF = zero, sM = zero;
  auto step = [&](V xv, V tv, V lanes) __attribute__((always_inline)) {
    V m = lanes;
    if constexpr (kIgnore) m = M::where(M::eq(tv, ign), zero, m);
    tv = M::where(M::eq(m, zero), zero, tv);  // ignored targets never enter the math
    if constexpr (kDice) {
      V p = xv;
      if (a.from_logits) {
        V q, l;
        sigmoid_parts<M>(xv, p, q, l);
      }
      sD = sD + masked<M>(m, abs_diff<M>(p, tv));
      sP = sP + masked<M>(m, p);
      sT = sT + tv * m;
    }
    if constexpr (kFocal) sF = sF + masked<M>(m, sigmoid_focal_term<G, M>(xv, tv, a1, a0, gm));
    if constexpr (kIgnore) sM = sM + m;  // else every element counts: len
  };
  int64_t i = 0;
  for (; i + W <= len; i += W) step(S::load(x + i), S::load(t + i), one);
  if (i < len) {
    const Padded<scalar_t, W> px(x + i, len - i), pt(t + i, len - i);
    step(S::load(px.v), S::load(pt.v), lane_mask<S>(len - i));
  }
  out[kStatD] = S::sum(sD);
  out[kStatP] = S::sum(sP);
  out[kStatT] = S::sum(sT);
  out[kStatF] = S::sum(sF);
  out[kStatM] = kIgnore ? S::sum(sM) : static_cast<double>(len);
}

}  // namespace

// stats [R, kNumStats] (double) of rows x, t [R, L].
template <typename scalar_t>
void row_stats(const scalar_t* x, const scalar_t* t, int64_t rows, int64_t len, const StatsArgs& a,
               bool dice, bool focal, double* stats) {
  const int64_t chunks = std::max<int64_t>(1, (len + kRowChunk - 1) / kRowChunk);
  std::vector<double> partial(rows * chunks * kNumStats, 0.0);
  dispatch_gamma(a.fp.gamma, [&](auto gtag) {
    constexpr int G = decltype(gtag)::value;
    at::parallel_for(0, rows * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task / chunks, k = task % chunks;
        const int64_t s0 = k * kRowChunk, n = std::min(kRowChunk, len - s0);
        if (n <= 0) continue;
        const scalar_t* xc = x + r * len + s0;
        const scalar_t* tc = t + r * len + s0;
        double* o = &partial[task * kNumStats];
        // ignore_index is a template flag: without it the main loop needs no mask at all.
        dispatch_bool(a.has_ignore, [&](auto ignore) __attribute__((always_inline)) {
          constexpr bool I = decltype(ignore)::value;
          dispatch_isa([&](auto lanes) __attribute__((always_inline)) {
            constexpr int L = decltype(lanes)::value;
            if (dice && focal) {
              row_chunk_stats<scalar_t, G, true, true, I, L>(xc, tc, n, a, o);
            } else if (focal) {
              row_chunk_stats<scalar_t, G, false, true, I, L>(xc, tc, n, a, o);
            } else if (G == kGamma2) {
              row_chunk_stats<scalar_t, kGamma2, true, false, I, L>(xc, tc, n, a, o);
            }
          });
        });
      }
    });
  });
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < kNumStats; ++j) {
      double s = 0;
      for (int64_t k = 0; k < chunks; ++k) s += partial[(r * chunks + k) * kNumStats + j];
      stats[r * kNumStats + j] = s;
    }
  }
}

template void row_stats<float>(const float*, const float*, int64_t, int64_t, const StatsArgs&, bool,
                               bool, double*);
template void row_stats<double>(const double*, const double*, int64_t, int64_t, const StatsArgs&,
                                bool, bool, double*);
template void row_stats<c10::Half>(const c10::Half*, const c10::Half*, int64_t, int64_t,
                                   const StatsArgs&, bool, bool, double*);
template void row_stats<c10::BFloat16>(const c10::BFloat16*, const c10::BFloat16*, int64_t, int64_t,
                                       const StatsArgs&, bool, bool, double*);

}  // namespace loss_cpu
}  // namespace cvops
