// The depthwise CPU plane kernel (see depthwise_conv2d_cpu.h): forward, input gradient and
// weight/bias gradient for any geometry, multiplier and floating dtype; the fallback of the
// dispatch plan (depthwise_conv2d_dispatch.cpp). Tensors are NCHW-contiguous.
//
// It works plane by plane, parallel over (image, input channel) planes. A plane is first
// copied (in the op-math type) into a zero-padded buffer split by stride phase in both
// directions (see PhaseLayout below), so that for any stride, dilation and padding every
// kernel tap of every output of the plane reads one contiguous range at a constant offset:
// a plane's output is one flattened row, a weighted sum of kH * kW shifted ranges. The row
// kernels sum up to 9 taps per pass in registers (a 3x3 kernel is one pass, 5x5 three, 7x7
// six); their compile-time tap counts are the specialised fast paths, and any kernel size,
// stride, dilation and padding runs the same code. The input gradient is the same sum in
// gather form over the phases of the padded input; the weight and bias gradients are dot
// products of the output gradient with the shifted ranges.
//
// The weight gradient is reduced deterministically: one partial per (image, channel), summed
// over the batch in index order, whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/cpu_utils.h"
#include "common/simd.h"
#include "ops/cpu/depthwise_conv2d_cpu.h"
#include "ops/depthwise_conv2d.h"

namespace cvops {
namespace {

using namespace depthwise_math;

// ---------------------------------------------------------------------------------------
// Row kernels. A "row" is a whole plane flattened: all buffers are phase-split in both
// directions (ops/depthwise_conv2d.h), so every kernel tap of every output of a plane reads
// one contiguous range, offset by a per-tap constant. Taps are summed kChunk at a time in
// registers.
//
// The loops use GCC/Clang vector extensions of 32 bytes at every ISA and run in
// simd::dispatch_isa's baseline or AVX2+FMA function (capped at AVX2: no AVX-512 body was
// written or measured), so the vector width, and with it the lane count of the dot products'
// partial sums, does not depend on the CPU. (at::vec::Vectorized only gets its AVX2/AVX-512
// specialisations inside ATen's per-ISA builds; an extension gets the generic emulation.)
// ---------------------------------------------------------------------------------------

constexpr int kChunk = 9;      // taps summed per pass of the row kernel
constexpr int kDotChunk = 10;  // taps (accumulators) per pass of the dot kernel

// Row lengths are rounded up to a multiple of kRound (no scalar tail: the extra outputs are
// discarded) and every buffer that is read at an offset gets kRound elements of slack.
constexpr int64_t kRound = 8;
inline int64_t round_up(int64_t n) { return (n + kRound - 1) / kRound * kRound; }

template <typename T>
struct VecOf {
  static constexpr int kSize = 32 / sizeof(T);  // elements per 32-byte vector
  typedef T type __attribute__((vector_size(32)));
  typedef T unaligned __attribute__((vector_size(32), aligned(sizeof(T))));
};

// dst[i] = (accumulate ? dst[i] : init) + sum_t w[t] * src[t][i], i in [0, n).
template <int T, bool accumulate, typename acc_t>
CVOPS_ALWAYS_INLINE inline void fused_row_body(acc_t* __restrict dst, const acc_t* const* src,
                                               const acc_t* w, acc_t init, int64_t n) {
  using V = typename VecOf<acc_t>::type;
  using U = typename VecOf<acc_t>::unaligned;
  constexpr int64_t L = VecOf<acc_t>::kSize;
  const acc_t* p[T];
  V wv[T];
  for (int t = 0; t < T; ++t) {
    p[t] = src[t];
    wv[t] = V{} + w[t];
  }
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    V acc = accumulate ? V(*reinterpret_cast<const U*>(dst + i)) : V{} + init;
    for (int t = 0; t < T; ++t) acc += wv[t] * V(*reinterpret_cast<const U*>(p[t] + i));
    *reinterpret_cast<U*>(dst + i) = acc;
  }
  for (; i < n; ++i) {
    acc_t acc = accumulate ? dst[i] : init;
    for (int t = 0; t < T; ++t) acc += w[t] * p[t][i];
    dst[i] = acc;
  }
}

// lanes[t * L + l] += the products g[i] * src[t][i] with i = l (mod L), i in [0, n): the
// per-lane partial sums stay in memory between calls (one horizontal sum at the very end).
template <int T, typename acc_t>
CVOPS_ALWAYS_INLINE inline void fused_dot_body(acc_t* lanes, const acc_t* __restrict g,
                                               const acc_t* const* src, int64_t n) {
  using V = typename VecOf<acc_t>::type;
  using U = typename VecOf<acc_t>::unaligned;
  constexpr int64_t L = VecOf<acc_t>::kSize;
  const acc_t* p[T];
  V acc[T];
  for (int t = 0; t < T; ++t) {
    p[t] = src[t];
    acc[t] = *reinterpret_cast<const U*>(lanes + t * L);
  }
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V gv = *reinterpret_cast<const U*>(g + i);
    for (int t = 0; t < T; ++t) acc[t] += gv * V(*reinterpret_cast<const U*>(p[t] + i));
  }
  for (int t = 0; t < T; ++t) {
    for (int64_t j = i; j < n; ++j) acc[t][j - i] += g[j] * p[t][j];
    *reinterpret_cast<U*>(lanes + t * L) = acc[t];
  }
}

