// Portability macros for math shared by the CPU and CUDA kernels.
//
// Functions marked CVOPS_HOST_DEVICE are compiled by g++ for the CPU kernels and by nvcc
// for both sides, so the CPU tests exercise the exact math the GPU runs.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CVOPS_HOST_DEVICE __host__ __device__
#else
#define CVOPS_HOST_DEVICE
#endif

namespace cvops {

template <typename T>
CVOPS_HOST_DEVICE inline bool is_finite(T x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

template <typename T>
CVOPS_HOST_DEVICE inline T max_of(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
CVOPS_HOST_DEVICE inline T min_of(T a, T b) {
  return a < b ? a : b;
}

}  // namespace cvops
