// Helpers for the CPU kernels.
#pragma once

// CVOPS_TARGET_AVX2 compiles one function for AVX2+FMA without raising the build's minimum
// CPU; call it only when cpu_has_avx2() says so (see bin_max in the RoI Pool CPU kernel).
// CVOPS_HAS_AVX2_TARGET is 0 where that is unavailable, and only the baseline body exists.
#if defined(__x86_64__) && defined(__GNUC__) && (!defined(__clang__) || __clang_major__ >= 9)
#define CVOPS_HAS_AVX2_TARGET 1
#define CVOPS_TARGET_AVX2 __attribute__((target("avx2,fma")))
// AVX-512 (F/DQ/BW/VL) clone for the elementwise kernels that gain from 16 lanes and 32
// registers; call it only when cpu_has_avx512() says so.
#define CVOPS_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512dq,avx512bw,avx512vl")))
#else
#define CVOPS_HAS_AVX2_TARGET 0
#define CVOPS_TARGET_AVX2
#define CVOPS_TARGET_AVX512
#endif

#if defined(__GNUC__)
#define CVOPS_ALWAYS_INLINE __attribute__((always_inline))
#else
#define CVOPS_ALWAYS_INLINE
#endif

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace cvops {

// Whether the AVX2 bodies may run: the CPU has AVX2 and FMA, and the environment variable
// CVOPS_DISABLE_AVX2 is unset or "0" (set it to test the baseline bodies). Read once.
inline bool cpu_has_avx2() {
#if CVOPS_HAS_AVX2_TARGET
  static const bool ok = [] {
    const char* off = std::getenv("CVOPS_DISABLE_AVX2");
    if (off != nullptr && off[0] != '\0' && !(off[0] == '0' && off[1] == '\0')) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

// Whether the AVX-512 bodies may run: cpu_has_avx2() holds, the CPU has AVX-512 F/DQ/BW/VL,
// and CVOPS_DISABLE_AVX512 is unset or "0" (set it to test the AVX2 bodies on such a CPU).
inline bool cpu_has_avx512() {
#if CVOPS_HAS_AVX2_TARGET
  static const bool ok = [] {
    if (!cpu_has_avx2()) return false;
    const char* off = std::getenv("CVOPS_DISABLE_AVX512");
    if (off != nullptr && off[0] != '\0' && !(off[0] == '0' && off[1] == '\0')) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }();
  return ok;
#else
  return false;
#endif
}

// A zeroed, 64-byte aligned scratch buffer of n vectors V (a GCC vector-extension type or an
// __m512; std::vector does not see the alignment of such a type used as a template argument).
template <typename V>
class VecBuffer {
 public:
  explicit VecBuffer(int64_t n) {
    const size_t bytes = (std::max<int64_t>(n, 1) * sizeof(V) + 63) / 64 * 64;
    data_ = static_cast<V*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data_ != nullptr, "cvops: out of memory for a ", bytes, "-byte scratch buffer");
    std::memset(static_cast<void*>(data_), 0, bytes);
  }
  ~VecBuffer() { std::free(data_); }
  VecBuffer(const VecBuffer&) = delete;
  VecBuffer& operator=(const VecBuffer&) = delete;
  V* data() { return data_; }
  V& operator[](int64_t i) { return data_[i]; }

 private:
  V* data_;
};

// Whether a kernel writing `bytes` of output should write it with non-temporal stores: an
// output larger than the writing threads' share of the L3 (a 32 MiB L3 per 8 cores on this CPU
// family: 4 MiB per thread) does not stay cached for its reader anyway, and streaming skips
// the read-for-ownership of every line, a third of the memory traffic (measured 1.2-1.4x on
// the depthwise [8,144,56,56] and [8,32,112,112] forward and input gradient).
inline bool output_streams(int64_t bytes) {
  constexpr int64_t kBytesPerThread = int64_t(4) << 20;
  return bytes >= kBytesPerThread * std::max(1, at::get_num_threads());
}

// Items per parallel chunk for items of `work` multiply-adds each: at least 2^16 multiply-adds
// (~20 us) per chunk, so that a thread's share is worth waking it (measured on the depthwise
// kernels: [8,960,7,7] forward 0.42 -> 0.21 ms against 2^22).
inline int64_t parallel_grain(int64_t work) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work));
}

// The 16-lane mask of lanes [0, n) (n may be <= 0 or >= 16), for AVX-512 masked loads and
// stores of float vectors.
inline uint16_t lanes_below(int64_t n) {
  return n >= 16 ? uint16_t(0xFFFF) : n <= 0 ? uint16_t(0) : uint16_t((1u << n) - 1);
}

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
