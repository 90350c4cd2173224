// The depthwise CPU kernels' AVX-512 stride-2 row kernels (float32, NCHW, 3x3, stride 2 along
// both axes, dilation 1): the even and odd input columns are separated in registers with one
// permute per 16 outputs, and an input row's vectors are computed once for the two output
// rows that read it (see depthwise_conv2d_stride2_512.cpp). The masked path
// (depthwise_conv2d_masked.cpp) tries them first.
#pragma once

#include <cstdint>

namespace cvops {

// A 3x3, stride-2 depthwise convolution's planes: input [batch][channels][in_h][in_w],
// output [batch][channels][out_h][out_w], dense NCHW float32; weight [channels][9].
struct Stride2Planes {
  const float* input;
  int64_t in_h, in_w;
  int64_t out_h, out_w;
  int64_t pad_h, pad_w;
  int64_t batch, channels;
};

// Whether the stride-2 kernels run a call with these planes (an AVX-512 CPU; the widths they
// are measured faster on: the rule is in the .cpp).
bool stride2_512_applies(const Stride2Planes& planes);

// output = bias (or 0) + the convolution of input with weight.
void stride2_512_forward(const Stride2Planes& planes, const float* weight, const float* bias,
                         float* output);

// grad_input [batch][channels][in_h][in_w] from grad [batch][channels][out_h][out_w]: every
// element written.
void stride2_512_input_grad(const Stride2Planes& planes, const float* grad, const float* weight,
                            float* grad_input);

// result [channels][10]: the nine taps' gradients (sum over images and outputs of grad times
// the input the tap reads), then the bias gradient (sum of grad), in a fixed order.
void stride2_512_weight_grad(const Stride2Planes& planes, const float* grad, float* result);

}  // namespace cvops
