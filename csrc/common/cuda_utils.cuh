// Small CUDA helpers shared by the kernels: grid-stride loops with 64-bit indices, launch
// sizes, and whether the current stream is capturing a CUDA graph.
#pragma once

#include <algorithm>
#include <cstdint>

#include <c10/cuda/CUDAGraphsC10Utils.h>

// Grid-stride loop; 64-bit so tensors past 2^31 elements are indexed correctly.
#define CVOPS_CUDA_KERNEL_LOOP(i, n)                                                     \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Same with an explicit index type (int32_t when the loop is known to fit, see below).
#define CVOPS_CUDA_KERNEL_LOOP_T(index_t, i, n)                                          \
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<index_t>(blockDim.x) * gridDim.x)

// Runs the lambda with `index_t` = int32_t when `n` (plus one grid stride) fits in 32 bits,
// else int64_t. Element offsets computed inside kernels stay 64-bit either way.
#define CVOPS_DISPATCH_INDEX_TYPE(n, ...) \
  [&] {                                   \
    if ((n) < (int64_t(1) << 30)) {       \
      using index_t = int32_t;            \
      return __VA_ARGS__();               \
    } else {                              \
      using index_t = int64_t;            \
      return __VA_ARGS__();               \
    }                                     \
  }()

namespace cvops {

constexpr int kCudaThreads = 256;

// (k, c, ph, pw) of a flat index into a contiguous [K, C, PH, PW] tensor (the RoI ops'
// outputs). index_t is int32_t when the tensor is small enough (CVOPS_DISPATCH_INDEX_TYPE):
// 64-bit division costs several times more than the 32-bit kind.
template <typename index_t>
struct BinIndex {
  int64_t k, c, ph, pw;
  __device__ BinIndex(index_t index, int64_t channels, int64_t pooled_height,
                      int64_t pooled_width) {
    const index_t PW = static_cast<index_t>(pooled_width);
    const index_t PH = static_cast<index_t>(pooled_height);
    const index_t C = static_cast<index_t>(channels);
    pw = index % PW;
    index /= PW;
    ph = index % PH;
    index /= PH;
    c = index % C;
    k = index / C;
  }
};

inline unsigned int cuda_blocks(int64_t n, int threads = kCudaThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 30));
}

// Host syncs (e.g. for input validation) are illegal while a graph is being captured.
inline bool cuda_stream_is_capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

}  // namespace cvops
