// Depthwise 2-D convolution CPU kernels: forward, input gradient and weight/bias gradient.
//
// Every kernel works plane by plane, parallel over (batch, input channel) planes. A plane is
// first copied (in the op-math type) into a zero-padded buffer whose columns are split by
// stride phase (see ops/depthwise_conv2d.h), so that for any stride, dilation and padding
// each kernel tap of an output row is a contiguous, unit-stride row segment with no bounds
// checks. An output row is then a sum of `taps` scaled rows, which the fused row kernels
// below compute with at::vec::Vectorized, up to kChunk taps per pass held in registers
// (a 3x3 kernel is one pass, a 5x5 three, a 7x7 six). The compile-time tap counts are the
// specialised fast paths; any kernel size goes through the same chunks.
//
// The weight gradient is a per-plane correlation: each task writes its own partial sums
// (per batch image), which are then added over the batch in index order, so the result is
// deterministic and independent of the thread count. Channels-last input is computed through
// an NCHW copy and the output is returned in the input's memory format.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "ops/depthwise_conv2d.h"
#include "ops/depthwise_conv2d_checks.h"

namespace cvops {
namespace {

using namespace depthwise_math;

constexpr int kChunk = 9;  // taps summed per pass over a row

template <typename acc_t>
struct Tap {
  int64_t offset;  // into the padded phase-split plane, relative to the output row's base
  acc_t weight;
};

// dst[i] = (accumulate ? dst[i] : init) + sum_t w[t] * src[t][i] for i in [0, n).
template <int T, bool accumulate, typename acc_t>
inline void fused_row(acc_t* __restrict dst, const acc_t* const* src, const acc_t* w,
                      acc_t init, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const acc_t* p[T];
  Vec wv[T];
  for (int t = 0; t < T; ++t) {
    p[t] = src[t];
    wv[t] = Vec(w[t]);
  }
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    Vec acc = accumulate ? Vec::loadu(dst + i) : Vec(init);  // (compile-time branch)
    for (int t = 0; t < T; ++t) acc = at::vec::fmadd(wv[t], Vec::loadu(p[t] + i), acc);
    acc.store(dst + i);
  }
  for (; i < n; ++i) {
    acc_t acc = accumulate ? dst[i] : init;
    for (int t = 0; t < T; ++t) acc += w[t] * p[t][i];
    dst[i] = acc;
  }
}

template <typename acc_t>
inline void fused_row_dispatch(int count, acc_t* dst, const acc_t* const* src, const acc_t* w,
                               acc_t init, bool accumulate, int64_t n) {
  switch (count) {
#define CVOPS_DW_CASE(T) \
  case T:                                                          \
    return accumulate ? fused_row<T, true, acc_t>(dst, src, w, init, n) \
                      : fused_row<T, false, acc_t>(dst, src, w, init, n);
    CVOPS_DW_CASE(1)
    CVOPS_DW_CASE(2)
    CVOPS_DW_CASE(3)
    CVOPS_DW_CASE(4)
    CVOPS_DW_CASE(5)
    CVOPS_DW_CASE(6)
    CVOPS_DW_CASE(7)
    CVOPS_DW_CASE(8)
    CVOPS_DW_CASE(9)
#undef CVOPS_DW_CASE
    default:
      TORCH_INTERNAL_ASSERT(false, "fused_row: bad tap count ", count);
  }
}

// dst[0, n) = init + sum over taps of weight * base[offset + i], in passes of kChunk taps.
template <typename acc_t>
inline void sum_taps(acc_t* dst, const acc_t* base, const Tap<acc_t>* taps, int64_t count,
                     acc_t init, int64_t n) {
  const acc_t* src[kChunk];
  acc_t w[kChunk];
  if (count == 0) {
    std::fill(dst, dst + n, init);
    return;
  }
  for (int64_t t0 = 0; t0 < count; t0 += kChunk) {
    const int c = static_cast<int>(std::min<int64_t>(kChunk, count - t0));
    for (int t = 0; t < c; ++t) {
      src[t] = base + taps[t0 + t].offset;
      w[t] = taps[t0 + t].weight;
    }
    fused_row_dispatch<acc_t>(c, dst, src, w, init, /*accumulate=*/t0 > 0, n);
  }
}

// Sizes of the padded, phase-split copy of one input plane.
struct PaddedPlane {
  int64_t rows;     // H + 2 * pad_h
  int64_t phases;   // stride_w
  int64_t length;   // elements per phase row
  int64_t numel() const { return rows * phases * length; }
  // Element offset of (phase, row, index).
  int64_t at(int64_t phase, int64_t row, int64_t index) const {
    return (phase * rows + row) * length + index;
  }
};

PaddedPlane padded_plane(const DepthwiseParams& p) {
  const int64_t wp = p.width + 2 * p.pad_w;
  return {p.height + 2 * p.pad_h, p.stride_w, phase_length(wp, p.stride_w)};
}

// Copies plane x [H, W] into the zero-padded phase-split buffer q.
template <typename scalar_t, typename acc_t>
void fill_padded(acc_t* q, const scalar_t* x, const DepthwiseParams& p, const PaddedPlane& pp) {
  std::fill(q, q + pp.numel(), acc_t(0));
  const int64_t s = p.stride_w;
  for (int64_t ih = 0; ih < p.height; ++ih) {
    const scalar_t* xr = x + ih * p.width;
    const int64_t row = ih + p.pad_h;
    if (s == 1) {
      acc_t* qr = q + pp.at(0, row, p.pad_w);
      for (int64_t iw = 0; iw < p.width; ++iw) qr[iw] = static_cast<acc_t>(xr[iw]);
      continue;
    }
    for (int64_t r = 0; r < s; ++r) {
      // first iw whose padded column iw + pad_w has phase r
      const int64_t iw0 = ((r - p.pad_w) % s + s) % s;
      if (iw0 >= p.width) continue;
      acc_t* qr = q + pp.at(r, row, phase_index(iw0 + p.pad_w, s));
      for (int64_t iw = iw0, j = 0; iw < p.width; iw += s, ++j) qr[j] = static_cast<acc_t>(xr[iw]);
    }
  }
}

// The taps of output channel co relative to the output row base (oh * stride_h), in the
// padded plane: tap (kh, kw) reads phase (kw * d) % s, row kh * dil_h, index (kw * d) / s.
template <typename scalar_t, typename acc_t>
void forward_taps(Tap<acc_t>* taps, const scalar_t* w, const DepthwiseParams& p,
                  const PaddedPlane& pp) {
  for (int64_t kh = 0; kh < p.kernel_h; ++kh)
    for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
      const int64_t c = kw * p.dil_w;
      taps[kh * p.kernel_w + kw] = {pp.at(phase_of(c, p.stride_w), kh * p.dil_h,
                                          phase_index(c, p.stride_w)),
                                    static_cast<acc_t>(w[kh * p.kernel_w + kw])};
    }
}

