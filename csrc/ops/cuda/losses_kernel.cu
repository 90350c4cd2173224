// Fused focal / Dice loss CUDA kernels: forward and backward, float/double/half/bfloat16.
//
// The per-element math is ops/losses.h (shared with the CPU kernels), on scalars in the
// op-math type (float for half/bfloat16). Reductions are two-stage and deterministic: each
// block reduces a fixed chunk of one row through a fixed shared-memory tree and writes its
// partial sums to its own slot; a second kernel adds the slots of each row in index order.
// No float atomics, and nothing waits on the host.
//
// Out-of-range multiclass targets cannot raise without a host sync: the CUDA kernels turn
// them into NaN statistics (every statistic of every class of that sample, so the loss is
// NaN for every reduction) and a NaN gradient at that pixel instead. The CPU kernels raise
// ValueError. Launch shapes are ops/losses_launch.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "ops/losses.h"
#include "ops/losses_checks.h"
#include "ops/losses_launch.h"

namespace cvops {
namespace {

using namespace loss_math;
using namespace loss_launch;

constexpr int kThreads = kStatsThreads;

struct FocalArgs {
  double a1, a0, gamma;
};

inline FocalArgs focal_args(double alpha, double gamma) {
  return alpha >= 0 ? FocalArgs{alpha, 1.0 - alpha, gamma} : FocalArgs{1.0, 1.0, gamma};
}

// ---------------------------------------------------------------------------------------
// Sigmoid focal loss, elementwise: out = scale * term (forward) or scale * gradient.
// Vectorised: each thread moves VEC elements (16 bytes) per load/store.
// ---------------------------------------------------------------------------------------
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// g_elem: per-element upstream gradient (or null); g_scalar: one upstream value (or null = 1).
template <typename scalar_t, int G, bool kGrad, int VEC>
__global__ void sigmoid_focal_elementwise_kernel(int64_t packs, const scalar_t* __restrict__ x,
                                                 const scalar_t* __restrict__ t,
                                                 const scalar_t* __restrict__ g_elem,
                                                 const scalar_t* __restrict__ g_scalar,
                                                 double g_mult, FocalArgs fa,
                                                 scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = ScalarMath<acc_t>;
  using P = Pack<scalar_t, VEC>;
  const acc_t a1 = fa.a1, a0 = fa.a0, gm = fa.gamma, mult = g_mult;
  const acc_t g0 = (g_scalar == nullptr ? acc_t(1) : static_cast<acc_t>(g_scalar[0])) * mult;
  CVOPS_CUDA_KERNEL_LOOP(i, packs) {
    const P xp = reinterpret_cast<const P*>(x)[i];
    const P tp = reinterpret_cast<const P*>(t)[i];
    P gp;
    if (g_elem != nullptr) gp = reinterpret_cast<const P*>(g_elem)[i];
    P op;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t xv = static_cast<acc_t>(xp.v[k]), tv = static_cast<acc_t>(tp.v[k]);
      acc_t r = kGrad ? sigmoid_focal_grad<G, M>(xv, tv, a1, a0, gm)
                      : sigmoid_focal_term<G, M>(xv, tv, a1, a0, gm);
      r *= g_elem != nullptr ? static_cast<acc_t>(gp.v[k]) * mult : g0;
      op.v[k] = static_cast<scalar_t>(r);
    }
    reinterpret_cast<P*>(out)[i] = op;
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Packs of 16 bytes when every pointer allows it, then the remaining elements one by one.
template <typename scalar_t, int G, bool kGrad>
void launch_sigmoid_focal_elementwise(int64_t n, const scalar_t* x, const scalar_t* t,
                                      const scalar_t* g_elem, const scalar_t* g_scalar,
                                      double g_mult, const FocalArgs& fa, scalar_t* out,
                                      cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  int64_t done = 0;
  if (aligned16(x) && aligned16(t) && aligned16(out) && (g_elem == nullptr || aligned16(g_elem))) {
    const int64_t packs = n / VEC;
    if (packs > 0) {
      sigmoid_focal_elementwise_kernel<scalar_t, G, kGrad, VEC>
          <<<cuda_blocks(packs), kCudaThreads, 0, stream>>>(packs, x, t, g_elem, g_scalar, g_mult,
                                                            fa, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      done = packs * VEC;
    }
  }
  if (done < n) {
    sigmoid_focal_elementwise_kernel<scalar_t, G, kGrad, 1>
        <<<cuda_blocks(n - done), kCudaThreads, 0, stream>>>(
            n - done, x + done, t + done, g_elem == nullptr ? nullptr : g_elem + done, g_scalar,
            g_mult, fa, out + done);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---------------------------------------------------------------------------------------
// Block reduction of kNumStats values (fixed tree: deterministic).
// ---------------------------------------------------------------------------------------
template <typename acc_t>
__device__ inline void block_reduce_store(acc_t (&v)[kNumStats], acc_t* __restrict__ out) {
  __shared__ acc_t sh[kNumStats][kThreads];
  for (int j = 0; j < kNumStats; ++j) sh[j][threadIdx.x] = v[j];
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride)
      for (int j = 0; j < kNumStats; ++j) sh[j][threadIdx.x] += sh[j][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x < kNumStats) out[threadIdx.x] = sh[threadIdx.x][0];
  __syncthreads();  // sh is reused by the block's next tile
}

// stats[r, j] = sum over chunks of partial[r, k, j], in chunk order, in double as on the CPU
// (a float sum of 1e8 elements' partials could be off by 1e-3 relative).
template <typename acc_t>
__global__ void finish_stats_kernel(int64_t rows, int64_t chunks, const acc_t* __restrict__ partial,
                                    acc_t* __restrict__ stats) {
  CVOPS_CUDA_KERNEL_LOOP(i, rows * kNumStats) {
    const int64_t r = i / kNumStats, j = i % kNumStats;
    double s = 0;
    for (int64_t k = 0; k < chunks; ++k)
      s += static_cast<double>(partial[(r * chunks + k) * kNumStats + j]);
    stats[i] = static_cast<acc_t>(s);
  }
}

// ---------------------------------------------------------------------------------------
// Row statistics (binary / multilabel / sigmoid focal reductions): one block per (row, chunk)
// tile, tiles in gridDim.x (ops/losses_launch.h).
// ---------------------------------------------------------------------------------------
struct RowArgs {
  int64_t len, tiles;
  bool from_logits, has_ignore, dice, focal;
  double ignore;
  FocalArgs fa;
  const double* alpha;  // device scalar overriding fa.a1/a0 (negative: no weighting), or null
};

template <typename acc_t>
__device__ inline void alpha_weights(const RowArgs& a, acc_t& a1, acc_t& a0) {
  double w1 = a.fa.a1, w0 = a.fa.a0;
  if (a.alpha != nullptr) {
    const double al = *a.alpha;
    w1 = al >= 0 ? al : 1.0;
    w0 = al >= 0 ? 1.0 - al : 1.0;
  }
  a1 = static_cast<acc_t>(w1);
  a0 = static_cast<acc_t>(w0);
}

template <typename scalar_t, int G>
__global__ void row_stats_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                                 RowArgs a, at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = ScalarMath<acc_t>;
  const acc_t gm = a.fa.gamma, ign = a.ignore;
  acc_t a1, a0;
  alpha_weights(a, a1, a0);
  for (int64_t tile = blockIdx.x; tile < a.tiles; tile += gridDim.x) {
    const StatsTile tl = stats_tile(tile, a.len);
    const scalar_t* xr = x + tl.row * a.len;
    const scalar_t* tr = t + tl.row * a.len;
    acc_t v[kNumStats] = {0, 0, 0, 0, 0};
    for (int64_t i = tl.begin + threadIdx.x; i < tl.end; i += kThreads) {
      const acc_t xv = static_cast<acc_t>(xr[i]);
      const acc_t tv = static_cast<acc_t>(tr[i]);
      if (a.has_ignore && tv == ign) continue;
      if (a.dice) {
        acc_t p = xv;
        if (a.from_logits) {
          acc_t q, l;
          sigmoid_parts<M>(xv, p, q, l);
        }
        v[kStatD] += abs_diff<M>(p, tv);
        v[kStatP] += p;
        v[kStatT] += tv;
      }
      if (a.focal) v[kStatF] += sigmoid_focal_term<G, M>(xv, tv, a1, a0, gm);
      v[kStatM] += acc_t(1);
    }
    block_reduce_store(v, partial + tile * kNumStats);
  }
}

template <typename scalar_t, int G>
__global__ void row_stats_backward_kernel(int64_t total, const double* __restrict__ gstats,
                                          const scalar_t* __restrict__ x,
                                          const scalar_t* __restrict__ t, RowArgs a,
                                          scalar_t* __restrict__ dx) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = ScalarMath<acc_t>;
  const acc_t gm = a.fa.gamma, ign = a.ignore;
  acc_t a1, a0;
  alpha_weights(a, a1, a0);
  CVOPS_CUDA_KERNEL_LOOP(i, total) {
    const int64_t row = i / a.len;
    const acc_t xv = static_cast<acc_t>(x[i]), tv = static_cast<acc_t>(t[i]);
    if (a.has_ignore && tv == ign) {
      dx[i] = scalar_t(0);
      continue;
    }
    const acc_t gD = gstats[row * kNumStats + kStatD], gP = gstats[row * kNumStats + kStatP];
    const acc_t gF = gstats[row * kNumStats + kStatF];
    acc_t p = xv, dp = 1;
    if (a.from_logits) {
      acc_t q, l;
      sigmoid_parts<M>(xv, p, q, l);
      dp = p * q;
    }
    acc_t d = (gD * abs_diff_grad<M>(p, tv) + gP) * dp;
    if (a.focal) d += gF * sigmoid_focal_grad<G, M>(xv, tv, a1, a0, gm);
    dx[i] = static_cast<scalar_t>(d);
  }
}

// ---------------------------------------------------------------------------------------
// Multiclass: x [N, C, L], y [N, L] int64.
// ---------------------------------------------------------------------------------------
struct ClassArgs {
  int64_t batch, classes, len, tiles;
  bool from_logits, has_ignore, focal;
  int64_t ignore;
  double gamma;
};

// Class of pixel (b, s): -1 when ignored, -2 when out of range (NaN statistics and gradient).
__device__ inline int64_t pixel_class(const int64_t* y, int64_t i, const ClassArgs& a) {
  const int64_t v = y[i];
  if (a.has_ignore && v == a.ignore) return -1;
  if (v < 0 || v >= a.classes) return -2;
  return v;
}

// lse[b, s] = logsumexp over classes.
template <typename scalar_t>
__global__ void pixel_lse_kernel(const scalar_t* __restrict__ x, ClassArgs a,
                                 at::opmath_type<scalar_t>* __restrict__ lse) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = ScalarMath<acc_t>;
  CVOPS_CUDA_KERNEL_LOOP(i, a.batch * a.len) {
    const int64_t b = i / a.len, s = i % a.len;
    const scalar_t* xp = x + b * a.classes * a.len + s;
    acc_t r = 0;
    if (a.from_logits) {
      acc_t mx = -std::numeric_limits<acc_t>::infinity();
      for (int64_t c = 0; c < a.classes; ++c) mx = M::max(mx, static_cast<acc_t>(xp[c * a.len]));
      acc_t sum = 0;
      for (int64_t c = 0; c < a.classes; ++c) sum += M::exp(static_cast<acc_t>(xp[c * a.len]) - mx);
      r = mx + M::log(sum);
    }
    lse[i] = r;
  }
}

// One block per (row, chunk) tile, row = (b, c): sums over the pixels of the chunk.
template <typename scalar_t, int G>
__global__ void class_stats_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ y,
                                   const at::opmath_type<scalar_t>* __restrict__ lse,
                                   const double* __restrict__ alpha, ClassArgs a,
                                   at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = ScalarMath<acc_t>;
  const acc_t gm = a.gamma;
  for (int64_t tile = blockIdx.x; tile < a.tiles; tile += gridDim.x) {
    const StatsTile tl = stats_tile(tile, a.len);
    const int64_t b = tl.row / a.classes, c = tl.row % a.classes;
    const acc_t ac = alpha[c];
    acc_t v[kNumStats] = {0, 0, 0, 0, 0};
    for (int64_t s = tl.begin + threadIdx.x; s < tl.end; s += kThreads) {
      const int64_t cls = pixel_class(y, b * a.len + s, a);
      if (cls == -1) continue;
      if (cls == -2) {  // every statistic NaN: the loss is NaN whatever the reduction
        for (int j = 0; j < kNumStats; ++j) v[j] = std::numeric_limits<acc_t>::quiet_NaN();
        continue;
      }
      const acc_t xv = static_cast<acc_t>(x[tl.row * a.len + s]);
      const acc_t t = cls == c ? acc_t(1) : acc_t(0);
      acc_t p = xv;
      if (a.from_logits) {
        const acc_t logp = xv - lse[b * a.len + s];
        p = M::exp(logp);
        if (a.focal && cls == c) v[kStatF] += softmax_focal_term<G, M>(logp, p, ac, gm);
      }
      v[kStatD] += abs_diff<M>(p, t);
      v[kStatP] += p;
      v[kStatT] += t;
      v[kStatM] += t;
    }
    block_reduce_store(v, partial + tile * kNumStats);
  }
}

// One thread per pixel: three passes over the classes (max, sums, write).
template <typename scalar_t, int G>
__global__ void class_backward_kernel(const double* __restrict__ gstats,
                                      const scalar_t* __restrict__ x, const int64_t* __restrict__ y,
                                      const double* __restrict__ alpha, ClassArgs a,
                                      scalar_t* __restrict__ dx) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = ScalarMath<acc_t>;
  const acc_t gm = a.gamma;
  CVOPS_CUDA_KERNEL_LOOP(i, a.batch * a.len) {
    const int64_t b = i / a.len, s = i % a.len;
    const int64_t off = b * a.classes * a.len + s;
    const double* gs = gstats + b * a.classes * kNumStats;
    const int64_t cls = pixel_class(y, i, a);
    if (cls < 0) {  // ignored: no gradient; out of range: NaN, like its statistics
      const scalar_t fill =
          static_cast<scalar_t>(cls == -1 ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN());
      for (int64_t c = 0; c < a.classes; ++c) dx[off + c * a.len] = fill;
      continue;
    }
    acc_t lse = 0;
    if (a.from_logits) {
      acc_t mx = -std::numeric_limits<acc_t>::infinity();
      for (int64_t c = 0; c < a.classes; ++c)
        mx = M::max(mx, static_cast<acc_t>(x[off + c * a.len]));
      acc_t sum = 0;
      for (int64_t c = 0; c < a.classes; ++c)
        sum += M::exp(static_cast<acc_t>(x[off + c * a.len]) - mx);
      lse = mx + M::log(sum);
    }
    acc_t dot = 0, py = 0, ly = 0;
    for (int64_t c = 0; c < a.classes; ++c) {
      const acc_t xv = static_cast<acc_t>(x[off + c * a.len]);
      const acc_t t = cls == c ? acc_t(1) : acc_t(0);
      const acc_t p = a.from_logits ? M::exp(xv - lse) : xv;
      if (cls == c) {
        py = p;
        ly = xv - lse;
      }
      dot += (acc_t(gs[c * kNumStats + kStatD]) * abs_diff_grad<M>(p, t) +
              acc_t(gs[c * kNumStats + kStatP])) *
             p;
    }
    acc_t kf = 0;
    if (a.focal)
      kf = acc_t(gs[cls * kNumStats + kStatF]) *
           softmax_focal_dlogp<G, M>(ly, py, acc_t(alpha[cls]), gm);
    for (int64_t c = 0; c < a.classes; ++c) {
      const acc_t xv = static_cast<acc_t>(x[off + c * a.len]);
      const acc_t t = cls == c ? acc_t(1) : acc_t(0);
      const acc_t p = a.from_logits ? M::exp(xv - lse) : xv;
      const acc_t g = acc_t(gs[c * kNumStats + kStatD]) * abs_diff_grad<M>(p, t) +
                      acc_t(gs[c * kNumStats + kStatP]);
      acc_t d = a.from_logits ? p * (g - dot) : g;
      if (a.focal) d += kf * (t - p);
      dx[off + c * a.len] = static_cast<scalar_t>(d);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------

// Grid of a stats kernel: one block per (row, chunk) tile (ops/losses_launch.h).
inline unsigned stats_grid(int64_t rows, int64_t len) {
  return static_cast<unsigned>(stats_blocks(rows, len));
}

// Statistics [rows, kNumStats] (op-math dtype) of contiguous x, t [rows, len].
at::Tensor row_stats_cuda(const at::Tensor& x, const at::Tensor& t, int64_t rows, int64_t len,
                          RowArgs a) {
  const auto acc = at::toOpMathType(x.scalar_type());
  at::Tensor stats = at::zeros({rows, kNumStats}, x.options().dtype(acc));
  if (rows == 0 || len == 0) return stats;
  a.len = len;
  a.tiles = stats_tiles(rows, len);
  const int64_t chunks = stats_chunks(len);
  at::Tensor partial = at::empty({rows, chunks, kNumStats}, x.options().dtype(acc));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "cvops_row_stats", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dispatch_gamma(a.fa.gamma, [&](auto gtag) {
          row_stats_kernel<scalar_t, decltype(gtag)::value>
              <<<stats_grid(rows, len), kThreads, 0, stream>>>(x.const_data_ptr<scalar_t>(),
                                                               t.const_data_ptr<scalar_t>(), a,
                                                               partial.mutable_data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        finish_stats_kernel<acc_t><<<cuda_blocks(rows * kNumStats), kCudaThreads, 0, stream>>>(
            rows, chunks, partial.const_data_ptr<acc_t>(), stats.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return stats;
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& input, const at::Tensor& target, double alpha,
                                   double gamma, int64_t reduction) {
  constexpr const char* op = "cvops.sigmoid_focal_loss";
  check_sigmoid_focal_args(op, input, target, gamma, reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const int64_t n = x.numel();
  const FocalArgs fa = focal_args(alpha, gamma);
  if (reduction == kReduceNone) {
    at::Tensor out = at::empty(input.sizes(), input.options());
    if (n == 0) return out;
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
      dispatch_gamma(gamma, [&](auto gtag) {
        launch_sigmoid_focal_elementwise<scalar_t, decltype(gtag)::value, false>(
            n, x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), nullptr, nullptr, 1.0,
            fa, out.mutable_data_ptr<scalar_t>(), stream);
      });
    });
    return out;
  }
  const RowArgs a{0, 0, true, false, false, true, 0.0, fa, nullptr};
  at::Tensor stats = row_stats_cuda(x, t, 1, n, a);
  at::Tensor total = stats.select(1, kStatF).sum();
  if (reduction == kReduceMean) total = total / static_cast<double>(n);  // n == 0 -> NaN
  return total.to(input.scalar_type());
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                            const at::Tensor& target, double alpha, double gamma,
                                            int64_t reduction) {
  constexpr const char* op = "cvops._sigmoid_focal_loss_backward";
  check_sigmoid_focal_args(op, input, target, gamma, reduction);
  check_sigmoid_focal_backward_args(op, grad, input, reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const at::Tensor g = grad.to(input.scalar_type()).contiguous();
  const int64_t n = x.numel();
  at::Tensor out = at::empty(input.sizes(), input.options());
  if (n == 0) return out;
  const FocalArgs fa = focal_args(alpha, gamma);
  const bool full = reduction == kReduceNone;
  const double mult = reduction == kReduceMean ? 1.0 / static_cast<double>(n) : 1.0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    dispatch_gamma(gamma, [&](auto gtag) {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      launch_sigmoid_focal_elementwise<scalar_t, decltype(gtag)::value, true>(
          n, x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), full ? gp : nullptr,
          full ? nullptr : gp, mult, fa, out.mutable_data_ptr<scalar_t>(), stream);
    });
  });
  return out;
}

// Loss and its gradient for grad_output = 1 (two launches; the loss is the plain forward).
std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_fused_cuda(const at::Tensor& input,
                                                                 const at::Tensor& target,
                                                                 double alpha, double gamma,
                                                                 int64_t reduction) {
  at::Tensor loss = sigmoid_focal_loss_cuda(input, target, alpha, gamma, reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const int64_t n = x.numel();
  at::Tensor grad = at::empty(input.sizes(), input.options());
  if (n == 0) return {loss, grad};
  const FocalArgs fa = focal_args(alpha, gamma);
  const double mult = reduction == kReduceMean ? 1.0 / static_cast<double>(n) : 1.0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "cvops_sigmoid_focal_fused_cuda", [&] {
        dispatch_gamma(gamma, [&](auto gtag) {
          launch_sigmoid_focal_elementwise<scalar_t, decltype(gtag)::value, true>(
              n, x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), nullptr, nullptr, mult,
              fa, grad.mutable_data_ptr<scalar_t>(), stream);
        });
      });
  return {loss, grad};
}

at::Tensor loss_stats_cuda(const at::Tensor& input, const at::Tensor& target,
                           const at::Tensor& alpha, int64_t mode, bool from_logits, bool has_ignore,
                           int64_t ignore_index, double gamma, bool focal) {
  constexpr const char* op = "cvops._loss_stats";
  check_loss_stats_args(op, input, target, alpha, mode, from_logits, gamma, focal);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = input.size(0), C = input.size(1), L = input.size(2);
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const at::Tensor al = alpha.to(at::kDouble).contiguous();
  if (mode != kModeMulticlass) {
    // The sigmoid focal weight alpha[0] stays on the device (read by the kernel).
    const RowArgs a{0,
                    0,
                    from_logits,
                    has_ignore,
                    true,
                    focal,
                    static_cast<double>(ignore_index),
                    focal_args(-1.0, gamma),
                    al.const_data_ptr<double>()};
    return row_stats_cuda(x, t, N * C, L, a).view({N, C, kNumStats});
  }
  const auto acc = at::toOpMathType(x.scalar_type());
  at::Tensor stats = at::zeros({N, C, kNumStats}, x.options().dtype(acc));
  if (N * C == 0 || L == 0) return stats;
  const ClassArgs a{N,    C, L, stats_tiles(N * C, L), from_logits, has_ignore, focal, ignore_index,
                    gamma};
  const int64_t chunks = stats_chunks(L);
  at::Tensor lse = at::empty({N, L}, x.options().dtype(acc));
  at::Tensor partial = at::empty({N * C, chunks, kNumStats}, x.options().dtype(acc));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pixel_lse_kernel<scalar_t><<<cuda_blocks(N * L), kCudaThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), a, lse.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dispatch_gamma(gamma, [&](auto gtag) {
      class_stats_kernel<scalar_t, decltype(gtag)::value>
          <<<stats_grid(N * C, L), kThreads, 0, stream>>>(
              x.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(),
              lse.const_data_ptr<acc_t>(), al.const_data_ptr<double>(), a,
              partial.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    finish_stats_kernel<acc_t><<<cuda_blocks(N * C * kNumStats), kCudaThreads, 0, stream>>>(
        N * C, chunks, partial.const_data_ptr<acc_t>(), stats.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return stats;
}

at::Tensor loss_stats_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                    const at::Tensor& target, const at::Tensor& alpha, int64_t mode,
                                    bool from_logits, bool has_ignore, int64_t ignore_index,
                                    double gamma, bool focal) {
  constexpr const char* op = "cvops._loss_stats_backward";
  check_loss_stats_args(op, input, target, alpha, mode, from_logits, gamma, focal);
  const int64_t N = input.size(0), C = input.size(1), L = input.size(2);
  check_loss_stats_grad(op, grad, input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty(input.sizes(), input.options());
  if (out.numel() == 0) return out;
  const at::Tensor g = grad.to(at::kDouble).contiguous();
  const at::Tensor x = input.contiguous(), t = target.contiguous();
  const at::Tensor al = alpha.to(at::kDouble).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (mode != kModeMulticlass) {
    const RowArgs a{L,
                    0,
                    from_logits,
                    has_ignore,
                    true,
                    focal,
                    static_cast<double>(ignore_index),
                    focal_args(-1.0, gamma),
                    al.const_data_ptr<double>()};
    const int64_t total = out.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
      dispatch_gamma(gamma, [&](auto gtag) {
        row_stats_backward_kernel<scalar_t, decltype(gtag)::value>
            <<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
                total, g.const_data_ptr<double>(), x.const_data_ptr<scalar_t>(),
                t.const_data_ptr<scalar_t>(), a, out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return out;
  }
  const ClassArgs a{N, C, L, 0, from_logits, has_ignore, focal, ignore_index, gamma};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    dispatch_gamma(gamma, [&](auto gtag) {
      class_backward_kernel<scalar_t, decltype(gtag)::value>
          <<<cuda_blocks(N * L), kCudaThreads, 0, stream>>>(
              g.const_data_ptr<double>(), x.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(),
              al.const_data_ptr<double>(), a, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CUDA, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cuda);
  m.impl("_sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cuda);
  m.impl("_sigmoid_focal_loss_fused", &sigmoid_focal_loss_fused_cuda);
  m.impl("_loss_stats", &loss_stats_cuda);
  m.impl("_loss_stats_backward", &loss_stats_backward_cuda);
}

}  // namespace cvops
