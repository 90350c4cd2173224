// Fused focal / Dice loss CPU kernels: forward and backward, float/double/half/bfloat16.
//
// SIMD: the vector types, math and dispatch_isa of common/simd.h (GCC/Clang vector extensions,
// 4/8/16 float lanes for SSE2/AVX2/AVX-512, exp/log/log1p as branch-free Cephes polynomials,
// <= 2 ulp). float64 runs the same formulas on scalars (libm).
// half/bfloat16 are widened to float on load; everything accumulates in float (double for
// double) and the final cross-chunk sums in double.
//
// Determinism: every reduction is two-stage. Work is cut into fixed chunks (independent of
// the thread count); each chunk writes its partial sums to its own slot, and the slots are
// then added in index order. Results are bitwise repeatable for any number of threads.
// 8- and 16-lane vectors only ever run inside the AVX2 / AVX-512 functions (everything is
// inlined there), so
// GCC's note that their out-of-line ABI would differ without AVX does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cpu_utils.h"
#include "common/simd.h"
#include "ops/losses.h"
#include "ops/losses_checks.h"

namespace cvops {
namespace {

using namespace loss_math;
using namespace simd;

// Loads and stores per element type: float-like types use L float lanes, double 1 lane.
template <typename scalar_t, int L>
struct SimdT {
  static constexpr int64_t W = L;
  using M = VecMathT<L>;
  using V = typename M::V;
  using IV = typename M::IV;
  static CVOPS_CPU_INLINE V load(const scalar_t* p) {
    V v;
    if constexpr (std::is_same_v<scalar_t, float>) {
      std::memcpy(&v, p, sizeof(v));
    } else {
      for (int i = 0; i < L; ++i) v[i] = static_cast<float>(p[i]);
    }
    return v;
  }
  static CVOPS_CPU_INLINE void store(scalar_t* p, V v) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      std::memcpy(p, &v, sizeof(v));
    } else {
      for (int i = 0; i < L; ++i) p[i] = static_cast<scalar_t>(v[i]);
    }
  }
  static CVOPS_CPU_INLINE IV loadi(const int32_t* p) {
    IV v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static CVOPS_CPU_INLINE IV spliti(int32_t v) { return M::splati(v); }
  static CVOPS_CPU_INLINE float sum(V v) { return M::hsum(v); }
};

template <int L>
struct SimdT<double, L> {
  static constexpr int64_t W = 1;
  using M = ScalarMath<double>;
  using V = double;
  using IV = int32_t;
  static CVOPS_CPU_INLINE V load(const double* p) { return *p; }
  static CVOPS_CPU_INLINE void store(double* p, V v) { *p = v; }
  static CVOPS_CPU_INLINE IV loadi(const int32_t* p) { return *p; }
  static CVOPS_CPU_INLINE IV spliti(int32_t v) { return v; }
  static CVOPS_CPU_INLINE double sum(V v) { return v; }
};

// Copies n < W elements into a zero-padded buffer of W.
template <typename scalar_t, int64_t W>
struct Padded {
  scalar_t v[W];
  CVOPS_CPU_INLINE Padded(const scalar_t* p, int64_t n) {
    for (int64_t i = 0; i < W; ++i) v[i] = i < n ? p[i] : scalar_t(0);
  }
};

// 1 on the first n lanes, 0 on the others.
template <typename S>
CVOPS_CPU_INLINE typename S::V lane_mask(int64_t n) {
  typename S::V v = S::M::c(0);
  if constexpr (S::W == 1) {
    v = n > 0 ? 1.0 : 0.0;
  } else {
    for (int64_t i = 0; i < S::W; ++i) v[i] = i < n ? 1.f : 0.f;
  }
  return v;
}

// v on the lanes where the 0/1 mask m is 1, else 0. A select, not v * m: an ignored position
// (or a class that is not the target) may hold an infinite or NaN term, and 0 * inf = NaN
// would poison the sum. F.cross_entropy skips such positions the same way.
template <typename M, typename V>
CVOPS_CPU_INLINE V masked(V m, V v) {
  return M::where(M::eq(m, M::c(0)), M::c(0), v);
}

template <typename F>
void dispatch_gamma(double gamma, F&& f) {
  if (gamma == 2.0) {
    f(std::integral_constant<int, kGamma2>());
  } else {
    f(std::integral_constant<int, kGammaAny>());
  }
}

constexpr int64_t kRowChunk = 4096;  // elements per partial sum (binary / multilabel)
constexpr int64_t kPixChunk = 256;   // pixels per partial sum (multiclass)

// ---------------------------------------------------------------------------------------
// Sigmoid focal loss, elementwise (reduction='none') and its backward
// ---------------------------------------------------------------------------------------

struct SigmoidFocalParams {
  double a1, a0, gamma;
};

inline SigmoidFocalParams sigmoid_focal_params(double alpha, double gamma) {
  return alpha >= 0 ? SigmoidFocalParams{alpha, 1.0 - alpha, gamma}
                    : SigmoidFocalParams{1.0, 1.0, gamma};
}

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
// Row statistics (binary / multilabel / sigmoid focal reductions): x, t are [R, L]
// ---------------------------------------------------------------------------------------

struct StatsArgs {
  bool from_logits, has_ignore;
  double ignore;
  SigmoidFocalParams fp;
};

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

// ---------------------------------------------------------------------------------------
// Multiclass statistics: x [N, C, L] logits (or probabilities), y [N, L] int64 classes
// ---------------------------------------------------------------------------------------

struct MulticlassArgs {
  int64_t classes, len;
  bool from_logits, has_ignore;
  int64_t ignore;
  double gamma;
  const double* alpha;  // [C]
};

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
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cpu);
  m.impl("_sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cpu);
  m.impl("_sigmoid_focal_loss_fused", &sigmoid_focal_loss_fused_cpu);
  m.impl("_loss_stats", &loss_stats_cpu);
  m.impl("_loss_stats_backward", &loss_stats_backward_cpu);
}

}  // namespace cvops
