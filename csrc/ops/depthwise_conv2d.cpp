// Schema of the depthwise convolution ops (kernels live in cpu/, cuda/ and autocast/).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cvops, m) {
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "_depthwise_conv2d_backward_input(Tensor grad, Tensor weight, SymInt batch, "
      "SymInt channels, SymInt height, SymInt width, int[2] stride, int[2] padding, "
      "int[2] dilation) -> Tensor");
  // Returns (grad_weight [C_out, 1, kH, kW], grad_bias [C_out]).
  m.def(
      "_depthwise_conv2d_backward_weight(Tensor grad, Tensor input, int kernel_h, "
      "int kernel_w, int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");
  // Both at once, (grad_input, grad_weight, grad_bias): the forward's autograd calls it when
  // it needs both and no graph of the backward (one pass over the output gradient where the
  // CPU has a fused kernel).
  m.def(
      "_depthwise_conv2d_backward(Tensor grad, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation) -> (Tensor, Tensor, Tensor)");
}
