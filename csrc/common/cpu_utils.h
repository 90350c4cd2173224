// Helpers for the CPU kernels.
#pragma once

// Function multiversioning: define a function twice, once with CVOPS_TARGET_DEFAULT and once
// with CVOPS_TARGET_AVX2, and the loader picks the AVX2 body on CPUs that have it (GCC/Clang
// ifunc dispatch), so hot loops get 8-wide vectors without raising the build's minimum CPU.
// Where that is unavailable only the default body is compiled.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    (!defined(__clang__) || __clang_major__ >= 14)
#define CVOPS_HAS_MULTIVERSIONING 1
#define CVOPS_TARGET_DEFAULT __attribute__((target("default")))
#define CVOPS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define CVOPS_HAS_MULTIVERSIONING 0
#define CVOPS_TARGET_DEFAULT
#endif

#if defined(__GNUC__)
#define CVOPS_ALWAYS_INLINE __attribute__((always_inline))
#else
#define CVOPS_ALWAYS_INLINE
#endif

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace cvops {

// Like at::parallel_for, but threads take chunks of `grain` items from a shared counter
// instead of one fixed slice each, so a thread that the OS deschedules (a loaded machine, an
// uneven workload) does not hold up the others. f(begin, end) must not depend on which thread
// runs it.
template <typename F>
void parallel_for_dynamic(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / grain);
  if (threads <= 1 || at::in_parallel_region()) {
    f(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t s = next.fetch_add(grain); s < n; s = next.fetch_add(grain)) {
        f(s, std::min(n, s + grain));
      }
    }
  });
}

}  // namespace cvops
