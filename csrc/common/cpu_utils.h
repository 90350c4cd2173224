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