template <typename scalar_t, typename acc_t>
inline void store_row(scalar_t* out, const acc_t* src, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (out != src) std::copy(src, src + n, out);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(src[i]);
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void forward_impl(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::Tensor& output,
                  const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const PaddedPlane pp = padded_plane(p);
  const int64_t KK = p.kernel_h * p.kernel_w, M = p.multiplier, OH = p.out_h, OW = p.out_w;
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t in_plane = p.height * p.width, out_plane = OH * OW;
  const int64_t row_step = p.stride_h * pp.length;  // one output row down

  at::parallel_for(0, p.batch * p.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q(pp.numel());
    std::vector<acc_t> row(std::is_same_v<scalar_t, acc_t> ? 0 : OW);
    std::vector<Tap<acc_t>> taps(KK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.channels, ci = task % p.channels;
      fill_padded(q.data(), x + task * in_plane, p, pp);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t co = ci * M + m;
        forward_taps(taps.data(), w + co * KK, p, pp);
        const acc_t init = b ? static_cast<acc_t>(b[co]) : acc_t(0);
        scalar_t* o = out + (n * p.channels * M + co) * out_plane;
        for (int64_t oh = 0; oh < OH; ++oh) {
          scalar_t* orow = o + oh * OW;
          acc_t* dst;
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            dst = orow;
          } else {
            dst = row.data();
          }
          sum_taps(dst, q.data() + oh * row_step, taps.data(), KK, init, OW);
          store_row(orow, dst, OW);
        }
      }
    }
  });
}

