// The stride-1, undilated correlation that the depthwise CPU kernels' small-plane AVX-512
// paths compute (the row kernel, depthwise_conv2d_rows512.cpp, and the channel-blocked one,
// depthwise_conv2d_blocked512.cpp). The forward is one; so is the stride-1 input gradient:
// the output gradient correlated with the flipped taps, the padding mirrored.
#pragma once

#include <cstdint>

namespace cvops {

// dst[n][c] (dst_h x dst_w) = bias[c] (or 0) + sum over taps (kh, kw) of
// taps[c][kh * kw_count + kw] * src[n][c](r + kh - pad_h, c + kw - pad_w), zero outside the
// src plane (src_h x src_w). All planes dense NCHW, float32.
struct PlaneCorrelation {
  const float* src;
  int64_t src_h, src_w;
  float* dst;
  int64_t dst_h, dst_w;
  const float* taps;  // [channels][kh_count * kw_count]
  const float* bias;  // [channels] or nullptr
  int64_t kh_count, kw_count, pad_h, pad_w;
  int64_t batch, channels;
};

}  // namespace cvops
