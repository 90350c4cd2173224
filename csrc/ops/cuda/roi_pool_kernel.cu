// RoI Pool CUDA kernels: forward (output + argmax), backward with float atomics (default),
// and a deterministic backward with fixed-point integer atomics (common/fixed_point.cuh).
//
// The bin math (rounded box, bin ranges, max update) is in ops/roi_pool.h, shared with the
// CPU kernels. Only indexing, launches and the accumulation strategy live here.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "common/cuda_utils.cuh"
#include "common/fixed_point.cuh"
#include "ops/roi_pool.h"
#include "ops/roi_pool_checks.h"

namespace cvops {
namespace {

using namespace roi_pool_math;

struct Shape {
  int64_t batch, channels, height, width, pooled_height, pooled_width;
};

// Exact widening of a box coordinate to double (half/bfloat16 through float).
template <typename scalar_t>
__device__ inline double to_double(scalar_t v) {
  return static_cast<double>(static_cast<at::opmath_type<scalar_t>>(v));
}

// One thread per output element (k, c, ph, pw) of contiguous [K, C, PH, PW] outputs.
template <typename scalar_t, typename index_t>
__global__ void roi_pool_forward_kernel(index_t total, const scalar_t* __restrict__ input,
                                        const scalar_t* __restrict__ rois, double spatial_scale,
                                        Shape s, scalar_t* __restrict__ output,
                                        int32_t* __restrict__ argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  CVOPS_CUDA_KERNEL_LOOP_T(index_t, index, total) {
    const BinIndex<index_t> bin(index, s.channels, s.pooled_height, s.pooled_width);
    const int64_t k = bin.k, c = bin.c, ph = bin.ph, pw = bin.pw;
    const scalar_t* roi = rois + k * 5;
    const RoiBox box = roi_box(to_double(roi[0]), to_double(roi[1]), to_double(roi[2]),
                               to_double(roi[3]), to_double(roi[4]), spatial_scale, s.batch);
    // Invalid: a non-finite box, or a batch index naming no image (it only gets here when
    // validation was skipped under graph capture; common/roi_batch_index.h).
    if (!box.valid) {
      output[index] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      argmax[index] = -1;
      continue;
    }
    const BinRange hr = bin_range<acc_t>(ph, box.start_h, box.roi_h, s.pooled_height, s.height);
    const BinRange wr = bin_range<acc_t>(pw, box.start_w, box.roi_w, s.pooled_width, s.width);
    if (hr.end <= hr.begin || wr.end <= wr.begin) {
      output[index] = static_cast<scalar_t>(0);
      argmax[index] = -1;
      continue;
    }
    const scalar_t* plane = input + (box.batch_index * s.channels + c) * s.height * s.width;
    int64_t best = hr.begin * s.width + wr.begin;
    acc_t m = static_cast<acc_t>(plane[best]);
    for (int64_t h = hr.begin; h < hr.end; ++h) {
      for (int64_t w = wr.begin; w < wr.end; ++w) {
        const acc_t v = static_cast<acc_t>(plane[h * s.width + w]);
        if (takes_over(v, m)) {
          m = v;
          best = h * s.width + w;
        }
      }
    }
    output[index] = static_cast<scalar_t>(m);
    argmax[index] = static_cast<int32_t>(best);
  }
}

// Default backward: float atomics into an op-math buffer (float for half/bfloat16).
template <typename acc_t>
struct AtomicAdd {
  acc_t* data;
  __device__ void operator()(int64_t i, acc_t v) const { atomicAdd(data + i, v); }
};

// One thread per grad element (k, c, ph, pw); grad may be strided, argmax is contiguous.
template <typename scalar_t, typename index_t, typename Accumulate>
__global__ void roi_pool_backward_kernel(index_t total, const scalar_t* __restrict__ grad,
                                         int64_t gs0, int64_t gs1, int64_t gs2, int64_t gs3,
                                         const int32_t* __restrict__ argmax,
                                         const scalar_t* __restrict__ rois, Shape s,
                                         Accumulate accumulate) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane_size = s.height * s.width;
  CVOPS_CUDA_KERNEL_LOOP_T(index_t, index, total) {
    const int64_t idx = argmax[index];
    // Empty bins (-1) and indices outside the plane (a hand-made argmax) get no gradient.
    if (idx < 0 || idx >= plane_size) continue;
    const BinIndex<index_t> bin(index, s.channels, s.pooled_height, s.pooled_width);
    const int64_t k = bin.k, c = bin.c, ph = bin.ph, pw = bin.pw;
    const scalar_t* roi = rois + k * 5;
    // Invalid RoIs (non-finite box, bad batch index) get no gradient, as on the CPU.
    const int64_t n = roi_image(to_double(roi[0]), to_double(roi[1]), to_double(roi[2]),
                                to_double(roi[3]), to_double(roi[4]), s.batch);
    if (n < 0) continue;
    const acc_t g = static_cast<acc_t>(grad[k * gs0 + c * gs1 + ph * gs2 + pw * gs3]);
    accumulate((n * s.channels + c) * plane_size + idx, g);
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input,
                                                         const at::Tensor& rois,
                                                         double spatial_scale,
                                                         int64_t pooled_height,
                                                         int64_t pooled_width) {
  check_roi_pool_forward_args(input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  if (!cuda_stream_is_capturing()) check_roi_batch_indices("cvops.roi_pool", rois, input.size(0));
  const int64_t channels = input.size(1);
  at::Tensor output =
      at::empty({rois.size(0), channels, pooled_height, pooled_width}, input.options());
  at::Tensor argmax = at::empty({rois.size(0), channels, pooled_height, pooled_width},
                                input.options().dtype(at::kInt));
  const int64_t total = output.numel();
  if (total == 0) return {output, argmax};
  const Shape s{input.size(0), channels, input.size(2), input.size(3), pooled_height, pooled_width};
  at::Tensor in = input.contiguous();
  at::Tensor rois_c = rois.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_roi_pool_forward_cuda", [&] {
        CVOPS_DISPATCH_INDEX_TYPE(total, [&] {
          roi_pool_forward_kernel<scalar_t, index_t>
              <<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
                  static_cast<index_t>(total), in.const_data_ptr<scalar_t>(),
                  rois_c.const_data_ptr<scalar_t>(), spatial_scale, s,
                  output.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<int32_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                  const at::Tensor& argmax, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width) {
  check_roi_pool_backward_args(grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                               batch_size, channels, height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  if (!cuda_stream_is_capturing())
    check_roi_batch_indices("cvops._roi_pool_backward", rois, batch_size);
  const auto sizes = std::vector<int64_t>{batch_size, channels, height, width};
  const int64_t total = grad.numel();
  if (total == 0 || batch_size * channels * height * width == 0) {
    return at::zeros(sizes, grad.options());
  }
  const Shape s{batch_size, channels, height, width, pooled_height, pooled_width};
  at::Tensor rois_c = rois.contiguous();
  at::Tensor argmax_c = argmax.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();

  if (!at::globalContext().deterministicAlgorithms()) {
    const auto acc_type = at::toOpMathType(grad.scalar_type());
    at::Tensor buf = at::zeros(sizes, grad.options().dtype(acc_type));
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_roi_pool_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const AtomicAdd<acc_t> add{buf.mutable_data_ptr<acc_t>()};
          CVOPS_DISPATCH_INDEX_TYPE(total, [&] {
            roi_pool_backward_kernel<scalar_t, index_t>
                <<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
                    static_cast<index_t>(total), grad.const_data_ptr<scalar_t>(), grad.stride(0),
                    grad.stride(1), grad.stride(2), grad.stride(3),
                    argmax_c.const_data_ptr<int32_t>(), rois_c.const_data_ptr<scalar_t>(), s, add);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
    return buf.to(grad.scalar_type());
  }

  // Deterministic path: each (RoI, bin) routes one grad value to one pixel, so any pixel
  // receives at most K * PH * PW contributions of magnitude <= max|grad|.
  FixedPointBuffer fixed(grad, static_cast<double>(rois.size(0) * pooled_height * pooled_width),
                         sizes);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_roi_pool_backward_det_cuda", [&] {
        const FixedPointAdd add = fixed.accumulator();
        CVOPS_DISPATCH_INDEX_TYPE(total, [&] {
          roi_pool_backward_kernel<scalar_t, index_t>
              <<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
                  static_cast<index_t>(total), grad.const_data_ptr<scalar_t>(), grad.stride(0),
                  grad.stride(1), grad.stride(2), grad.stride(3),
                  argmax_c.const_data_ptr<int32_t>(), rois_c.const_data_ptr<scalar_t>(), s, add);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return fixed.result(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CUDA, m) {
  m.impl("roi_pool", &roi_pool_forward_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace cvops