at::Tensor depthwise_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  const auto p = check_depthwise_forward_args(input, weight, bias, stride, padding, dilation);
  const auto format = result_format(input);
  at::Tensor output =
      at::empty({p.batch, p.out_channels(), p.out_h, p.out_w}, input.options());
  if (output.numel() == 0) return output.contiguous(format);
  at::Tensor in = input.contiguous();
  at::Tensor w = weight.contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "cvops_depthwise_conv2d_cpu",
                                  [&] { forward_impl<scalar_t>(in, w, b, output, p); });
  return format == at::MemoryFormat::Contiguous ? output : output.contiguous(format);
}

// ---------------------------------------------------------------------------------------
// Input gradient: the transposed correlation, computed in gather form. For padded input row
// R and phase r, gq[r][R][j] = sum over (m, kh, kw) with R = oh * s_h + kh * d_h and phase
// (kw * d_w) % s_w == r of w * G_m[oh][j - (kw * d_w) / s_w], where G_m is the grad plane of
// output channel ci * M + m, zero-padded on the left by the largest such offset.
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void backward_input_impl(const at::Tensor& grad, const at::Tensor& weight,
                         at::Tensor& grad_input, const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const PaddedPlane pp = padded_plane(p);
  const int64_t KH = p.kernel_h, KW = p.kernel_w, KK = KH * KW, M = p.multiplier;
  const int64_t OH = p.out_h, OW = p.out_w, H = p.height, W = p.width, s = p.stride_w;
  const int64_t max_off = phase_index((KW - 1) * p.dil_w, s);
  const int64_t glen = pp.length + max_off;  // padded grad row
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t out_plane = OH * OW, in_plane = H * W;

  at::parallel_for(0, p.batch * p.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gpad(M * OH * glen);
    std::vector<acc_t> acc(pp.length);
    std::vector<Tap<acc_t>> taps(M * KK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.channels, ci = task % p.channels;
      // Zero-padded copies of the M grad planes of this input channel.
      std::fill(gpad.begin(), gpad.end(), acc_t(0));
      for (int64_t m = 0; m < M; ++m) {
        const scalar_t* gp = g + (n * p.channels * M + ci * M + m) * out_plane;
        for (int64_t oh = 0; oh < OH; ++oh) {
          acc_t* dst = gpad.data() + (m * OH + oh) * glen + max_off;
          for (int64_t ow = 0; ow < OW; ++ow) dst[ow] = static_cast<acc_t>(gp[oh * OW + ow]);
        }
      }
      scalar_t* gip = gi + task * in_plane;
      for (int64_t ih = 0; ih < H; ++ih) {
        const int64_t R = ih + p.pad_h;
        for (int64_t r = 0; r < s; ++r) {
          const int64_t iw0 = ((r - p.pad_w) % s + s) % s;  // first column of this phase
          if (iw0 >= W) continue;
          // Taps feeding (R, phase r): offsets relative to gpad's start.
          int64_t count = 0;
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int64_t oh = source_output(R, kh, p.stride_h, 0, p.dil_h, OH);
            if (oh < 0) continue;
            for (int64_t kw = 0; kw < KW; ++kw) {
              const int64_t c = kw * p.dil_w;
              if (phase_of(c, s) != r) continue;
              for (int64_t m = 0; m < M; ++m) {
                const int64_t co = ci * M + m;
                taps[count++] = {(m * OH + oh) * glen + max_off - phase_index(c, s),
                                 static_cast<acc_t>(w[co * KK + kh * KW + kw])};
              }
            }
          }
          // Only the phase indices that map back onto real columns are needed.
          const int64_t j0 = phase_index(iw0 + p.pad_w, s);
          const int64_t nj = (W - 1 - iw0) / s + 1;
          sum_taps(acc.data(), gpad.data() + j0, taps.data(), count, acc_t(0), nj);
          scalar_t* dst = gip + ih * W;
          if (s == 1) {
            store_row(dst, acc.data(), W);
          } else {
            for (int64_t j = 0; j < nj; ++j) dst[iw0 + j * s] = static_cast<scalar_t>(acc[j]);
          }
        }
      }
    }
  });
}