// The bodies above in simd::dispatch_isa's baseline or AVX2+FMA function.
template <int T, bool accumulate, typename acc_t>
void fused_row(acc_t* dst, const acc_t* const* src, const acc_t* w, acc_t init, int64_t n) {
  simd::dispatch_isa<simd::MaxIsa::kAvx2>(
      [&](auto) CVOPS_ALWAYS_INLINE { fused_row_body<T, accumulate>(dst, src, w, init, n); });
}

template <int T, typename acc_t>
void fused_dot(acc_t* lanes, const acc_t* g, const acc_t* const* src, int64_t n) {
  simd::dispatch_isa<simd::MaxIsa::kAvx2>(
      [&](auto) CVOPS_ALWAYS_INLINE { fused_dot_body<T>(lanes, g, src, n); });
}

// f(std::integral_constant<int, T>()) for T = count, 1 <= count <= kMax.
template <int kMax, int T = 1, typename F>
void with_tap_count(int count, const F& f) {
  if constexpr (T <= kMax) {
    if (count == T) return f(std::integral_constant<int, T>());
    with_tap_count<kMax, T + 1>(count, f);
  } else {
    TORCH_INTERNAL_ASSERT(false, "bad tap count ", count);
  }
}

template <typename acc_t>
struct Tap {
  int64_t offset;  // element offset of the tap's source range
  acc_t weight;
};

// dst[0, n) = init + sum over taps of weight * base[offset + i], kChunk taps per pass.
template <typename acc_t>
void sum_taps(acc_t* dst, const acc_t* base, const Tap<acc_t>* taps, int64_t count, acc_t init,
              int64_t n) {
  if (count == 0) {
    std::fill(dst, dst + n, init);
    return;
  }
  const acc_t* src[kChunk];
  acc_t w[kChunk];
  for (int64_t t0 = 0; t0 < count; t0 += kChunk) {
    const int c = static_cast<int>(std::min<int64_t>(kChunk, count - t0));
    for (int t = 0; t < c; ++t) {
      src[t] = base + taps[t0 + t].offset;
      w[t] = taps[t0 + t].weight;
    }
    with_tap_count<kChunk>(c, [&](auto T) {
      simd::dispatch_bool(t0 != 0, [&](auto accumulate) {
        fused_row<decltype(T)::value, decltype(accumulate)::value>(dst, src, w, init, n);
      });
    });
  }
}

