// multiclass_stats and multiclass_stats_backward (losses_cpu.h): the statistics of softmax
// probabilities x [N, C, L] against integer classes y [N, L], and their backward, for the
// multiclass Dice / focal losses, in fixed chunks of kPixChunk pixels. SIMD, dtypes and
// determinism: see losses_cpu.h.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/cpu/losses_cpu.h"

namespace cvops {
namespace loss_cpu {
namespace {

// Target classes of a chunk as int32 (-1 for ignored) and the lane mask m; returns the
// position of the first out-of-range target, or -1.
inline int64_t chunk_targets(const int64_t* y, int64_t n, int64_t padded, const MulticlassArgs& a,
                             int32_t* cls) {
  int64_t bad = -1;
  for (int64_t i = 0; i < padded; ++i) {
    if (i >= n) {
      cls[i] = -2;  // padding lane
      continue;
    }
    const int64_t v = y[i];
    if (a.has_ignore && v == a.ignore) {
      cls[i] = -1;
    } else if (v < 0 || v >= a.classes) {
      if (bad < 0) bad = i;
      cls[i] = -1;
    } else {
      cls[i] = static_cast<int32_t>(v);
    }
  }
  return bad;
}

// Per-pixel log-sum-exp over classes of a chunk (x points at class 0 of the chunk); also keeps
// e_c = exp(x_c - max) in e ([C, padded] lanes) and 1 / sum_c e_c in inv, so the callers get
// p_c = e_c * inv without a second exp per class.
template <typename scalar_t, int L>
CVOPS_CPU_INLINE void chunk_softmax_parts(
    const scalar_t* x, int64_t padded, const MulticlassArgs& a, typename SimdT<scalar_t, L>::V* lse,
    typename SimdT<scalar_t, L>::V* inv,
    std::conditional_t<SimdT<scalar_t, L>::W == 1, double, float>* e) {
  using S = SimdT<scalar_t, L>;
  using M = typename S::M;
  using V = typename S::V;
  constexpr int64_t W = S::W;
  const int64_t nv = padded / W;
  V sum[kPixChunk / W + 1];
  for (int64_t v = 0; v < nv; ++v) {
    lse[v] = M::c(-std::numeric_limits<double>::infinity());
    sum[v] = M::c(0);
  }
  for (int64_t c = 0; c < a.classes; ++c)
    for (int64_t v = 0; v < nv; ++v) lse[v] = M::max(lse[v], S::load(x + c * a.len + v * W));
  for (int64_t c = 0; c < a.classes; ++c)
    for (int64_t v = 0; v < nv; ++v) {
      const V ev = M::exp(S::load(x + c * a.len + v * W) - lse[v]);
      std::memcpy(&e[(c * nv + v) * W], &ev, sizeof(V));
      sum[v] = sum[v] + ev;
    }
  for (int64_t v = 0; v < nv; ++v) {
    inv[v] = M::c(1) / sum[v];
    lse[v] = lse[v] + M::log(sum[v]);
  }
}

// Copies a chunk [n pixels x C classes] into a zero-padded [C, padded] buffer when the chunk
// is the ragged tail, so the vector loops never read past the row.
template <typename scalar_t>
const scalar_t* chunk_view(const scalar_t* x, int64_t n, int64_t padded, const MulticlassArgs& a,
                           std::vector<scalar_t>& buf, int64_t& stride) {
  if (n == padded) {
    stride = a.len;
    return x;
  }
  buf.assign(a.classes * padded, scalar_t(0));
  for (int64_t c = 0; c < a.classes; ++c)
    for (int64_t i = 0; i < n; ++i) buf[c * padded + i] = x[c * a.len + i];
  stride = padded;
  return buf.data();
}

template <typename scalar_t, int G, bool kFocal, int L>
CVOPS_CPU_INLINE int64_t multiclass_chunk_stats(const scalar_t* x_in, const int64_t* y, int64_t n,
                                                const MulticlassArgs& a_in,
                                                double* out /*[C, kNumStats]*/) {
  using S = SimdT<scalar_t, L>;
  using M = typename S::M;
  using V = typename S::V;
  constexpr int64_t W = S::W;
  const int64_t padded = (n + W - 1) / W * W, nv = padded / W;
  int32_t cls[kPixChunk + 8];
  const int64_t bad = chunk_targets(y, n, padded, a_in, cls);
  std::vector<scalar_t> buf;
  int64_t stride;
  const scalar_t* x = chunk_view(x_in, n, padded, a_in, buf, stride);
  MulticlassArgs a = a_in;
  a.len = stride;
  V lse[kPixChunk / W + 1], inv[kPixChunk / W + 1];
  using lane_t = std::conditional_t<W == 1, double, float>;
  std::vector<lane_t> ex(a.from_logits ? a.classes * nv * W : 0);
  if (a.from_logits) chunk_softmax_parts<scalar_t, L>(x, padded, a, lse, inv, ex.data());
  const V one = M::c(1), zero = M::c(0), gm = M::c(a.gamma);
  for (int64_t c = 0; c < a.classes; ++c) {
    V sD = zero, sP = zero, sT = zero, sF = zero;
    const V ac = M::c(a.alpha[c]);
    const auto cc = S::spliti(static_cast<int32_t>(c));
    for (int64_t v = 0; v < nv; ++v) {
      const auto yv = S::loadi(cls + v * W);
      const V m = M::where(yv >= S::spliti(0), one, zero);
      const V t = M::where(yv == cc, one, zero);
      const V xv = S::load(x + c * a.len + v * W);
      V p = xv;
      if (a.from_logits) {
        const V logp = xv - lse[v];
        std::memcpy(&p, &ex[(c * nv + v) * W], sizeof(V));
        p = p * inv[v];
        if constexpr (kFocal) sF = sF + masked<M>(t, softmax_focal_term<G, M>(logp, p, ac, gm));
      }
      sD = sD + masked<M>(m, abs_diff<M>(p, t));
      sP = sP + masked<M>(m, p);
      sT = sT + t;
    }
    double* o = out + c * kNumStats;
    o[kStatD] = S::sum(sD);
    o[kStatP] = S::sum(sP);
    o[kStatT] = S::sum(sT);
    o[kStatF] = S::sum(sF);
    o[kStatM] = o[kStatT];
  }
  return bad;
}

// Backward: with g_c = (gD_c sign(p_c - t_c) + gP_c) m (Dice, in probability space),
//   dx_c = p_c (g_c - sum_k g_k p_k)                                 (softmax chain rule)
//        + gF_y m dfocal/dlogp_y ([c == y] - p_c)                    (softmax focal)
template <typename scalar_t, int G, int L>
CVOPS_CPU_INLINE void multiclass_chunk_backward(const double* gstats /*[C, kNumStats]*/,
                                                const scalar_t* x_in, const int64_t* y, int64_t n,
                                                const MulticlassArgs& a_in, bool focal,
                                                scalar_t* dx /*row stride a_in.len*/) {
  using S = SimdT<scalar_t, L>;
  using M = typename S::M;
  using V = typename S::V;
  constexpr int64_t W = S::W;
  const int64_t padded = (n + W - 1) / W * W, nv = padded / W, C = a_in.classes;
  int32_t cls[kPixChunk + 8];
  chunk_targets(y, n, padded, a_in, cls);
  std::vector<scalar_t> buf;
  int64_t stride;
  const scalar_t* x = chunk_view(x_in, n, padded, a_in, buf, stride);
  MulticlassArgs a = a_in;
  a.len = stride;
  const V one = M::c(1), zero = M::c(0), gm = M::c(a.gamma);
  V lse[kPixChunk / W + 1], inv[kPixChunk / W + 1];
  V dot[kPixChunk / W + 1], py[kPixChunk / W + 1], ly[kPixChunk / W + 1], ay[kPixChunk / W + 1],
      gfy[kPixChunk / W + 1];
  // Probabilities of the chunk, as plain floats (a std::vector of SIMD vectors would not be
  // guaranteed its 32-byte alignment), accessed with unaligned copies.
  using lane_t = std::conditional_t<W == 1, double, float>;
  std::vector<lane_t> prob(C * nv * W);
  // prob first holds exp(x - max) per class; p = that * inv is written back in place.
  if (a.from_logits) chunk_softmax_parts<scalar_t, L>(x, padded, a, lse, inv, prob.data());
  for (int64_t v = 0; v < nv; ++v) dot[v] = py[v] = ly[v] = ay[v] = gfy[v] = zero;
  for (int64_t c = 0; c < C; ++c) {
    const V gD = M::c(gstats[c * kNumStats + kStatD]), gP = M::c(gstats[c * kNumStats + kStatP]);
    const V gF = M::c(gstats[c * kNumStats + kStatF]), ac = M::c(a.alpha[c]);
    const auto cc = S::spliti(static_cast<int32_t>(c));
    for (int64_t v = 0; v < nv; ++v) {
      const auto yv = S::loadi(cls + v * W);
      const V m = M::where(yv >= S::spliti(0), one, zero);
      const V t = M::where(yv == cc, one, zero);
      const V xv = S::load(x + c * a.len + v * W);
      V p = xv;
      if (a.from_logits) {
        const V logp = xv - lse[v];
        std::memcpy(&p, &prob[(c * nv + v) * W], sizeof(V));
        p = p * inv[v];
        if (focal) {
          py[v] = py[v] + masked<M>(t, p);
          ly[v] = ly[v] + masked<M>(t, logp);
          ay[v] = ay[v] + t * ac;
          gfy[v] = gfy[v] + t * gF;
        }
      }
      std::memcpy(&prob[(c * nv + v) * W], &p, sizeof(V));
      dot[v] = dot[v] + masked<M>(m, (gD * abs_diff_grad<M>(p, t) + gP) * p);
    }
  }
  for (int64_t v = 0; v < nv; ++v) {
    if (focal) {
      const V m = M::where(S::loadi(cls + v * W) >= S::spliti(0), one, zero);
      gfy[v] = gfy[v] * m * softmax_focal_dlogp<G, M>(ly[v], py[v], ay[v], gm);
    }
  }
  scalar_t tail[W];
  for (int64_t c = 0; c < C; ++c) {
    const V gD = M::c(gstats[c * kNumStats + kStatD]), gP = M::c(gstats[c * kNumStats + kStatP]);
    const auto cc = S::spliti(static_cast<int32_t>(c));
    scalar_t* out = dx + c * a_in.len;
    for (int64_t v = 0; v < nv; ++v) {
      const auto yv = S::loadi(cls + v * W);
      const V m = M::where(yv >= S::spliti(0), one, zero);
      const V t = M::where(yv == cc, one, zero);
      V p;
      std::memcpy(&p, &prob[(c * nv + v) * W], sizeof(V));
      const V g = gD * abs_diff_grad<M>(p, t) + gP;
      V d = a.from_logits ? p * (g - dot[v]) : g;
      if (focal) d = d + gfy[v] * (t - p);
      d = masked<M>(m, d);
      if ((v + 1) * W <= n) {
        S::store(out + v * W, d);
      } else {
        S::store(tail, d);
        for (int64_t j = 0; v * W + j < n; ++j) out[v * W + j] = tail[j];
      }
    }
  }
}

}  // namespace

template <typename scalar_t>
void multiclass_stats(const scalar_t* x, const int64_t* y, int64_t batch, const MulticlassArgs& a,
                      bool focal, double* stats) {
  const int64_t C = a.classes, L = a.len;
  const int64_t chunks = std::max<int64_t>(1, (L + kPixChunk - 1) / kPixChunk);
  std::vector<double> partial(batch * chunks * C * kNumStats, 0.0);
  std::vector<int64_t> bad(batch * chunks, -1);
  dispatch_gamma(a.gamma, [&](auto gtag) {
    constexpr int G = decltype(gtag)::value;
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks, k = task % chunks;
        const int64_t s0 = k * kPixChunk, n = std::min(kPixChunk, L - s0);
        if (n <= 0) continue;
        const scalar_t* xc = x + b * C * L + s0;
        const int64_t* yc = y + b * L + s0;
        double* o = &partial[task * C * kNumStats];
        int64_t r = -1;
        dispatch_isa([&](auto lanes) __attribute__((always_inline)) {
          constexpr int L = decltype(lanes)::value;
          r = focal ? multiclass_chunk_stats<scalar_t, G, true, L>(xc, yc, n, a, o)
                    : multiclass_chunk_stats<scalar_t, G, false, L>(xc, yc, n, a, o);
        });
        if (r >= 0) bad[task] = s0 + r;
      }
    });
  });
  for (int64_t task = 0; task < batch * chunks; ++task) {
    if (bad[task] < 0) continue;
    const int64_t b = task / chunks, s = bad[task];
    TORCH_CHECK_VALUE(false, "cvops: target[", b, ", ", s, "] (flattened) = ", y[b * L + s],
                      " is not a class index in [0, ", C, ")",
                      a.has_ignore ? " nor ignore_index" : "");
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < C * kNumStats; ++j) {
      double s = 0;
      for (int64_t k = 0; k < chunks; ++k) s += partial[(b * chunks + k) * C * kNumStats + j];
      stats[b * C * kNumStats + j] = s;
    }
}

