// Schema of the NMS ops (kernels live in cpu/nms_kernel.cpp and cuda/nms_kernel.cu).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cvops, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // Fixed-size output: (indices padded with -1 to max_output, number kept as a 0-d tensor).
  m.def(
      "nms_fixed(Tensor boxes, Tensor scores, float iou_threshold, int max_output) -> "
      "(Tensor, Tensor)");
  // method: 0 linear, 1 gaussian. Returns (kept indices, their decayed scores).
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, float iou_threshold, float sigma, "
      "float score_threshold, int method) -> (Tensor, Tensor)");
}
