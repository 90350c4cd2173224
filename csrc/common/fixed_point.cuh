// Deterministic gradient accumulation on CUDA with fixed-point integer atomics, shared by
// the backward kernels (RoI Align, RoI Pool).
//
// Each contribution is rounded to a fixed-point int64 (a power-of-two scale chosen from
// max|grad| so that no sum can overflow; common/fixed_point_scale.h) and added with integer
// atomics, which are associative, so the result is bitwise identical in any order (not yet
// run on a GPU). The precision is absolute: about max|grad| * bound * 2^-61 per contribution
// (fixed_point_scale.h). Everything stays on the device: no host sync.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "common/fixed_point_scale.h"

namespace cvops {

// Kernel-side accumulator: call as accumulate(index, value).
struct FixedPointAdd {
  unsigned long long* data;
  const double* scale;
  __device__ void operator()(int64_t i, double v) const {
    const long long q = __double2ll_rn(v * *scale);
    atomicAdd(data + i, static_cast<unsigned long long>(q));
  }
};

// scale = fixed_point_scale(max_abs, bound), on the device (one thread). static: each .cu
// that includes this header gets its own copy.
static __global__ void fixed_point_scale_kernel(const double* max_abs, double bound,
                                                double* scale) {
  *scale = fixed_point_scale(*max_abs, bound);
}

// Host side: the int64 buffer and the device-resident scale.
struct FixedPointBuffer {
  at::Tensor fixed;    // int64, the shape of the result
  at::Tensor scale;    // double scalar: fixed = round(value * scale)
  at::Tensor max_abs;  // double scalar: max |grad|

  // bound: the most contributions of magnitude <= max|grad| any one element can receive.
  FixedPointBuffer(const at::Tensor& grad, double bound, at::IntArrayRef sizes) {
    max_abs = grad.abs().amax().to(at::kDouble);
    scale = at::empty({}, max_abs.options());
    fixed_point_scale_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(
        max_abs.const_data_ptr<double>(), bound, scale.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fixed = at::zeros(sizes, grad.options().dtype(at::kLong));
  }

  FixedPointAdd accumulator() {
    return FixedPointAdd{reinterpret_cast<unsigned long long*>(fixed.mutable_data_ptr<int64_t>()),
                         scale.const_data_ptr<double>()};
  }

  // A non-finite upstream gradient makes the whole result NaN rather than silently wrong.
  at::Tensor result(at::ScalarType dtype) const {
    at::Tensor inv_scale =
        at::where(at::isfinite(max_abs), scale.reciprocal(),
                  at::full({}, std::numeric_limits<double>::quiet_NaN(), max_abs.options()));
    return (fixed.to(at::kDouble) * inv_scale).to(dtype);
  }
};

}  // namespace cvops
