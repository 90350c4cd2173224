// Helpers for the AVX-512 kernel bodies (CVOPS_TARGET_AVX512 functions; call them only when
// cpu_has_avx512() says so). Include only where <immintrin.h> may be included.
#pragma once

#include "common/cpu_utils.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

// For a lambda inside an AVX-512 body: a lambda is a function of its own and does not take
// its enclosing function's target, so it needs the attribute to use AVX-512 intrinsics.
#define CVOPS_AVX512_LAMBDA \
  __attribute__((always_inline, target("avx2,fma,avx512f,avx512dq,avx512bw,avx512vl")))

namespace cvops {

// Floats per AVX-512 vector: the lanes of every AVX-512 kernel.
constexpr int64_t kLanes = 16;

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

// The 16 lanes summed by a fixed tree (halves, then quarters, ...): the order is fixed by the
// code, not by how the work was split, so a once-per-result sum is the same for any thread
// count. (A store and a scalar loop in lane order cost ~15 dependent adds per result, a
// tenth of a 7x7 plane's weight gradient.)
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline float sum_lanes(__m512 v) {
  const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
  quarter = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
  quarter = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));
  return _mm_cvtss_f32(quarter);
}

// The _mm512_permutexvar_ps indices of a rotation by `by` lanes: lane l takes lane
// (l + by) mod 16.
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline __m512i rotation(int64_t by) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return _mm512_and_si512(_mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int>(by))),
                          _mm512_set1_epi32(15));
}

// Prefetches into L1 the lines holding floats [p, p + n): the AVX-512 kernels' masked loads do
// not train the hardware prefetchers, so they fetch the planes or rows they read next.
inline void prefetch_floats(const float* p, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * int64_t(sizeof(float)); b += 64) _mm_prefetch(bytes + b, _MM_HINT_T0);
}

// Copies n floats from src to dst, the whole 64-byte lines of dst with non-temporal stores
// and the partial lines at either end with masked ordinary ones. src must sit at the same
// offset within a line as dst (a scratch copy placed to match), so its loads are aligned.
CVOPS_TARGET_AVX512 inline void stream_floats(float* dst, const float* src, int64_t n) {
  const int64_t head =
      std::min<int64_t>(n, ((64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63) / sizeof(float));
  if (head > 0) {
    const __mmask16 m = lanes_below(head);
    _mm512_mask_storeu_ps(dst, m, _mm512_maskz_loadu_ps(m, src));
  }
  int64_t i = head;
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_load_ps(src + i));
  if (i < n) {
    const __mmask16 m = lanes_below(n - i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
  }
}

}  // namespace cvops

#endif
