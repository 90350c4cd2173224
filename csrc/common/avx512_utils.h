// Helpers for the AVX-512 kernel bodies (CVOPS_TARGET_AVX512 functions; call them only when
// cpu_has_avx512() says so). Include only where <immintrin.h> may be included.
#pragma once

#include "common/cpu_utils.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>

#include <type_traits>
#include <utility>

// For a lambda inside an AVX-512 body: a lambda is a function of its own and does not take
// its enclosing function's target, so it needs the attribute to use AVX-512 intrinsics.
#define CVOPS_AVX512_LAMBDA \
  __attribute__((always_inline, target("avx2,fma,avx512f,avx512dq,avx512bw,avx512vl")))

namespace cvops {

// f(std::integral_constant<int, 0>()), ..., f(std::integral_constant<int, N - 1>()): a loop
// whose index is a compile-time constant in the body (GCC does not always unroll a loop fully
// on its own; an array indexed by a run-time value then stays in memory, not in registers).
template <typename F, int... I>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void unrolled(F&& f,
                                                             std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>()), ...);
}
template <int N, typename F>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void unrolled(F&& f) {
  unrolled(f, std::make_integer_sequence<int, N>());
}

// The 16 lanes summed in index order (a store and a scalar loop: for once-per-result sums
// whose order must not depend on how the work was split).
CVOPS_TARGET_AVX512 inline float sum_lanes_in_order(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float sum = 0.f;
  for (int l = 0; l < 16; ++l) sum += lanes[l];
  return sum;
}

}  // namespace cvops

#endif
