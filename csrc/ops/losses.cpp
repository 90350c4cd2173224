// Schema of the fused focal / Dice loss ops (kernels live in cpu/ and cuda/).
//
// reduction: 0 none, 1 mean, 2 sum. mode: 0 binary, 1 multilabel, 2 multiclass.
// _loss_stats returns, per (sample, class), the sums the Dice and focal losses are built
// from (see ops/losses.h); the Python wrappers finish the (tiny) rest with PyTorch ops.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cvops, m) {
  m.def(
      "sigmoid_focal_loss(Tensor input, Tensor target, float alpha, float gamma, "
      "int reduction) -> Tensor");
  m.def(
      "_sigmoid_focal_loss_backward(Tensor grad, Tensor input, Tensor target, float alpha, "
      "float gamma, int reduction) -> Tensor");
  // Forward that also returns d(loss)/d(input) for grad_output = 1 (saved for backward).
  m.def(
      "_sigmoid_focal_loss_fused(Tensor input, Tensor target, float alpha, float gamma, "
      "int reduction) -> (Tensor, Tensor)");
  m.def(
      "_loss_stats(Tensor input, Tensor target, Tensor alpha, int mode, bool from_logits, "
      "bool has_ignore, int ignore_index, float gamma, bool focal) -> Tensor");
  m.def(
      "_loss_stats_backward(Tensor grad, Tensor input, Tensor target, Tensor alpha, int mode, "
      "bool from_logits, bool has_ignore, int ignore_index, float gamma, bool focal) -> Tensor");
}
