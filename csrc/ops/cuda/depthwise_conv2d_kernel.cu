// Depthwise 2-D convolution CUDA kernels: forward, input gradient, weight/bias gradient.
//
//  * Tiled kernel (3x3/5x5/7x7, stride 1 or 2, dilation 1): a block computes a TH x TW tile
//    of one output plane from an input tile staged in shared memory, weights in registers.
//    The same kernel computes the stride-1 input gradient as a correlation of the output
//    gradient with the flipped kernel (summing the multiplier's output channels).
//  * General kernels (any kernel size, stride, dilation, padding): one thread per output
//    (forward) or per input pixel (input gradient), window bounds from ops/depthwise_conv2d.h.
//  * Weight/bias gradient: one block per (output channel, tap) reduces over batch and space
//    with a fixed-shape shared-memory tree. No atomics: bitwise deterministic.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "common/cuda_utils.cuh"
#include "ops/depthwise_conv2d.h"
#include "ops/depthwise_conv2d_checks.h"

namespace cvops {
namespace {

using namespace depthwise_math;

constexpr int kTileW = 32, kTileH = 8;  // outputs per block (one per thread)

// Output plane c (of out_channels) sums `sources` source planes: source j reads channel
// (c * sources + j) / divisor of src and weight row c * sources + j (flipped if flip).
struct TileShape {
  int64_t batch, out_channels, src_channels, src_h, src_w, out_h, out_w, pad_h, pad_w;
  int64_t sources, divisor, tiles_w, tiles_h;
  bool flip;
};

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kTileW* kTileH)
    tiled_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ weight,
                 const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, TileShape s,
                 int64_t total_blocks) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int IW = (kTileW - 1) * S + K, IH = (kTileH - 1) * S + K;
  __shared__ acc_t tile[IH * IW];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTileW + tx;
  const int64_t tiles = s.tiles_w * s.tiles_h;
  for (int64_t block = blockIdx.x; block < total_blocks; block += gridDim.x) {
    const int64_t plane = block / tiles, t = block % tiles;
    const int64_t n = plane / s.out_channels, c = plane % s.out_channels;
    const int64_t oh0 = (t / s.tiles_w) * kTileH, ow0 = (t % s.tiles_w) * kTileW;
    const int64_t ih0 = oh0 * S - s.pad_h, iw0 = ow0 * S - s.pad_w;
    const int64_t oh = oh0 + ty, ow = ow0 + tx;
    acc_t sum = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    for (int64_t j = 0; j < s.sources; ++j) {
      const int64_t row = c * s.sources + j;
      const scalar_t* plane_in = src + (n * s.src_channels + row / s.divisor) * s.src_h * s.src_w;
      for (int i = tid; i < IH * IW; i += kTileW * kTileH) {
        const int64_t ih = ih0 + i / IW, iw = iw0 + i % IW;
        tile[i] = (ih >= 0 && ih < s.src_h && iw >= 0 && iw < s.src_w)
                      ? static_cast<acc_t>(plane_in[ih * s.src_w + iw])
                      : acc_t(0);
      }
      acc_t w[K * K];
      const scalar_t* wp = weight + row * K * K;
#pragma unroll
      for (int k = 0; k < K * K; ++k) w[k] = static_cast<acc_t>(wp[s.flip ? K * K - 1 - k : k]);
      __syncthreads();
#pragma unroll
      for (int kh = 0; kh < K; ++kh)
#pragma unroll
        for (int kw = 0; kw < K; ++kw)
          sum += w[kh * K + kw] * tile[(ty * S + kh) * IW + tx * S + kw];
      __syncthreads();  // the tile is refilled by the next source or block
    }
    if (oh < s.out_h && ow < s.out_w)
      out[(plane * s.out_h + oh) * s.out_w + ow] = static_cast<scalar_t>(sum);
  }
}

struct Geometry {
  int64_t batch, channels, multiplier, height, width, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
};

