// RoI Align CUDA kernels: forward, backward with float atomics (default), and a
// deterministic backward with fixed-point integer atomics.
//
// The sampling math (geometry, taps, corner weights) is in ops/roi_align.h, shared with the
// CPU kernels. Only indexing, launches and the accumulation strategy live here.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "common/cuda_utils.cuh"
#include "common/fixed_point.cuh"
#include "ops/roi_align.h"
#include "ops/roi_align_checks.h"

namespace cvops {
namespace {

using namespace roi_align_math;

struct Shape {
  int64_t batch, channels, height, width, pooled_height, pooled_width, sampling_ratio;
  bool aligned;
};

template <typename acc_t, typename scalar_t>
__device__ inline RoiGeometry<acc_t> geometry_of(const scalar_t* roi, acc_t spatial_scale,
                                                 const Shape& s) {
  return roi_geometry<acc_t>(static_cast<acc_t>(roi[0]), static_cast<acc_t>(roi[1]),
                             static_cast<acc_t>(roi[2]), static_cast<acc_t>(roi[3]),
                             static_cast<acc_t>(roi[4]), spatial_scale, s.aligned, s.pooled_height,
                             s.pooled_width, s.sampling_ratio, s.batch);
}

// One thread per output element (k, c, ph, pw) of a contiguous [K, C, PH, PW] output.
template <typename scalar_t, typename index_t>
__global__ void roi_align_forward_kernel(index_t total, const scalar_t* __restrict__ input,
                                         const scalar_t* __restrict__ rois,
                                         at::opmath_type<scalar_t> spatial_scale, Shape s,
                                         scalar_t* __restrict__ output) {
  using acc_t = at::opmath_type<scalar_t>;
  CVOPS_CUDA_KERNEL_LOOP_T(index_t, index, total) {
    const BinIndex<index_t> bin(index, s.channels, s.pooled_height, s.pooled_width);
    const int64_t k = bin.k, c = bin.c, ph = bin.ph, pw = bin.pw;
    const auto g = geometry_of<acc_t>(rois + k * 5, spatial_scale, s);
    // Invalid: a non-finite box, or a batch index naming no image (it only gets here when
    // validation was skipped under graph capture; common/roi_batch_index.h).
    if (!g.valid) {
      output[index] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      continue;
    }
    const scalar_t* plane = input + (g.batch_index * s.channels + c) * s.height * s.width;
    acc_t sum = 0;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const auto ty = axis_tap(sample_coord(g.start_h, ph, g.bin_h, iy, g.grid_h), s.height);
      if (!ty.inside) continue;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const auto tx = axis_tap(sample_coord(g.start_w, pw, g.bin_w, ix, g.grid_w), s.width);
        if (!tx.inside) continue;
        sum += interpolate<acc_t>(plane, bilinear_corners(ty, tx, s.width, int64_t(1)));
      }
    }
    output[index] = static_cast<scalar_t>(sum / g.count);
  }
}

// Default backward: float atomics into an op-math buffer (float for half/bfloat16).
template <typename acc_t>
struct AtomicAdd {
  acc_t* data;
  __device__ void operator()(int64_t i, acc_t v) const { atomicAdd(data + i, v); }
};

// The deterministic backward uses FixedPointAdd (common/fixed_point.cuh).

