// Portable SIMD plumbing for the CPU kernels: L-lane float vectors (GCC/Clang vector
// extensions), branch-free float math on them (exp, log, log1p, rcp, pow, hsum), and
// dispatch_isa, which runs a kernel body in a function compiled for the best ISA the CPU has.
//
// Why not at::vec::Vectorized: extensions are built without CPU_CAPABILITY_* flags, so there it
// is a plain scalar array and its exp/log are scalar libm calls.
//
// Invariants:
// - Everything here is always_inline (CVOPS_CPU_INLINE) and has no target attribute of its
//   own: it takes the ISA of the function it is inlined into. 4 lanes (SSE2, the x86-64
//   baseline) may run anywhere; 8 lanes only inside a CVOPS_TARGET_AVX2 function and 16 lanes
//   only inside a CVOPS_TARGET_AVX512 one, i.e. inside dispatch_isa's callback.
// - For a given lane count the math is deterministic (no run-time-dependent paths) and hsum
//   adds in a fixed pairwise order; results may differ in the last bits between lane counts.
// - The polynomials are the Cephes single-precision forms, <= 2 ulp in their stated domains.
// - Instantiating 8- or 16-lane vectors draws GCC's -Wpsabi note about their out-of-line ABI;
//   it does not apply (they are only ever inlined into functions of the matching ISA), so this
//   header switches that note off for the including file.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <limits>
#include <type_traits>

#include "common/cpu_utils.h"

#define CVOPS_CPU_INLINE inline __attribute__((always_inline))

namespace cvops {
namespace simd {

// L-lane float vectors: L = 4 (one SSE register, the x86-64 baseline) or L = 8 (AVX2; used
// only inside functions compiled for AVX2+FMA, chosen at run time by dispatch_isa).
template <int L>
struct VecTypes;
template <>
struct VecTypes<4> {
  typedef float V __attribute__((vector_size(16)));
  typedef int32_t Mask __attribute__((vector_size(16)));
};
template <>
struct VecTypes<8> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t Mask __attribute__((vector_size(32)));
};
template <>
struct VecTypes<16> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t Mask __attribute__((vector_size(64)));
};

template <int L>
struct VecMathT {
  using V = typename VecTypes<L>::V;
  using Mask = typename VecTypes<L>::Mask;
  using IV = Mask;