at::Tensor depthwise_conv2d_backward_input_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                               int64_t batch, int64_t channels, int64_t height,
                                               int64_t width, at::IntArrayRef stride,
                                               at::IntArrayRef padding,
                                               at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_input_args(grad, weight, batch, channels, height,
                                                     width, stride, padding, dilation);
  const auto format = result_format(grad);
  at::Tensor grad_input = at::empty({batch, channels, height, width}, grad.options());
  if (grad_input.numel() == 0) return grad_input.contiguous(format);
  at::Tensor g = grad.contiguous();
  at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "cvops_depthwise_conv2d_backward_input_cpu",
                                  [&] { backward_input_impl<scalar_t>(g, w, grad_input, p); });
  return format == at::MemoryFormat::Contiguous ? grad_input : grad_input.contiguous(format);
}

// ---------------------------------------------------------------------------------------
// Weight and bias gradient: gw[co][kh][kw] = sum over n, oh, ow of
// grad[n][co][oh][ow] * padded_x[n][ci][oh * s_h + kh * d_h][ow * s_w + kw * d_w].
// ---------------------------------------------------------------------------------------

// out[t] += sum over rows oh, columns i < n of g[oh][i] * src[t][oh][i], T taps at once.
template <int T, typename acc_t>
inline void fused_dot(acc_t* out, const acc_t* g, int64_t g_stride, const acc_t* const* src,
                      int64_t src_stride, int64_t rows, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec acc[T];
  acc_t tail[T];
  for (int t = 0; t < T; ++t) {
    acc[t] = Vec(acc_t(0));
    tail[t] = acc_t(0);
  }
  for (int64_t row = 0; row < rows; ++row) {
    const acc_t* gr = g + row * g_stride;
    const int64_t off = row * src_stride;
    int64_t i = 0;
    for (; i + V <= n; i += V) {
      const Vec gv = Vec::loadu(gr + i);
      for (int t = 0; t < T; ++t) acc[t] = at::vec::fmadd(gv, Vec::loadu(src[t] + off + i), acc[t]);
    }
    for (; i < n; ++i)
      for (int t = 0; t < T; ++t) tail[t] += gr[i] * src[t][off + i];
  }
  for (int t = 0; t < T; ++t) {
    __at_align__ acc_t lanes[V];
    acc[t].store(lanes);
    acc_t sum = tail[t];
    for (int64_t l = 0; l < V; ++l) sum += lanes[l];
    out[t] += sum;
  }
}

template <typename acc_t>
inline void fused_dot_dispatch(int count, acc_t* out, const acc_t* g, int64_t g_stride,
                               const acc_t* const* src, int64_t src_stride, int64_t rows,
                               int64_t n) {
  switch (count) {
#define CVOPS_DW_CASE(T) \
  case T:                \
    return fused_dot<T, acc_t>(out, g, g_stride, src, src_stride, rows, n);
    CVOPS_DW_CASE(1)
    CVOPS_DW_CASE(2)
    CVOPS_DW_CASE(3)
    CVOPS_DW_CASE(4)
    CVOPS_DW_CASE(5)
    CVOPS_DW_CASE(6)
    CVOPS_DW_CASE(7)
    CVOPS_DW_CASE(8)
    CVOPS_DW_CASE(9)
#undef CVOPS_DW_CASE
    default:
      TORCH_INTERNAL_ASSERT(false, "fused_dot: bad tap count ", count);
  }
}

