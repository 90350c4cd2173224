// The depthwise CPU kernels' fused AVX-512 backward: the input, weight and bias gradients of a
// 3x3, stride-1, padding-1 (output the input's size), undilated float32 NCHW convolution with
// rows of at most 15, in one pass (see depthwise_conv2d_backward512.cpp). The
// _depthwise_conv2d_backward op runs it when it applies, else the two backward kernels.
#pragma once

#include <cstdint>

namespace cvops {

// Planes dense NCHW, float32; grad, input and grad_input [batch][channels][height][width],
// weight [channels][9], weight_and_bias_grad [channels][10] (the 9 taps, then the bias).
struct PlaneBackward {
  const float* grad;
  const float* input;
  const float* weight;
  float* grad_input;
  float* weight_and_bias_grad;
  int64_t batch, channels, height, width;
};

// Whether the fused kernel runs a job: an AVX-512 CPU and rows of at most 15 (the caller
// checks the rest: 3x3, stride 1, padding 1, dilation 1, multiplier 1, float32, NCHW).
bool backward512_applies(const PlaneBackward& job);

// Both gradients of every channel; each channel's weight and bias sums in a fixed order
// (images, rows, a fixed lane tree), the same for any thread count.
void backward512(const PlaneBackward& job);

}  // namespace cvops
