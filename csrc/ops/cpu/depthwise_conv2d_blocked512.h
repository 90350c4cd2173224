// The depthwise CPU kernels' AVX-512 channel-blocked correlation for small planes (float32,
// NCHW, stride 1, dilation 1): 16 channels of one image transposed into one vector per pixel,
// every tap one FMA per output pixel with inputs and weights in registers, transposed back
// (see depthwise_conv2d_blocked512.cpp). The masked path (depthwise_conv2d_masked.cpp) calls
// it for the forward and the stride-1 input gradient and runs the channels it leaves.
#pragma once

#include <cstdint>

namespace cvops {

// dst[n][c] (dst_h x dst_w) = bias[c] (or 0) + sum over taps (kh, kw) of
// taps[c][kh * kw_count + kw] * src[n][c](r + kh - pad_h, c + kw - pad_w), zero outside the
// src plane (src_h x src_w). All planes dense NCHW, float32.
struct Blocked512Job {
  const float* src;
  int64_t src_h, src_w;
  float* dst;
  int64_t dst_h, dst_w;
  const float* taps;  // [channels][kh_count * kw_count]
  const float* bias;  // [channels] or nullptr
  int64_t kh_count, kw_count, pad_h, pad_w;
  int64_t batch, channels;
};

// Whether the blocked correlation runs a job: an AVX-512 CPU (cpu_has_avx512()), at least 16
// channels, kernels up to 7x7 and small planes (the rule and its measurements are in the
// .cpp).
bool blocked512_applies(const Blocked512Job& job);

// Computes the channels [0, channels / 16 * 16) of every image and returns that count; the
// rest are the caller's.
int64_t blocked512_correlate(const Blocked512Job& job);

}  // namespace cvops
