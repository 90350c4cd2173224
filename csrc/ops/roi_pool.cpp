// Schema of the RoI Pool ops (kernels live in cpu/, cuda/ and autocast/).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cvops, m) {
  // Returns the pooled output and the int32 argmax (index into the H x W plane, -1 for an
  // empty bin) that the backward routes the gradient through.
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width) -> (Tensor, Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
      "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, "
      "SymInt height, SymInt width) -> Tensor");
}