Geometry geometry_of(const DepthwiseParams& p) {
  return {p.batch,    p.channels, p.multiplier, p.height,   p.width,
          p.kernel_h, p.kernel_w, p.stride_h,   p.stride_w, p.pad_h,
          p.pad_w,    p.dil_h,    p.dil_w,      p.out_h,    p.out_w};
}

// One thread per output element of a contiguous [N, C * M, oH, oW] output.
template <typename scalar_t>
__global__ void forward_general_kernel(int64_t total, const scalar_t* __restrict__ input,
                                       const scalar_t* __restrict__ weight,
                                       const scalar_t* __restrict__ bias, Geometry g,
                                       scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C_out = g.channels * g.multiplier;
  CVOPS_CUDA_KERNEL_LOOP(index, total) {
    const int64_t ow = index % g.ow;
    const int64_t oh = (index / g.ow) % g.oh;
    const int64_t co = (index / g.ow / g.oh) % C_out;
    const int64_t n = index / g.ow / g.oh / C_out;
    const scalar_t* x = input + (n * g.channels + co / g.multiplier) * g.height * g.width;
    const scalar_t* w = weight + co * g.kh * g.kw;
    int64_t kh0, kh1, kw0, kw1;
    tap_range(oh, g.kh, g.sh, g.ph, g.dh, g.height, &kh0, &kh1);
    tap_range(ow, g.kw, g.sw, g.pw, g.dw, g.width, &kw0, &kw1);
    acc_t sum = bias != nullptr ? static_cast<acc_t>(bias[co]) : acc_t(0);
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      const int64_t ih = input_index(oh, kh, g.sh, g.ph, g.dh);
      for (int64_t kw = kw0; kw < kw1; ++kw) {
        const int64_t iw = input_index(ow, kw, g.sw, g.pw, g.dw);
        sum += static_cast<acc_t>(w[kh * g.kw + kw]) * static_cast<acc_t>(x[ih * g.width + iw]);
      }
    }
    out[index] = static_cast<scalar_t>(sum);
  }
}