// Adds g[i] * base[offset_t + i] for every tap t to its lane sums lanes[t * L, (t + 1) * L),
// kDotChunk taps per pass.
template <typename acc_t>
void dot_taps(acc_t* lanes, const acc_t* g, const acc_t* base, const int64_t* offsets,
              int64_t count, int64_t n) {
  constexpr int64_t L = VecOf<acc_t>::kSize;
  const acc_t* src[kDotChunk];
  for (int64_t t0 = 0; t0 < count; t0 += kDotChunk) {
    const int c = static_cast<int>(std::min<int64_t>(kDotChunk, count - t0));
    for (int t = 0; t < c; ++t) src[t] = base + offsets[t0 + t];
    with_tap_count<kDotChunk>(
        c, [&](auto T) { fused_dot<decltype(T)::value>(lanes + t0 * L, g, src, n); });
  }
}

// ---------------------------------------------------------------------------------------
// The padded, phase-split copy of an input plane: padded pixel (R, c) lives in phase plane
// (R % s_h, c % s_w) at row R / s_h, column c / s_w; every phase plane is rows x cols.
// Kernel tap (kh, kw) of output (oh, ow) then reads phase ((kh*d_h) % s_h, (kw*d_w) % s_w)
// at (oh + (kh*d_h) / s_h, ow + (kw*d_w) / s_w): with outputs flattened as e = oh * cols + ow,
// every tap reads base[tap_offset + e].
// ---------------------------------------------------------------------------------------

struct PhaseLayout {
  int64_t sh, sw, rows, cols;
  int64_t plane() const { return rows * cols; }
  int64_t numel() const { return sh * sw * plane(); }
  int64_t at(int64_t R, int64_t c) const {
    return ((R % sh) * sw + c % sw) * plane() + (R / sh) * cols + c / sw;
  }
};

PhaseLayout input_layout(const DepthwiseParams& p) {
  const int64_t hp = p.height + 2 * p.pad_h, wp = p.width + 2 * p.pad_w;
  return {p.stride_h, p.stride_w, phase_length(hp, p.stride_h), phase_length(wp, p.stride_w)};
}

// Where each input row segment goes in the padded layout: computed once per call (the index
// math has divisions), used for every plane.
struct RowCopy {
  int64_t src;    // first source element in the plane
  int64_t dst;    // first destination element in the padded buffer
  int64_t count;  // elements, source stride stride_w, destination stride 1
};

std::vector<RowCopy> padded_copies(const DepthwiseParams& p, const PhaseLayout& lay) {
  std::vector<RowCopy> copies;
  const int64_t s = p.stride_w;
  for (int64_t ih = 0; ih < p.height; ++ih) {
    for (int64_t r = 0; r < s; ++r) {
      const int64_t iw0 = ((r - p.pad_w) % s + s) % s;  // first column of phase r
      if (iw0 >= p.width) continue;
      copies.push_back(
          {ih * p.width + iw0, lay.at(ih + p.pad_h, iw0 + p.pad_w), (p.width - 1 - iw0) / s + 1});
    }
  }
  return copies;
}

// Writes plane x into the data positions of q. The padding positions are the same for every
// plane: q is zeroed once per thread and they stay zero.
template <typename scalar_t, typename acc_t>
void fill_padded(acc_t* __restrict q, const scalar_t* __restrict x,
                 const std::vector<RowCopy>& copies, int64_t stride_w) {
  auto fill = [&](auto step) {  // unit stride at compile time: a contiguous copy
    for (const RowCopy& c : copies) {
      acc_t* __restrict dst = q + c.dst;
      const scalar_t* __restrict src = x + c.src;
      for (int64_t i = 0; i < c.count; ++i) dst[i] = static_cast<acc_t>(src[i * step]);
    }
  };
  if (stride_w == 1)
    fill(std::integral_constant<int64_t, 1>());
  else
    fill(stride_w);
}

