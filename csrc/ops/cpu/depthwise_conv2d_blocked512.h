// The depthwise CPU kernels' AVX-512 channel-blocked correlation for small planes (float32,
// NCHW, stride 1, dilation 1): 16 channels of one image transposed into one vector per pixel,
// every tap one FMA per output pixel with inputs and weights in registers, transposed back
// (see depthwise_conv2d_blocked512.cpp). The masked path (depthwise_conv2d_masked.cpp) calls
// it for the forward and the stride-1 input gradient and runs the channels it leaves.
#pragma once

#include <cstdint>

#include "ops/cpu/depthwise_conv2d_plane_correlation.h"

namespace cvops {

// Whether the blocked correlation runs a job: an AVX-512 CPU (cpu_has_avx512()), at least 16
// channels, kernels up to 7x7 and small planes (the rule and its measurements are in the
// .cpp).
bool blocked512_applies(const PlaneCorrelation& job);

// Computes the channels [0, channels / 16 * 16) of every image and returns that count; the
// rest are the caller's.
int64_t blocked512_correlate(const PlaneCorrelation& job);

}  // namespace cvops
