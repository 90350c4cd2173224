// Host-side argument checks of the loss ops, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include "ops/losses.h"

namespace cvops {

inline void check_sigmoid_focal_args(const char* op, const at::Tensor& input,
                                     const at::Tensor& target, double gamma, int64_t reduction) {
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op,
                   ": expected floating-point inputs, got ", input.scalar_type());
  TORCH_CHECK_TYPE(target.scalar_type() == input.scalar_type(), op,
                   ": targets must have the dtype of inputs (", input.scalar_type(), "), got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(input.sizes() == target.sizes(), op,
                    ": inputs and targets must have the same shape, got ", input.sizes(), " and ",
                    target.sizes());
  TORCH_CHECK(input.device() == target.device(), op,
              ": inputs and targets must be on the same device, got ", input.device(), " and ",
              target.device());
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0, op,
                    ": gamma must be finite and non-negative, got ", gamma);
  TORCH_CHECK_VALUE(reduction >= loss_math::kReduceNone && reduction <= loss_math::kReduceSum, op,
                    ": unknown reduction code ", reduction);
}

inline void check_sigmoid_focal_backward_args(const char* op, const at::Tensor& grad,
                                              const at::Tensor& input, int64_t reduction) {
  if (reduction == loss_math::kReduceNone) {
    TORCH_CHECK_VALUE(grad.sizes() == input.sizes(), op, ": expected grad of shape ", input.sizes(),
                      ", got ", grad.sizes());
  } else {
    TORCH_CHECK_VALUE(grad.numel() == 1, op, ": expected a scalar grad, got ", grad.sizes());
  }
  TORCH_CHECK(grad.device() == input.device(), op, ": grad and inputs must be on the same device");
}

// input [N, C, S]; target [N, C, S] of input's dtype (binary, multilabel) or int64 [N, S]
// (multiclass); alpha [C] (multiclass) or [1] (sigmoid; < 0 means no weighting).
inline void check_loss_stats_args(const char* op, const at::Tensor& input, const at::Tensor& target,
                                  const at::Tensor& alpha, int64_t mode, bool from_logits,
                                  double gamma, bool focal) {
  using namespace loss_math;
  TORCH_CHECK_VALUE(mode >= kModeBinary && mode <= kModeMulticlass, op, ": unknown mode code ",
                    mode);
  TORCH_CHECK_VALUE(input.dim() == 3, op, ": expected input of shape [N, C, S], got ",
                    input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op,
                   ": expected a floating-point input, got ", input.scalar_type());
  TORCH_CHECK(input.device() == target.device() && input.device() == alpha.device(), op,
              ": input, target and alpha must be on the same device");
  if (mode == kModeMulticlass) {
    TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, op,
                     ": multiclass targets must be int64 class indices, got ",
                     target.scalar_type());
    TORCH_CHECK_VALUE(
        target.dim() == 2 && target.size(0) == input.size(0) && target.size(1) == input.size(2), op,
        ": expected target of shape [", input.size(0), ", ", input.size(2), "], got ",
        target.sizes());
    TORCH_CHECK_VALUE(alpha.dim() == 1 && alpha.numel() == input.size(1), op,
                      ": expected alpha of shape [", input.size(1), "], got ", alpha.sizes());
  } else {
    TORCH_CHECK_TYPE(target.scalar_type() == input.scalar_type(), op,
                     ": target must have the dtype of input (", input.scalar_type(), "), got ",
                     target.scalar_type());
    TORCH_CHECK_VALUE(target.sizes() == input.sizes(), op,
                      ": input and target must have the same shape, got ", input.sizes(), " and ",
                      target.sizes());
    TORCH_CHECK_VALUE(alpha.dim() == 1 && alpha.numel() == 1, op,
                      ": expected alpha of shape [1], got ", alpha.sizes());
  }
  TORCH_CHECK_TYPE(at::isFloatingType(alpha.scalar_type()), op,
                   ": alpha must be a floating-point tensor, got ", alpha.scalar_type());
  TORCH_CHECK_VALUE(!focal || from_logits, op, ": the focal term needs logits (from_logits)");
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0, op,
                    ": gamma must be finite and non-negative, got ", gamma);
}

// _loss_stats_backward: the grad of the statistics, [N, C, kNumStats] for input [N, C, S].
inline void check_loss_stats_grad(const char* op, const at::Tensor& grad, const at::Tensor& input) {
  const int64_t N = input.size(0), C = input.size(1);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == N && grad.size(1) == C &&
                        grad.size(2) == loss_math::kNumStats,
                    op, ": expected grad of shape [", N, ", ", C, ", ", loss_math::kNumStats,
                    "], got ", grad.sizes());
}

}  // namespace cvops