// One thread per grad element (k, c, ph, pw); grad may be strided.
template <typename scalar_t, typename index_t, typename Accumulate>
__global__ void roi_align_backward_kernel(index_t total, const scalar_t* __restrict__ grad,
                                          int64_t gs0, int64_t gs1, int64_t gs2, int64_t gs3,
                                          const scalar_t* __restrict__ rois,
                                          at::opmath_type<scalar_t> spatial_scale, Shape s,
                                          Accumulate accumulate) {
  using acc_t = at::opmath_type<scalar_t>;
  CVOPS_CUDA_KERNEL_LOOP_T(index_t, index, total) {
    const BinIndex<index_t> bin(index, s.channels, s.pooled_height, s.pooled_width);
    const int64_t k = bin.k, c = bin.c, ph = bin.ph, pw = bin.pw;
    const auto g = geometry_of<acc_t>(rois + k * 5, spatial_scale, s);
    if (!g.valid) continue;
    const acc_t gv = static_cast<acc_t>(grad[k * gs0 + c * gs1 + ph * gs2 + pw * gs3]) / g.count;
    const int64_t plane = (g.batch_index * s.channels + c) * s.height * s.width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const auto ty = axis_tap(sample_coord(g.start_h, ph, g.bin_h, iy, g.grid_h), s.height);
      if (!ty.inside) continue;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const auto tx = axis_tap(sample_coord(g.start_w, pw, g.bin_w, ix, g.grid_w), s.width);
        if (!tx.inside) continue;
        const auto cr = bilinear_corners(ty, tx, s.width, int64_t(1));
        accumulate(plane + cr.o1, gv * cr.w1);
        accumulate(plane + cr.o2, gv * cr.w2);
        accumulate(plane + cr.o3, gv * cr.w3);
        accumulate(plane + cr.o4, gv * cr.w4);
      }
    }
  }
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t sampling_ratio, bool aligned) {
  check_roi_align_forward_args(input, rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio);
  const c10::cuda::CUDAGuard guard(input.device());
  if (!cuda_stream_is_capturing()) check_roi_batch_indices("cvops.roi_align", rois, input.size(0));
  const int64_t channels = input.size(1);
  at::Tensor output =
      at::empty({rois.size(0), channels, pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const Shape s{input.size(0), channels,     input.size(2),  input.size(3),
                pooled_height, pooled_width, sampling_ratio, aligned};
  at::Tensor in = input.contiguous();
  at::Tensor rois_c = rois.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_roi_align_forward_cuda", [&] {
        CVOPS_DISPATCH_INDEX_TYPE(total, [&] {
          roi_align_forward_kernel<scalar_t, index_t>
              <<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
                  static_cast<index_t>(total), in.const_data_ptr<scalar_t>(),
                  rois_c.const_data_ptr<scalar_t>(),
                  static_cast<at::opmath_type<scalar_t>>(spatial_scale), s,
                  output.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned) {
  check_roi_align_backward_args(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                                channels, height, width, sampling_ratio);
  const c10::cuda::CUDAGuard guard(grad.device());
  if (!cuda_stream_is_capturing())
    check_roi_batch_indices("cvops._roi_align_backward", rois, batch_size);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  const auto sizes = std::vector<int64_t>{batch_size, channels, height, width};
  const int64_t total = grad.numel();
  if (total == 0 || batch_size * channels * height * width == 0) {
    return at::zeros(sizes, grad.options());
  }
  const Shape s{batch_size,    channels,     height,         width,
                pooled_height, pooled_width, sampling_ratio, aligned};
  at::Tensor rois_c = rois.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();

  if (!at::globalContext().deterministicAlgorithms()) {
    at::Tensor buf = at::zeros(sizes, grad.options().dtype(acc_type));
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_roi_align_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          CVOPS_DISPATCH_INDEX_TYPE(total, [&] {
            roi_align_backward_kernel<scalar_t, index_t>
                <<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
                    static_cast<index_t>(total), grad.const_data_ptr<scalar_t>(), grad.stride(0),
                    grad.stride(1), grad.stride(2), grad.stride(3),
                    rois_c.const_data_ptr<scalar_t>(), static_cast<acc_t>(spatial_scale), s,
                    AtomicAdd<acc_t>{buf.mutable_data_ptr<acc_t>()});
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
    return buf.to(grad.scalar_type());
  }

  // Deterministic path. Each (RoI, bin) adds at most max|grad| to any pixel, so
  // |sum| <= K * PH * PW * max|grad|.
  FixedPointBuffer fixed(grad, static_cast<double>(rois.size(0) * pooled_height * pooled_width),
                         sizes);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_roi_align_backward_det_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const FixedPointAdd add = fixed.accumulator();
        CVOPS_DISPATCH_INDEX_TYPE(total, [&] {
          roi_align_backward_kernel<scalar_t, index_t>
              <<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
                  static_cast<index_t>(total), grad.const_data_ptr<scalar_t>(), grad.stride(0),
                  grad.stride(1), grad.stride(2), grad.stride(3), rois_c.const_data_ptr<scalar_t>(),
                  static_cast<acc_t>(spatial_scale), s, add);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return fixed.result(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace cvops