  static CVOPS_CPU_INLINE V splat(float v) {
    V r;
    for (int i = 0; i < L; ++i) r[i] = v;
    return r;
  }
  static CVOPS_CPU_INLINE Mask splati(int32_t v) {
    Mask r;
    for (int i = 0; i < L; ++i) r[i] = v;
    return r;
  }
  // The same bits as another type of the same size.
  template <typename To, typename From>
  static CVOPS_CPU_INLINE To bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between sizes");
    To r;
    std::memcpy(&r, &v, sizeof(r));
    return r;
  }
  static CVOPS_CPU_INLINE V as_float(Mask v) { return bits<V>(v); }
  static CVOPS_CPU_INLINE Mask as_int(V v) { return bits<Mask>(v); }
  // Truncating float -> int and back. GCC turns the loops into cvttps2dq / cvtdq2ps under
  // AVX2; the SSE width uses the SSE2 intrinsics (the generic lowering is scalar there).
  static CVOPS_CPU_INLINE Mask to_int(V v) {
#if defined(__SSE2__)
    if constexpr (L == 4) return bits<Mask>(_mm_cvttps_epi32(bits<__m128>(v)));
#endif
    Mask r;
    for (int i = 0; i < L; ++i) r[i] = static_cast<int32_t>(v[i]);
    return r;
  }
  static CVOPS_CPU_INLINE V to_float(Mask v) {
#if defined(__SSE2__)
    if constexpr (L == 4) return bits<V>(_mm_cvtepi32_ps(bits<__m128i>(v)));
#endif
    V r;
    for (int i = 0; i < L; ++i) r[i] = static_cast<float>(v[i]);
    return r;
  }
  // m ? a : b lane-wise for all-ones / all-zeros masks (vector comparisons), bitwise: GCC
  // lowers vector ternaries to scalar code on SSE2.
  static CVOPS_CPU_INLINE V sel(Mask m, V a, V b) {
    return as_float((m & as_int(a)) | (~m & as_int(b)));
  }
  static CVOPS_CPU_INLINE Mask seli(Mask m, Mask a, Mask b) { return (m & a) | (~m & b); }

  static CVOPS_CPU_INLINE V c(double v) { return splat(static_cast<float>(v)); }
  static CVOPS_CPU_INLINE V where(Mask m, V a, V b) { return sel(m, a, b); }
  static CVOPS_CPU_INLINE Mask ge0(V x) { return x >= splat(0.f); }
  static CVOPS_CPU_INLINE Mask gt(V a, V b) { return a > b; }
  static CVOPS_CPU_INLINE Mask eq(V a, V b) { return a == b; }
  static CVOPS_CPU_INLINE V abs(V x) { return as_float(as_int(x) & splati(0x7fffffff)); }
  static CVOPS_CPU_INLINE V max(V a, V b) { return sel(a > b, a, b); }

  // exp(x - n ln 2) for |x - n ln 2| <= ln 2 / 2: the polynomial core of exp.
  static CVOPS_CPU_INLINE V exp_reduced(V x, V n) {
    const V r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    V y = splat(1.9875691500E-4f);
    y = y * r + splat(1.3981999507E-3f);
    y = y * r + splat(8.3334519073E-3f);
    y = y * r + splat(4.1665795894E-2f);
    y = y * r + splat(1.6666665459E-1f);
    y = y * r + splat(5.0000001201E-1f);
    y = y * (r * r) + r + splat(1.f);
    return y;
  }

  // exp(x); 0 below -87.33 (where the result would be subnormal), inf above 88.72.
  static CVOPS_CPU_INLINE V exp(V x) {
    const V xc = sel(x > splat(88.f), splat(88.f), x);
    const V z = xc * splat(1.44269504088896341f) + splat(0.5f);
    Mask n = to_int(z);         // truncates
    n = n + (to_float(n) > z);  // floor: the mask is -1 where truncation rounded up
    const V nf = to_float(n);
    V res = exp_reduced(xc, nf) * as_float((n + splati(127)) << 23);
    res = sel(x < splat(-87.33654475f), splat(0.f), res);
    res = sel(x > splat(88.72283905f), splat(std::numeric_limits<float>::infinity()), res);
    return sel(x != x, x, res);
  }

  // k ln 2 + log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1]: the polynomial core of log.
  static CVOPS_CPU_INLINE V log_reduced(V f, V k) {
    const V z = f * f;
    V y = splat(7.0376836292E-2f);
    y = y * f - splat(1.1514610310E-1f);
    y = y * f + splat(1.1676998740E-1f);
    y = y * f - splat(1.2420140846E-1f);
    y = y * f + splat(1.4249322787E-1f);
    y = y * f - splat(1.6668057665E-1f);
    y = y * f + splat(2.0000714765E-1f);
    y = y * f - splat(2.4999993993E-1f);
    y = y * f + splat(3.3333331174E-1f);
    y = y * f * z;
    y = y - k * splat(2.12194440e-4f) - splat(0.5f) * z;
    return f + y + k * splat(0.693359375f);
  }

  // exp(x) for x <= 0 (the exp(-|x|) of the sigmoids): 0 below -87.33, NaN stays NaN.
  // n = round(x / ln 2) comes from the 1.5 * 2^23 trick (its low mantissa bits hold n), which
  // also gives 2^n by shifting them into the exponent field; no float <-> int conversions.
  static CVOPS_CPU_INLINE V exp_nonpos(V x) {
    const V magic = splat(12582912.f);  // 1.5 * 2^23
    const V t = x * splat(1.44269504088896341f) + magic;
    const V nf = t - magic;
    const V res = exp_reduced(x, nf) * as_float((as_int(t) + splati(127)) << 23);
    return sel(x < splat(-87.33654475f), splat(0.f), res);
  }

  // log(x) for x >= 0 (subnormals included); -inf at 0, NaN below 0.
  static CVOPS_CPU_INLINE V log(V x) {
    const Mask small = x < splat(1.17549435e-38f);
    const V xs = sel(small, x * splat(8388608.f), x);
    const Mask bits = as_int(xs);
    Mask e = ((bits >> 23) & splati(0xff)) - splati(126);
    e = seli(small, e - splati(23), e);
    V m = as_float((bits & splati(0x7fffff)) | splati(126 << 23));  // [0.5, 1)
    const Mask lt = m < splat(0.707106781186547524f);
    e = e + lt;
    m = sel(lt, m + m - splat(1.f), m - splat(1.f));
    V res = log_reduced(m, to_float(e));
    const float inf = std::numeric_limits<float>::infinity();
    res = sel(x == splat(0.f), splat(-inf), res);
    res = sel(x == splat(inf), splat(inf), res);
    return sel((x < splat(0.f)) | (x != x), splat(std::numeric_limits<float>::quiet_NaN()), res);
  }

  // log1p(x) for x >= 0, accurate for tiny x: log(u) * x / (u - 1) with u = 1 + x.
  static CVOPS_CPU_INLINE V log1p(V x) {
    const V u = splat(1.f) + x;
    const V d = u - splat(1.f);
    return sel(d == splat(0.f), x, log(u) * (x / d));
  }

  // log1p(x) for x in [0, 1] (the exp(-|x|) of the sigmoids), with no division: 1 + x is
  // 2^k (1 + f) with f = x itself for k = 0 (exact: tiny x keeps full precision) and
  // f = (x - 1) / 2 for k = 1, f in [sqrt(1/2) - 1, sqrt(2) - 1] either way. NaN stays NaN.
  static CVOPS_CPU_INLINE V log1p_unit(V x) {
    const Mask big = x > splat(0.41421356237309505f);
    const V f = sel(big, (x - splat(1.f)) * splat(0.5f), x);
    return log_reduced(f, sel(big, splat(1.f), splat(0.f)));
  }

  // The hardware reciprocal estimate. The 8- and 16-lane forms only run inside the AVX2 and
  // AVX-512 functions; inline assembly because GCC refuses to inline ISA-specific intrinsics
  // into these (target-less) helpers, even though they are always inlined into such a function.
  static CVOPS_CPU_INLINE V rcp_estimate(V x) {
#if defined(__x86_64__) && defined(__GNUC__)
    V r;
    if constexpr (L == 4) {
      asm("rcpps %1, %0" : "=x"(r) : "x"(x));
    } else if constexpr (L == 8) {
      asm("vrcpps %1, %0" : "=x"(r) : "x"(x));
    } else {
      asm("vrcp14ps %1, %0" : "=v"(r) : "v"(x));
    }
    return r;
#else
    return splat(1.f) / x;
#endif
  }

  // 1 / x for x in [1, 2] or NaN (the 1 + exp(-|x|) of the sigmoids): the hardware estimate
  // and one Newton step (<= 2 ulp; the AVX-512 estimate has 14 bits, the SSE/AVX one 12).
  static CVOPS_CPU_INLINE V rcp(V x) {
    const V r = rcp_estimate(x);
    return r * (splat(2.f) - x * r);
  }

  // x^y for x >= 0.
  static CVOPS_CPU_INLINE V pow(V x, V y) {
    const V inf = splat(std::numeric_limits<float>::infinity());
    const V at_zero = sel(y == splat(0.f), splat(1.f), sel(y > splat(0.f), splat(0.f), inf));
    return sel(x > splat(0.f), exp(y * log(x)), at_zero);
  }

  // Horizontal sum in a fixed order (pairwise over halves).
  static CVOPS_CPU_INLINE float hsum(V v) {
    float b[L];
    std::memcpy(b, &v, sizeof(b));
    for (int w = L / 2; w > 0; w /= 2)
      for (int i = 0; i < w; ++i) b[i] += b[i + w];
    return b[0];
  }
};

