// Explicitly rounded arithmetic for the shared host/device math whose rounding decides a
// count or an index (RoI Align's sample count and taps, NMS's IoU comparison).
//
// nvcc contracts a * b + c into one fused multiply-add (FFMA/DFMA, rounded once) by default;
// g++ does the same whenever FMA instructions are enabled (-mfma, -march=native, an
// `__attribute__((target("fma")))` function), since GNU C++ defaults to -ffp-contract=fast.
// The two sides would then round differently: with aligned RoI Align at spatial_scale 1/14 a
// width of exactly 7.0 becomes 7.0000019 under FMA and ceil(roi_w / 7) doubles the sample
// count. These helpers round each operation once on both sides:
//  * device: the _rn intrinsics, which nvcc never contracts;
//  * host: __builtin_assoc_barrier, which keeps GCC (>= 12) and Clang (>= 15) from fusing
//    the product into a following add. A host compiler without it may only build this
//    header where it cannot emit FMA instructions: that is checked below, at compile time.
// tests/csrc/test_shared_headers.py compiles these headers with -mfma and checks the
// results equal the unfused ones.
#pragma once

#include "common/host_device.h"

#if !defined(__CUDA_ARCH__)
#if defined(__has_builtin)
#if __has_builtin(__builtin_assoc_barrier)
#define CVOPS_ROUNDED(x) __builtin_assoc_barrier(x)
#endif
#endif
#if !defined(CVOPS_ROUNDED)
#if defined(__FMA__) || defined(__FP_FAST_FMA) || defined(__FP_FAST_FMAF)
#error \
    "cvops: this compiler can contract a*b+c into an FMA and has no __builtin_assoc_barrier; build without FMA flags or with GCC >= 12 / Clang >= 15"
#endif
#define CVOPS_ROUNDED(x) (x)
#endif
#endif  // !__CUDA_ARCH__

namespace cvops {

// a * b, a + b and a - b, each rounded once to T (float or double).
template <typename T>
CVOPS_HOST_DEVICE inline T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float))
    return __fmul_rn(a, b);
  else
    return __dmul_rn(a, b);
#else
  return CVOPS_ROUNDED(a * b);
#endif
}

template <typename T>
CVOPS_HOST_DEVICE inline T add_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float))
    return __fadd_rn(a, b);
  else
    return __dadd_rn(a, b);
#else
  return CVOPS_ROUNDED(a + b);
#endif
}

template <typename T>
CVOPS_HOST_DEVICE inline T sub_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float))
    return __fsub_rn(a, b);
  else
    return __dsub_rn(a, b);
#else
  return CVOPS_ROUNDED(a - b);
#endif
}

}  // namespace cvops