// One thread per input-gradient element of a contiguous [N, C, H, W] result.
template <typename scalar_t>
__global__ void backward_input_general_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                              const scalar_t* __restrict__ weight, Geometry g,
                                              scalar_t* __restrict__ grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C_out = g.channels * g.multiplier;
  CVOPS_CUDA_KERNEL_LOOP(index, total) {
    const int64_t iw = index % g.width;
    const int64_t ih = (index / g.width) % g.height;
    const int64_t ci = (index / g.width / g.height) % g.channels;
    const int64_t n = index / g.width / g.height / g.channels;
    acc_t sum = 0;
    for (int64_t m = 0; m < g.multiplier; ++m) {
      const int64_t co = ci * g.multiplier + m;
      const scalar_t* go = grad + (n * C_out + co) * g.oh * g.ow;
      const scalar_t* w = weight + co * g.kh * g.kw;
      for (int64_t kh = 0; kh < g.kh; ++kh) {
        const int64_t oh = source_output(ih, kh, g.sh, g.ph, g.dh, g.oh);
        if (oh < 0) continue;
        for (int64_t kw = 0; kw < g.kw; ++kw) {
          const int64_t ow = source_output(iw, kw, g.sw, g.pw, g.dw, g.ow);
          if (ow < 0) continue;
          sum += static_cast<acc_t>(w[kh * g.kw + kw]) * static_cast<acc_t>(go[oh * g.ow + ow]);
        }
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// Block b = co * (KK + 1) + tap: tap < KK is weight tap (kh, kw), tap == KK is the bias.
// Each thread sums a fixed, strided subset of (n, oh, ow), then a fixed tree adds the
// threads' sums: the result does not depend on scheduling.
constexpr int kReduceThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
    backward_weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                           Geometry g, scalar_t* __restrict__ grad_weight,
                           scalar_t* __restrict__ grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kReduceThreads];
  const int64_t KK = g.kh * g.kw, C_out = g.channels * g.multiplier;
  const int64_t co = blockIdx.x / (KK + 1), tap = blockIdx.x % (KK + 1);
  const bool is_bias = tap == KK;
  const int64_t kh = is_bias ? 0 : tap / g.kw, kw = is_bias ? 0 : tap % g.kw;
  const int64_t ci = co / g.multiplier, plane = g.oh * g.ow;
  const int64_t total = g.batch * plane;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < total; i += kReduceThreads) {
    const int64_t n = i / plane, r = i % plane, oh = r / g.ow, ow = r % g.ow;
    const acc_t go = static_cast<acc_t>(grad[(n * C_out + co) * plane + r]);
    if (is_bias) {
      sum += go;
      continue;
    }
    const int64_t ih = input_index(oh, kh, g.sh, g.ph, g.dh);
    const int64_t iw = input_index(ow, kw, g.sw, g.pw, g.dw);
    if (ih >= 0 && ih < g.height && iw >= 0 && iw < g.width)
      sum += go * static_cast<acc_t>(input[((n * g.channels + ci) * g.height + ih) * g.width + iw]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (is_bias)
      grad_bias[co] = static_cast<scalar_t>(partial[0]);
    else
      grad_weight[co * KK + tap] = static_cast<scalar_t>(partial[0]);
  }
}

// Launches the tiled kernel for (K, S) in {3, 5, 7} x {1, 2}; false when not covered.
template <typename scalar_t>
bool launch_tiled(int64_t K, int64_t S, const scalar_t* src, const scalar_t* weight,
                  const scalar_t* bias, scalar_t* out, TileShape s, cudaStream_t stream) {
  s.tiles_w = (s.out_w + kTileW - 1) / kTileW;
  s.tiles_h = (s.out_h + kTileH - 1) / kTileH;
  const int64_t total = s.batch * s.out_channels * s.tiles_w * s.tiles_h;
  const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(total, 1 << 30));
  const dim3 block(kTileW, kTileH);
#define CVOPS_DW_TILED(KV, SV)                                                                    \
  if (K == KV && S == SV) {                                                                       \
    tiled_kernel<scalar_t, KV, SV><<<grid, block, 0, stream>>>(src, weight, bias, out, s, total); \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                               \
    return true;                                                                                  \
  }
  CVOPS_DW_TILED(3, 1)
  CVOPS_DW_TILED(3, 2)
  CVOPS_DW_TILED(5, 1)
  CVOPS_DW_TILED(5, 2)
  CVOPS_DW_TILED(7, 1)
  CVOPS_DW_TILED(7, 2)
#undef CVOPS_DW_TILED
  return false;
}

bool tiled_forward_ok(const DepthwiseParams& p) {
  return p.kernel_h == p.kernel_w && p.stride_h == p.stride_w && p.dil_h == 1 && p.dil_w == 1 &&
         (p.kernel_h == 3 || p.kernel_h == 5 || p.kernel_h == 7) &&
         (p.stride_h == 1 || p.stride_h == 2);
}