// Offsets of the KH * KW taps in the input layout, for outputs flattened by lay.cols.
std::vector<int64_t> tap_offsets(const DepthwiseParams& p, const PhaseLayout& lay) {
  std::vector<int64_t> off(p.kernel_h * p.kernel_w);
  for (int64_t kh = 0; kh < p.kernel_h; ++kh)
    for (int64_t kw = 0; kw < p.kernel_w; ++kw)
      off[kh * p.kernel_w + kw] = lay.at(kh * p.dil_h, kw * p.dil_w);
  return off;
}

// Planes per parallel task (parallel_grain).
int64_t grain_size(const DepthwiseParams& p) {
  return parallel_grain(p.out_h * p.out_w * p.kernel_h * p.kernel_w * p.multiplier);
}

// Number of flattened outputs (rows of lay.cols, the last one only out_w long).
int64_t flat_outputs(const DepthwiseParams& p, const PhaseLayout& lay) {
  return (p.out_h - 1) * lay.cols + p.out_w;
}

// dst[r * dst_pitch + c] = src[r * src_pitch + c], converted, for r < rows and c < cols.
template <typename To, typename From>
void copy_rows(To* dst, int64_t dst_pitch, const From* src, int64_t src_pitch, int64_t rows,
               int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    To* __restrict d = dst + r * dst_pitch;
    const From* __restrict s = src + r * src_pitch;
    for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<To>(s[c]);
  }
}

