// The depthwise CPU kernels' AVX-512 row kernels (float32, NCHW, stride 1, dilation 1,
// square kernels): a source row's kw shifted vectors are loaded once and serve the kh output
// rows that read it (see depthwise_conv2d_rows512.cpp). Rows up to 32 wide walk one 16-wide
// column chunk of several images at a time; wider rows a band of chunks of one image. The
// masked path (depthwise_conv2d_masked.cpp) tries them first: the correlation (3x3, 5x5,
// 7x7) for the forward and the stride-1 input gradient, the weight gradient for 3x3 on rows
// up to 64.
#pragma once

#include "ops/cpu/depthwise_conv2d_plane_correlation.h"

namespace cvops {

// Whether the row correlation runs a job: an AVX-512 CPU and a square 3x3/5x5/7x7 kernel.
bool rows512_applies(const PlaneCorrelation& job);

// Computes every channel of every image.
void rows512_correlate(const PlaneCorrelation& job);

// The weight and bias gradient of a stride-1, undilated K x K depthwise convolution:
// result[c][kh * K + kw] = sum over n, r, c' of grad[n][c](r, c') * input[n][c](r + kh - pad_h,
// c' + kw - pad_w) (zero outside the input), result[c][K * K] = sum of grad[n][c]. Planes
// dense NCHW, float32; result [channels][K * K + 1].
struct PlaneWeightGrad {
  const float* grad;
  int64_t grad_h, grad_w;
  const float* input;
  int64_t input_h, input_w;
  int64_t kernel, pad_h, pad_w;
  int64_t batch, channels;
  float* result;
};

// Whether rows512_weight_grad runs a job: an AVX-512 CPU, a 3x3 kernel, rows up to 64 wide.
bool rows512_weight_grad_applies(const PlaneWeightGrad& job);

// Each channel's sums in a fixed order (images, then rows, then lanes), the same for any
// thread count.
void rows512_weight_grad(const PlaneWeightGrad& job);

}  // namespace cvops