at::Tensor depthwise_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation) {
  const auto p = check_depthwise_forward_args(input, weight, bias, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto format = depthwise_result_format(input);
  at::Tensor output = at::empty({p.batch, p.out_channels(), p.out_h, p.out_w}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output.contiguous(format);
  at::Tensor in = input.contiguous();
  at::Tensor w = weight.contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_depthwise_conv2d_cuda", [&] {
        const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
        bool done = false;
        if (tiled_forward_ok(p)) {
          const TileShape s{p.batch,
                            p.out_channels(),
                            p.channels,
                            p.height,
                            p.width,
                            p.out_h,
                            p.out_w,
                            p.pad_h,
                            p.pad_w,
                            /*sources=*/1,
                            p.multiplier,
                            0,
                            0,
                            /*flip=*/false};
          done = launch_tiled<scalar_t>(p.kernel_h, p.stride_h, in.const_data_ptr<scalar_t>(),
                                        w.const_data_ptr<scalar_t>(), bp,
                                        output.mutable_data_ptr<scalar_t>(), s, stream);
        }
        if (!done) {
          forward_general_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
              total, in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
              geometry_of(p), output.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return format == at::MemoryFormat::Contiguous ? output : output.contiguous(format);
}

at::Tensor depthwise_conv2d_backward_input_cuda(const at::Tensor& grad, const at::Tensor& weight,
                                                int64_t batch, int64_t channels, int64_t height,
                                                int64_t width, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_input_args(grad, weight, batch, channels, height, width,
                                                     stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto format = depthwise_result_format(grad);
  at::Tensor grad_input = at::empty({batch, channels, height, width}, grad.options());
  const int64_t total = grad_input.numel();
  if (total == 0) return grad_input.contiguous(format);
  at::Tensor g = grad.contiguous();
  at::Tensor w = weight.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_depthwise_conv2d_bwd_input_cuda", [&] {
        bool done = false;
        // Stride 1: a correlation of grad with the flipped kernel, padded by K - 1 - pad.
        if (tiled_forward_ok(p) && p.stride_h == 1) {
          const TileShape s{p.batch,
                            p.channels,
                            p.out_channels(),
                            p.out_h,
                            p.out_w,
                            p.height,
                            p.width,
                            p.kernel_h - 1 - p.pad_h,
                            p.kernel_w - 1 - p.pad_w,
                            /*sources=*/p.multiplier,
                            /*divisor=*/1,
                            0,
                            0,
                            /*flip=*/true};
          done = launch_tiled<scalar_t>(p.kernel_h, 1, g.const_data_ptr<scalar_t>(),
                                        w.const_data_ptr<scalar_t>(), nullptr,
                                        grad_input.mutable_data_ptr<scalar_t>(), s, stream);
        }
        if (!done) {
          backward_input_general_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
              total, g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), geometry_of(p),
              grad_input.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return format == at::MemoryFormat::Contiguous ? grad_input : grad_input.contiguous(format);
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward_weight_cuda(
    const at::Tensor& grad, const at::Tensor& input, int64_t kernel_h, int64_t kernel_w,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_weight_args(grad, input, kernel_h, kernel_w, stride,
                                                      padding, dilation);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t C_out = p.out_channels(), KK = kernel_h * kernel_w;
  if (p.batch == 0) {
    return {at::zeros({C_out, 1, kernel_h, kernel_w}, input.options()),
            at::zeros({C_out}, input.options())};
  }
  at::Tensor grad_weight = at::empty({C_out, 1, kernel_h, kernel_w}, input.options());
  at::Tensor grad_bias = at::empty({C_out}, input.options());
  at::Tensor g = grad.contiguous();
  at::Tensor x = input.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = C_out * (KK + 1);
  TORCH_CHECK(blocks < (int64_t(1) << 31), "cvops._depthwise_conv2d_backward_weight: too many ",
              "channels x taps (", blocks, ")");
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_depthwise_conv2d_bwd_weight_cuda", [&] {
        backward_weight_kernel<scalar_t>
            <<<static_cast<unsigned int>(blocks), kReduceThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), geometry_of(p),
                grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_weight, grad_bias};
}

// Both gradients: the two kernels above, one after the other.
std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_args(grad, input, weight, stride, padding, dilation);
  at::Tensor grad_input = depthwise_conv2d_backward_input_cuda(
      grad, weight, p.batch, p.channels, p.height, p.width, stride, padding, dilation);
  auto [grad_weight, grad_bias] = depthwise_conv2d_backward_weight_cuda(
      grad, input, p.kernel_h, p.kernel_w, stride, padding, dilation);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CUDA, m) {
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
  m.impl("depthwise_conv2d", &depthwise_conv2d_forward_cuda);
  m.impl("_depthwise_conv2d_backward_input", &depthwise_conv2d_backward_input_cuda);
  m.impl("_depthwise_conv2d_backward_weight", &depthwise_conv2d_backward_weight_cuda);
}

}  // namespace cvops