// Forward: every output plane is one sum_taps over its input plane's padded copy.
template <typename scalar_t>
void forward_impl(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                  at::Tensor& output, const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhaseLayout lay = input_layout(p);
  const int64_t KK = p.kernel_h * p.kernel_w, M = p.multiplier, OH = p.out_h, OW = p.out_w;
  const int64_t E = round_up(flat_outputs(p, lay));
  const std::vector<int64_t> offsets = tap_offsets(p, lay);
  const std::vector<RowCopy> copies = padded_copies(p, lay);
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t in_plane = p.height * p.width, out_plane = OH * OW;

  at::parallel_for(0, p.batch * p.channels, grain_size(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q(lay.numel() + kRound);
    std::vector<acc_t> flat(E);
    std::vector<Tap<acc_t>> taps(KK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ci = task % p.channels;
      fill_padded(q.data(), x + task * in_plane, copies, p.stride_w);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t co = ci * M + m;
        for (int64_t t = 0; t < KK; ++t) taps[t] = {offsets[t], static_cast<acc_t>(w[co * KK + t])};
        const acc_t init = b ? static_cast<acc_t>(b[co]) : acc_t(0);
        sum_taps(flat.data(), q.data(), taps.data(), KK, init, E);
        // task * M + m == n * C_out + co
        copy_rows(out + (task * M + m) * out_plane, OW, flat.data(), lay.cols, OH, OW);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Input gradient, in gather form over the same phase layout: padded input pixel (R, c) in
// phase (rh, rw) = (R % s_h, c % s_w) at (I, J) = (R / s_h, c / s_w) receives, from every
// tap with (kh*d_h) % s_h == rh and (kw*d_w) % s_w == rw, w * grad[I - (kh*d_h)/s_h]
// [J - (kw*d_w)/s_w]. The grad plane is copied with zero margins (top mh, left mw rows and
// columns, the largest such offsets), so each phase is again one flattened row per tap.
// ---------------------------------------------------------------------------------------

struct InputPhase {
  int64_t rh, rw;          // phase
  int64_t i0, i1, j0, j1;  // (I, J) range that maps back onto real input pixels
  std::vector<int64_t> offsets, weight_index, channel;  // per tap: in gpad, in w, m
};

template <typename scalar_t>
void backward_input_impl(const at::Tensor& grad, const at::Tensor& weight, at::Tensor& grad_input,
                         const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhaseLayout lay = input_layout(p);
  const int64_t KH = p.kernel_h, KW = p.kernel_w, KK = KH * KW, M = p.multiplier;
  const int64_t OH = p.out_h, OW = p.out_w, H = p.height, W = p.width;
  const int64_t sh = p.stride_h, sw = p.stride_w;
  const int64_t mh = phase_index((KH - 1) * p.dil_h, sh), mw = phase_index((KW - 1) * p.dil_w, sw);
  const int64_t gcols = lay.cols + mw, grows = lay.rows + mh;  // gpad plane: grows x gcols
  const int64_t gplane = grows * gcols;

  // Tap lists per phase, shared by all planes.
  std::vector<InputPhase> phases;
  for (int64_t rh = 0; rh < sh; ++rh) {
    for (int64_t rw = 0; rw < sw; ++rw) {
      InputPhase ph;
      ph.rh = rh;
      ph.rw = rw;
      // Padded rows R in [pad_h, pad_h + H) with R % sh == rh -> I = R / sh.
      const int64_t ih_first = ((rh - p.pad_h) % sh + sh) % sh;
      const int64_t iw_first = ((rw - p.pad_w) % sw + sw) % sw;
      if (ih_first >= H || iw_first >= W) continue;
      ph.i0 = (ih_first + p.pad_h) / sh;
      ph.i1 = (ih_first + (H - 1 - ih_first) / sh * sh + p.pad_h) / sh;
      ph.j0 = (iw_first + p.pad_w) / sw;
      ph.j1 = (iw_first + (W - 1 - iw_first) / sw * sw + p.pad_w) / sw;
      for (int64_t kh = 0; kh < KH; ++kh) {
        if ((kh * p.dil_h) % sh != rh) continue;
        for (int64_t kw = 0; kw < KW; ++kw) {
          if ((kw * p.dil_w) % sw != rw) continue;
          for (int64_t m = 0; m < M; ++m) {
            ph.offsets.push_back(m * gplane + (mh - (kh * p.dil_h) / sh) * gcols + mw -
                                 (kw * p.dil_w) / sw);
            ph.weight_index.push_back(kh * KW + kw);
            ph.channel.push_back(m);
          }
        }
      }
      phases.push_back(std::move(ph));
    }
  }

  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t out_plane = OH * OW, in_plane = H * W;

  at::parallel_for(0, p.batch * p.channels, grain_size(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gpad(M * gplane + kRound);
    std::vector<acc_t> flat(round_up(lay.rows * gcols));
    std::vector<Tap<acc_t>> taps(M * KK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ci = task % p.channels;
      // (gpad's margins are never written: zeroed once, at allocation)
      for (int64_t m = 0; m < M; ++m)
        copy_rows(gpad.data() + m * gplane + mh * gcols + mw, gcols, g + (task * M + m) * out_plane,
                  OW, OH, OW);
      scalar_t* gip = gi + task * in_plane;
      for (const InputPhase& ph : phases) {
        const int64_t count = static_cast<int64_t>(ph.offsets.size());
        for (int64_t t = 0; t < count; ++t)
          taps[t] = {ph.offsets[t],
                     static_cast<acc_t>(w[(ci * M + ph.channel[t]) * KK + ph.weight_index[t]])};
        // Flattened (I, J) range [i0 * gcols + j0, i1 * gcols + j1].
        const int64_t e0 = ph.i0 * gcols + ph.j0;
        const int64_t n = round_up((ph.i1 - ph.i0) * gcols + ph.j1 - ph.j0 + 1);
        sum_taps(flat.data(), gpad.data() + e0, taps.data(), count, acc_t(0), n);
        // Phase pixel (I, J) is input pixel (I * sh + rh - pad_h, J * sw + rw - pad_w).
        if (sw == 1) {
          copy_rows(gip + (ph.i0 * sh + ph.rh - p.pad_h) * W + ph.j0 - p.pad_w, sh * W, flat.data(),
                    gcols, ph.i1 - ph.i0 + 1, ph.j1 - ph.j0 + 1);
          continue;
        }
        for (int64_t I = ph.i0; I <= ph.i1; ++I) {
          const acc_t* src = flat.data() + (I - ph.i0) * gcols - ph.j0;
          scalar_t* dst = gip + (I * sh + ph.rh - p.pad_h) * W;
          for (int64_t J = ph.j0; J <= ph.j1; ++J)
            dst[J * sw + ph.rw - p.pad_w] = static_cast<scalar_t>(src[J]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Weight and bias gradient: gw[co][tap] = sum over n of the dot product of grad[n][co]
// (flattened like the forward's outputs, zeros in the gap columns) with the tap's range
// of the padded input plane; the bias is one more tap, a dot product with ones. One task per
// input channel visits the images in index order and keeps per-lane partial sums until the
// end: the result is deterministic and independent of the thread count.
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void backward_weight_impl(const at::Tensor& grad, const at::Tensor& input, at::Tensor& result,
                          const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = VecOf<acc_t>::kSize;
  const PhaseLayout lay = input_layout(p);
  const int64_t KK = p.kernel_h * p.kernel_w, M = p.multiplier, OH = p.out_h, OW = p.out_w;
  const int64_t C = p.channels, taps = KK + 1;
  const int64_t E = round_up(flat_outputs(p, lay));
  std::vector<int64_t> offsets = tap_offsets(p, lay);
  const int64_t ones_at = lay.numel() + kRound;  // the ones, after the slack
  offsets.push_back(ones_at);
  const std::vector<RowCopy> copies = padded_copies(p, lay);
  const int64_t in_plane = p.height * p.width, out_plane = OH * OW;
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  acc_t* res = result.mutable_data_ptr<acc_t>();  // [C_out][KK + 1]: taps, then bias
  at::parallel_for(
      0, C, parallel_grain(p.batch * OH * OW * KK * M), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> q(ones_at + E, acc_t(0));
        std::fill(q.begin() + ones_at, q.end(), acc_t(1));
        std::vector<acc_t> gflat(E, acc_t(0));  // gap columns and the rounding stay zero
        std::vector<acc_t> lanes(M * taps * L);
        for (int64_t ci = begin; ci < end; ++ci) {
          std::fill(lanes.begin(), lanes.end(), acc_t(0));
          for (int64_t n = 0; n < p.batch; ++n) {
            fill_padded(q.data(), x + (n * C + ci) * in_plane, copies, p.stride_w);
            for (int64_t m = 0; m < M; ++m) {
              copy_rows(gflat.data(), lay.cols, g + ((n * C + ci) * M + m) * out_plane, OW, OH, OW);
              dot_taps(lanes.data() + m * taps * L, gflat.data(), q.data(), offsets.data(), taps,
                       E);
            }
          }
          for (int64_t m = 0; m < M; ++m)
            for (int64_t t = 0; t < taps; ++t) {
              const acc_t* l = lanes.data() + (m * taps + t) * L;
              acc_t sum = 0;
              for (int64_t i = 0; i < L; ++i) sum += l[i];
              res[(ci * M + m) * taps + t] = sum;
            }
        }
      });
}

}  // namespace

bool plane_applies(const DepthwiseCall& call, DepthwiseDirection direction) {
  return direction != DepthwiseDirection::kBackward && at::isFloatingType(call.dtype);
}

void plane_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                   at::Tensor& output, const DepthwiseParams& p) {
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "cvops_depthwise_conv2d_cpu",
                                  [&] { forward_impl<scalar_t>(input, w, b, output, p); });
}

void plane_backward_input(const at::Tensor& grad, const at::Tensor& weight, at::Tensor& grad_input,
                          const DepthwiseParams& p) {
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "cvops_depthwise_conv2d_backward_input_cpu",
                                  [&] { backward_input_impl<scalar_t>(grad, w, grad_input, p); });
}

void plane_backward_weight(const at::Tensor& grad, const at::Tensor& input, at::Tensor& result,
                           const DepthwiseParams& p) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "cvops_depthwise_conv2d_backward_weight_cpu",
                                  [&] { backward_weight_impl<scalar_t>(grad, input, result, p); });
}

}  // namespace cvops