// Runs f(std::integral_constant<int, L>()) with L = 16 in a function compiled for AVX-512
// (F/DQ/BW/VL) when cpu_has_avx512(), else with L = 8 in one compiled for AVX2+FMA when
// cpu_has_avx2(), else with L = 4 (SSE2 baseline). f must be always_inline (so its body, and
// the always_inline math it calls, is compiled for the caller's ISA). Both checks are read
// once and honour CVOPS_DISABLE_AVX512=1 / CVOPS_DISABLE_AVX2=1 (common/cpu_utils.h), which
// force the lower paths (the tests run all three). dispatch_isa<MaxIsa::kAvx2> stops at AVX2.
#if CVOPS_HAS_AVX2_TARGET
#define CVOPS_HAVE_AVX2_DISPATCH 1
template <typename F>
CVOPS_TARGET_AVX2 void call_avx2(const F& f) {
  f(std::integral_constant<int, 8>());
}

template <typename F>
CVOPS_TARGET_AVX512 void call_avx512(const F& f) {
  f(std::integral_constant<int, 16>());
}
#endif

template <typename F>
void call_baseline(const F& f) {
  f(std::integral_constant<int, 4>());
}

// The highest ISA a caller of dispatch_isa has a body for: kAvx2 for kernels tuned on 4/8
// lanes that gain nothing from an AVX-512 clone (it never runs L = 16 there).
enum class MaxIsa { kAvx2, kAvx512 };

template <MaxIsa kMax = MaxIsa::kAvx512, typename F>
inline void dispatch_isa(const F& f) {
#if defined(CVOPS_HAVE_AVX2_DISPATCH)
  if constexpr (kMax == MaxIsa::kAvx512) {
    if (cpu_has_avx512()) return call_avx512(f);
  }
  if (cpu_has_avx2()) return call_avx2(f);
#endif
  call_baseline(f);
}

template <typename F>
CVOPS_CPU_INLINE void dispatch_bool(bool flag, const F& f) {
  if (flag) {
    f(std::true_type());
  } else {
    f(std::false_type());
  }
}

}  // namespace simd
}  // namespace cvops