template <typename acc_t>
inline acc_t plane_sum(const acc_t* g, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec acc(acc_t(0));
  int64_t i = 0;
  for (; i + V <= n; i += V) acc = acc + Vec::loadu(g + i);
  __at_align__ acc_t lanes[V];
  acc.store(lanes);
  acc_t sum = 0;
  for (; i < n; ++i) sum += g[i];
  for (int64_t l = 0; l < V; ++l) sum += lanes[l];
  return sum;
}

template <typename scalar_t>
void backward_weight_impl(const at::Tensor& grad, const at::Tensor& input, at::Tensor& partial,
                          const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const PaddedPlane pp = padded_plane(p);
  const int64_t KK = p.kernel_h * p.kernel_w, M = p.multiplier, OH = p.out_h, OW = p.out_w;
  const int64_t in_plane = p.height * p.width, out_plane = OH * OW;
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  // partial[n][co][KK + 1]: weight taps then bias, one slot per batch image.
  acc_t* part = partial.mutable_data_ptr<acc_t>();
  const int64_t row_step = p.stride_h * pp.length;

  at::parallel_for(0, p.batch * p.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q(pp.numel());
    std::vector<acc_t> gbuf(std::is_same_v<scalar_t, acc_t> ? 0 : out_plane);
    std::vector<Tap<acc_t>> taps(KK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.channels, ci = task % p.channels;
      fill_padded(q.data(), x + task * in_plane, p, pp);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t co = ci * M + m;
        const scalar_t* gp = g + (n * p.channels * M + co) * out_plane;
        const acc_t* ga;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          ga = gp;
        } else {
          for (int64_t i = 0; i < out_plane; ++i) gbuf[i] = static_cast<acc_t>(gp[i]);
          ga = gbuf.data();
        }
        // Tap offsets only (the weights are unused here).
        for (int64_t kh = 0; kh < p.kernel_h; ++kh)
          for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
            const int64_t c = kw * p.dil_w;
            taps[kh * p.kernel_w + kw].offset =
                pp.at(phase_of(c, p.stride_w), kh * p.dil_h, phase_index(c, p.stride_w));
          }
        acc_t* out = part + (n * p.channels * M + co) * (KK + 1);
        std::fill(out, out + KK + 1, acc_t(0));
        const acc_t* src[kChunk];
        for (int64_t t0 = 0; t0 < KK; t0 += kChunk) {
          const int c = static_cast<int>(std::min<int64_t>(kChunk, KK - t0));
          for (int t = 0; t < c; ++t) src[t] = q.data() + taps[t0 + t].offset;
          fused_dot_dispatch<acc_t>(c, out + t0, ga, OW, src, row_step, OH, OW);
        }
        out[KK] = plane_sum(ga, out_plane);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward_weight_cpu(
    const at::Tensor& grad, const at::Tensor& input, int64_t kernel_h, int64_t kernel_w,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_weight_args(grad, input, kernel_h, kernel_w, stride,
                                                      padding, dilation);
  const int64_t C_out = p.out_channels(), KK = kernel_h * kernel_w;
  const auto acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor partial = at::zeros({p.batch, C_out, KK + 1}, input.options().dtype(acc_type));
  if (p.batch > 0) {
    at::Tensor g = grad.contiguous();
    at::Tensor x = input.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "cvops_depthwise_conv2d_backward_weight_cpu",
                                    [&] { backward_weight_impl<scalar_t>(g, x, partial, p); });
  }
  // Sum over the batch in index order: deterministic whatever the thread count.
  at::Tensor total = at::zeros({C_out, KK + 1}, partial.options());
  for (int64_t n = 0; n < p.batch; ++n) total.add_(partial[n]);
  at::Tensor grad_weight =
      total.narrow(1, 0, KK).reshape({C_out, 1, kernel_h, kernel_w}).to(input.scalar_type());
  at::Tensor grad_bias = total.select(1, KK).to(input.scalar_type()).contiguous();
  return {grad_weight.contiguous(), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_forward_cpu);
  m.impl("_depthwise_conv2d_backward_input", &depthwise_conv2d_backward_input_cpu);
  m.impl("_depthwise_conv2d_backward_weight", &depthwise_conv2d_backward_weight_cpu);
}

}  // namespace cvops