template <typename scalar_t>
void multiclass_stats_backward(const double* gstats, const scalar_t* x, const int64_t* y,
                               int64_t batch, const MulticlassArgs& a, bool focal, scalar_t* dx) {
  const int64_t C = a.classes, L = a.len;
  const int64_t chunks = std::max<int64_t>(1, (L + kPixChunk - 1) / kPixChunk);
  dispatch_gamma(a.gamma, [&](auto gtag) {
    constexpr int G = decltype(gtag)::value;
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks, k = task % chunks;
        const int64_t s0 = k * kPixChunk, n = std::min(kPixChunk, L - s0);
        if (n <= 0) continue;
        dispatch_isa([&](auto lanes) __attribute__((always_inline)) {
          multiclass_chunk_backward<scalar_t, G, decltype(lanes)::value>(
              gstats + b * C * kNumStats, x + b * C * L + s0, y + b * L + s0, n, a, focal,
              dx + b * C * L + s0);
        });
      }
    });
  });
}

template void multiclass_stats<float>(const float*, const int64_t*, int64_t, const MulticlassArgs&,
                                      bool, double*);
template void multiclass_stats<double>(const double*, const int64_t*, int64_t,
                                       const MulticlassArgs&, bool, double*);
template void multiclass_stats<c10::Half>(const c10::Half*, const int64_t*, int64_t,
                                          const MulticlassArgs&, bool, double*);
template void multiclass_stats<c10::BFloat16>(const c10::BFloat16*, const int64_t*, int64_t,
                                              const MulticlassArgs&, bool, double*);
template void multiclass_stats_backward<float>(const double*, const float*, const int64_t*, int64_t,
                                               const MulticlassArgs&, bool, float*);
template void multiclass_stats_backward<double>(const double*, const double*, const int64_t*,
                                                int64_t, const MulticlassArgs&, bool, double*);
template void multiclass_stats_backward<c10::Half>(const double*, const c10::Half*, const int64_t*,
                                                   int64_t, const MulticlassArgs&, bool,
                                                   c10::Half*);
template void multiclass_stats_backward<c10::BFloat16>(const double*, const c10::BFloat16*,
                                                       const int64_t*, int64_t,
                                                       const MulticlassArgs&, bool, c10::BFloat16*);

}  // namespace loss_cpu
}  // namespace cvops
