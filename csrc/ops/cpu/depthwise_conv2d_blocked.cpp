// The depthwise CPU channel-blocked kernel (see depthwise_conv2d_cpu.h): every call the
// AVX-512 kernels do not take (other CPUs, dtypes, channels-last, multipliers, strides,
// dilations). A task takes a block of kBlock channels of one image: they are transposed into
// an interleaved buffer [rows][cols][kBlock] (one vector of kBlock channels per pixel, the
// vector across channels) and every kernel tap is one vector multiply-add per output pixel
// with the kBlock per-channel weights of the tap in a register; kCols output columns are
// register-blocked. The result is transposed back to the output's strides. Any kernel size,
// stride, dilation and padding runs the same loops (3x3 has compile-time kernel loops).
//
// * Forward: the input block in a zero-padded buffer [H + 2 pad_h][W + 2 pad_w].
// * Input gradient, stride 1: the correlation of the zero-margined output gradient with the
//   flipped kernel, the same loop as the forward. Larger strides: the same in gather form per
//   stride phase of the padded input (each phase is a stride-1 correlation with the taps of
//   that phase), the phases interleaved back into the plane.
// * Weight and bias gradient: per (image, channel block) task, vector accumulators per tap
//   (row dot products, a fixed summation order) over the plane; the per-image partials are
//   summed over the batch in index order, so the result is bitwise the same for any thread
//   count.
//
// Channel counts that are not a multiple of kBlock run the last block with the missing lanes
// zero (discarded). Any strides are read and written directly, so channels-last tensors need
// no NCHW copy. All four dtypes run it: half and bfloat16 are widened to float on load (the
// op-math type), float32 and float64 accumulate in their own type. A multiplier M > 1 runs as
// the multiplier-1 call on the input with each channel repeated M times (one_to_one). The
// loops are always-inline bodies run in simd::dispatch_isa's baseline or AVX2+FMA function.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/cpu_utils.h"
#include "common/simd.h"
#include "ops/cpu/depthwise_conv2d_cpu.h"

namespace cvops {
namespace {

using namespace depthwise_math;

constexpr int64_t kBlock = 8;  // channels per task: one AVX2 float vector
constexpr int64_t kCols = 4;   // output columns register-blocked in the tap loop

template <typename acc_t>
struct BlockVec {
  typedef acc_t type __attribute__((vector_size(kBlock * sizeof(acc_t))));
};

// The integer vector that indexes a V's lanes in GCC's __builtin_shuffle.
template <typename V>
struct BlockMask {
  using lane_t = std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>>;
  using int_t = std::conditional_t<sizeof(lane_t) == 4, int32_t, int64_t>;
  typedef int_t type __attribute__((vector_size(kBlock * sizeof(lane_t))));
};

// A body's compile-time geometry: kernel KH x KW, column stride SW, dilation DW (0: runtime).
template <int KH, int KW, int SW, int DW>
struct Shape {};

// Strides (elements) of an NCHW-indexed tensor.
struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename scalar_t>
struct BlockedArgs {
  DepthwiseParams p;
  const scalar_t* src;  // forward and weight gradient: the input; input gradient: the grad
  Strides4 ss;
  const scalar_t* grad;  // weight gradient: the output gradient
  Strides4 gs;
  const scalar_t* weight;  // [C, KH * KW]
  const scalar_t* bias;    // or nullptr
  scalar_t* dst;           // forward output or input gradient
  Strides4 ds;
  at::opmath_type<scalar_t>* partial;  // weight gradient: [N][blocks][KK + 1][kBlock]
};

// dst[r * pitch + c][l] = src[l * sc + r * sh + c * sw] for r < rows, c < cols and the
// lanes l < nc; lanes nc..kBlock-1 are zeroed.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void gather_generic(V* __restrict dst, int64_t pitch,
                                               const scalar_t* __restrict src, int64_t sc,
                                               int64_t sh, int64_t sw, int64_t rows, int64_t cols,
                                               int64_t nc) {
  using acc_t = at::opmath_type<scalar_t>;
  if (sc == 1) {         // channels-last: the lanes of a pixel are contiguous
    if (nc == kBlock) {  // a full block: fixed-length loops, one vector load (and convert)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const scalar_t* s = src + r * sh + c * sw;
          V v;
          for (int64_t l = 0; l < kBlock; ++l) v[l] = static_cast<acc_t>(s[l]);
          dst[r * pitch + c] = v;
        }
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const scalar_t* s = src + r * sh + c * sw;
        V v = {};
        for (int64_t l = 0; l < nc; ++l) v[l] = static_cast<acc_t>(s[l]);
        dst[r * pitch + c] = v;
      }
    return;
  }
  // Lanes nc..kBlock-1 are zero: whole-vector stores first (GCC 12 turned a per-lane zero loop
  // after the copy into aligned vector stores from lane nc, which fault).
  if (nc < kBlock)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[r * pitch + c] = V{};
  acc_t* d = reinterpret_cast<acc_t*>(dst);
  for (int64_t l = 0; l < nc; ++l)
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* __restrict s = src + l * sc + r * sh;
      acc_t* __restrict o = d + r * pitch * kBlock + l;
      for (int64_t c = 0; c < cols; ++c) o[c * kBlock] = static_cast<acc_t>(s[c * sw]);
    }
}

// dst[l * dc + r * dh + c * dw] = src[r * pitch + c][l] for r < rows, c < cols, l < nc.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void scatter_generic(scalar_t* __restrict dst, int64_t dc, int64_t dh,
                                                int64_t dw, const V* __restrict src, int64_t pitch,
                                                int64_t rows, int64_t cols, int64_t nc) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* s = reinterpret_cast<const acc_t*>(src);
  if (dc == 1) {
    // A full block's lane count is a compile-time constant (the inner copy vectorises).
    auto copy = [&](auto lanes) CVOPS_ALWAYS_INLINE {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const acc_t* __restrict v = s + (r * pitch + c) * kBlock;
          scalar_t* __restrict o = dst + r * dh + c * dw;
          for (int64_t l = 0; l < lanes; ++l) o[l] = static_cast<scalar_t>(v[l]);
        }
    };
    if (nc == kBlock) {
      copy(std::integral_constant<int64_t, kBlock>());
    } else {
      copy(nc);
    }
    return;
  }
  for (int64_t l = 0; l < nc; ++l)
    for (int64_t r = 0; r < rows; ++r) {
      const acc_t* __restrict v = s + r * pitch * kBlock + l;
      scalar_t* __restrict o = dst + l * dc + r * dh;
      for (int64_t c = 0; c < cols; ++c) o[c * dw] = static_cast<scalar_t>(v[c * kBlock]);
    }
}

// Two-vector lane shuffle with constant indices: __builtin_shufflevector (Clang, GCC >= 12)
// or GCC's __builtin_shuffle with a mask vector.
#if defined(__clang__) || __GNUC__ >= 12
#define CVOPS_DW_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define CVOPS_DW_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, M{__VA_ARGS__})
#endif

// In-place transpose of the kBlock x kBlock matrix v[row][lane] (unpack, shuffle and 128-bit
// permute steps for 8 lanes).
template <typename V>
CVOPS_ALWAYS_INLINE inline void transpose_block(V* v) {
  static_assert(kBlock == 8, "transpose_block is written for 8 lanes");
  using M = typename BlockMask<V>::type;
  (void)sizeof(M);
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = CVOPS_DW_SHUFFLE(v[i], v[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = CVOPS_DW_SHUFFLE(v[i], v[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = CVOPS_DW_SHUFFLE(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = CVOPS_DW_SHUFFLE(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = CVOPS_DW_SHUFFLE(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = CVOPS_DW_SHUFFLE(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = CVOPS_DW_SHUFFLE(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    v[i + 4] = CVOPS_DW_SHUFFLE(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}
#undef CVOPS_DW_SHUFFLE

// dst[i][l] = src[l * sc + i] for i < n and l < nc (lanes >= nc zero): kBlock x kBlock
// transposes, the last one overlapping the previous when n is not a multiple of kBlock.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void transpose_in(V* __restrict dst, const scalar_t* __restrict src,
                                             int64_t sc, int64_t n, int64_t nc) {
  using acc_t = at::opmath_type<scalar_t>;
  if (n < kBlock) {
    gather_generic(dst, n, src, sc, n, 1, 1, n, nc);
    return;
  }
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i = std::min(i0, n - kBlock);
    V v[kBlock];
    for (int64_t l = 0; l < kBlock; ++l) {
      V r = {};
      if (l < nc) {
        const scalar_t* s = src + l * sc + i;
        for (int64_t j = 0; j < kBlock; ++j) r[j] = static_cast<acc_t>(s[j]);
      }
      v[l] = r;
    }
    transpose_block(v);
    for (int64_t j = 0; j < kBlock; ++j) dst[i + j] = v[j];
  }
}

// dst[l * dc + i] = src[i][l] for i < n and l < nc.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void transpose_out(scalar_t* __restrict dst, int64_t dc,
                                              const V* __restrict src, int64_t n, int64_t nc) {
  if (n < kBlock) {
    scatter_generic(dst, dc, n, 1, src, n, 1, n, nc);
    return;
  }
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i = std::min(i0, n - kBlock);
    V v[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) v[j] = src[i + j];
    transpose_block(v);
    for (int64_t l = 0; l < nc; ++l) {
      scalar_t* d = dst + l * dc + i;
      for (int64_t j = 0; j < kBlock; ++j) d[j] = static_cast<scalar_t>(v[l][j]);
    }
  }
}

// dst[r * pitch + c][l] = src[l * sc + r * sh + c * sw] for r < rows, c < cols and the
// lanes l < nc; lanes nc..kBlock-1 are zeroed. A dense NCHW plane goes through vector
// transposes: of the whole plane when dst is dense too, else row by row (rows of at least
// kBlock pixels) or through stage (rows * cols vectors).
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void gather_block(V* __restrict dst, int64_t pitch,
                                             const scalar_t* __restrict src, int64_t sc, int64_t sh,
                                             int64_t sw, int64_t rows, int64_t cols, int64_t nc,
                                             V* __restrict stage) {
  if (sc != 1 && sw == 1 && (sh == cols || rows == 1)) {
    if (pitch == cols || rows == 1) {
      transpose_in(dst, src, sc, rows * cols, nc);
      return;
    }
    if (cols >= kBlock) {  // row by row, straight into the padded rows
      for (int64_t r = 0; r < rows; ++r) transpose_in(dst + r * pitch, src + r * sh, sc, cols, nc);
      return;
    }
    transpose_in(stage, src, sc, rows * cols, nc);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[r * pitch + c] = stage[r * cols + c];
    return;
  }
  gather_generic(dst, pitch, src, sc, sh, sw, rows, cols, nc);
}

// dst[l * dc + r * dh + c * dw] = src[r * pitch + c][l] for r < rows, c < cols, l < nc.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void scatter_block(scalar_t* __restrict dst, int64_t dc, int64_t dh,
                                              int64_t dw, const V* __restrict src, int64_t pitch,
                                              int64_t rows, int64_t cols, int64_t nc,
                                              V* __restrict stage) {
  if (dc != 1 && dw == 1 && (dh == cols || rows == 1)) {
    if (pitch == cols || rows == 1) {
      transpose_out(dst, dc, src, rows * cols, nc);
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) stage[r * cols + c] = src[r * pitch + c];
    transpose_out(dst, dc, stage, rows * cols, nc);
    return;
  }
  scatter_generic(dst, dc, dh, dw, src, pitch, rows, cols, nc);
}

// Loads the kBlock channels' weights of every tap (zero for lanes >= nc), optionally with the
// kernel flipped in both directions.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void load_block_weights(V* w, const scalar_t* weight, int64_t c0,
                                                   int64_t nc, int64_t KK, bool flip) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t t = 0; t < KK; ++t) {
    V v = {};
    const int64_t k = flip ? KK - 1 - t : t;
    for (int64_t l = 0; l < nc; ++l) v[l] = static_cast<acc_t>(weight[(c0 + l) * KK + k]);
    w[t] = v;
  }
}

// out[oh * out_pitch + ow] = init + sum over taps (kh, kw) of
// w[kh * KW + kw] * in[(oh * sh + kh * dh) * in_pitch + ow * sw + kw * dw], for oh < rows
// and ow < round_up(cols, kCols): the extra columns read past the row (the buffers have
// kCols * sw pixels of slack) and are discarded. KH_/KW_ > 0 fix the kernel at compile time,
// SW_ > 0 the column stride and DW_ > 0 the dilation (both directions).
struct BlockConv {
  int64_t rows, cols, out_pitch, in_pitch, sh, sw, dh, dw, kh, kw;
};

template <int KH_, int KW_, int SW_, int DW_, typename V>
CVOPS_ALWAYS_INLINE inline void block_conv(V* __restrict out, const V* __restrict in,
                                           const V* __restrict w, const V init,
                                           const BlockConv& g) {
  const int64_t KH = KH_ > 0 ? KH_ : g.kh, KW = KW_ > 0 ? KW_ : g.kw;
  constexpr int kFixed = KH_ > 0 && KW_ > 0 ? KH_ * KW_ : 1;
  V wf[kFixed];
  if (KH_ > 0 && KW_ > 0)
    for (int t = 0; t < kFixed; ++t) wf[t] = w[t];
  const V* wt = KH_ > 0 && KW_ > 0 ? wf : w;
  const int64_t sw = SW_ > 0 ? SW_ : g.sw, dh = DW_ > 0 ? DW_ : g.dh, dw = DW_ > 0 ? DW_ : g.dw;
  for (int64_t oh = 0; oh < g.rows; ++oh) {
    const V* row = in + oh * g.sh * g.in_pitch;
    V* o = out + oh * g.out_pitch;
    for (int64_t ow = 0; ow < g.cols; ow += kCols) {
      V acc[kCols];
      for (int r = 0; r < kCols; ++r) acc[r] = init;
      const V* base = row + ow * sw;
      for (int64_t kh = 0; kh < KH; ++kh) {
        const V* ir = base + kh * dh * g.in_pitch;
        for (int64_t kw = 0; kw < KW; ++kw) {
          const V wv = wt[kh * KW + kw];
          const V* ic = ir + kw * dw;
          for (int r = 0; r < kCols; ++r) acc[r] += wv * ic[r * sw];
        }
      }
      for (int r = 0; r < kCols; ++r) o[ow + r] = acc[r];
    }
  }
}

// Tasks [begin, end) of (image, channel block), block-major within an image.
template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>
CVOPS_ALWAYS_INLINE inline void blocked_forward_body(Shape<KH_, KW_, SW_, DW_>,
                                                     const BlockedArgs<scalar_t>& a, int64_t begin,
                                                     int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = typename BlockVec<acc_t>::type;
  const DepthwiseParams& p = a.p;
  const int64_t KK = p.kernel_h * p.kernel_w, blocks = (p.channels + kBlock - 1) / kBlock;
  const int64_t hp = p.height + 2 * p.pad_h, wp = p.width + 2 * p.pad_w;
  // Padding stays zero: only the interior is written, the same pixels for every task. The
  // output rows are dense (pitch out_w): the extra columns of a row's last kCols group land
  // on the next row, which is computed after, or in the slack.
  VecBuffer<V> in(hp * wp + kCols * p.stride_w);
  VecBuffer<V> out(p.out_h * p.out_w + kCols);
  VecBuffer<V> stage(std::max(p.height * p.width, p.out_h * p.out_w));
  VecBuffer<V> w(KK);
  const BlockConv g{p.out_h,    p.out_w, p.out_w, wp,         p.stride_h,
                    p.stride_w, p.dil_h, p.dil_w, p.kernel_h, p.kernel_w};
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kBlock;
    const int64_t nc = std::min(kBlock, p.channels - c0);
    gather_block(in.data() + p.pad_h * wp + p.pad_w, wp, a.src + n * a.ss.n + c0 * a.ss.c, a.ss.c,
                 a.ss.h, a.ss.w, p.height, p.width, nc, stage.data());
    load_block_weights(w.data(), a.weight, c0, nc, KK, false);
    V init = {};
    if (a.bias != nullptr)
      for (int64_t l = 0; l < nc; ++l) init[l] = static_cast<acc_t>(a.bias[c0 + l]);
    block_conv<KH_, KW_, SW_, DW_>(out.data(), in.data(), w.data(), init, g);
    scatter_block(a.dst + n * a.ds.n + c0 * a.ds.c, a.ds.c, a.ds.h, a.ds.w, out.data(), p.out_w,
                  p.out_h, p.out_w, nc, stage.data());
  }
}

template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>
CVOPS_ALWAYS_INLINE inline void blocked_backward_input_body(Shape<KH_, KW_, SW_, DW_>,
                                                            const BlockedArgs<scalar_t>& a,
                                                            int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = typename BlockVec<acc_t>::type;
  const DepthwiseParams& p = a.p;
  const int64_t KH = p.kernel_h, KW = p.kernel_w, KK = KH * KW;
  const int64_t blocks = (p.channels + kBlock - 1) / kBlock;
  const int64_t H = p.height, W = p.width, OH = p.out_h, OW = p.out_w;
  VecBuffer<V> w(KK);
  if (p.unit_stride()) {
    // grad_input[ih][iw] = sum_k w'[kh][kw] * gbuf[ih + pad_h + kh * dh][iw + pad_w + kw * dw]
    // with w' the flipped kernel and gbuf the gradient at (mh, mw), zero elsewhere.
    const int64_t mh = (KH - 1) * p.dil_h, mw = (KW - 1) * p.dil_w;
    const int64_t rows = std::max(H + p.pad_h + mh, OH + mh);
    const int64_t cols = std::max(W + p.pad_w + mw, OW + mw);
    VecBuffer<V> gbuf(rows * cols + kCols);
    VecBuffer<V> out(H * W + kCols);  // dense rows, as in the forward
    VecBuffer<V> stage(std::max(H * W, OH * OW));
    const BlockConv g{H, W, W, cols, 1, 1, p.dil_h, p.dil_w, KH, KW};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = task % blocks * kBlock;
      const int64_t nc = std::min(kBlock, p.channels - c0);
      gather_block(gbuf.data() + mh * cols + mw, cols, a.src + n * a.ss.n + c0 * a.ss.c, a.ss.c,
                   a.ss.h, a.ss.w, OH, OW, nc, stage.data());
      load_block_weights(w.data(), a.weight, c0, nc, KK, true);
      block_conv<KH_, KW_, 1, DW_>(out.data(), gbuf.data() + p.pad_h * cols + p.pad_w, w.data(),
                                   V{}, g);
      scatter_block(a.dst + n * a.ds.n + c0 * a.ds.c, a.ds.c, a.ds.h, a.ds.w, out.data(), W, H, W,
                    nc, stage.data());
    }
    return;
  }
  // Stride > 1: gather form per stride phase. Padded input pixel (R, C) = (I * sh + rh,
  // J * sw + rw) receives, from the taps with (kh * dh) % sh == rh and (kw * dw) % sw == rw,
  // w[kh][kw] * grad[I - (kh * dh) / sh][J - (kw * dw) / sw]: a stride-1 correlation of the
  // gradient (at (mh, mw) in a zero-margined buffer) with the phase's taps. The phases are
  // computed whole, interleaved back into a dense [H][W] block and written out.
  const int64_t sh = p.stride_h, sw = p.stride_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t hp = H + 2 * p.pad_h, wp = W + 2 * p.pad_w;
  const int64_t PI = phase_length(hp, sh), PJ = phase_length(wp, sw);  // the largest phase
  const int64_t mh = phase_index((KH - 1) * dh, sh), mw = phase_index((KW - 1) * dw, sw);
  const int64_t grows = std::max(PI, OH) + mh, gcols = std::max(PJ, OW) + mw;
  const int64_t phase_size = PI * PJ + kCols;
  VecBuffer<V> gbuf(grows * gcols + kCols);
  VecBuffer<V> phases(sh * sw * phase_size);
  VecBuffer<V> dense(H * W);
  VecBuffer<V> stage(std::max(H * W, OH * OW));
  // Per phase: tap offsets in gbuf and weight indices.
  std::vector<std::vector<int64_t>> offs(sh * sw), widx(sh * sw);
  for (int64_t kh = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw) {
      const int64_t ph = (kh * dh) % sh * sw + (kw * dw) % sw;
      offs[ph].push_back((mh - kh * dh / sh) * gcols + mw - kw * dw / sw);
      widx[ph].push_back(kh * KW + kw);
    }
  VecBuffer<V> pw(KK);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kBlock;
    const int64_t nc = std::min(kBlock, p.channels - c0);
    gather_block(gbuf.data() + mh * gcols + mw, gcols, a.src + n * a.ss.n + c0 * a.ss.c, a.ss.c,
                 a.ss.h, a.ss.w, OH, OW, nc, stage.data());
    load_block_weights(w.data(), a.weight, c0, nc, KK, false);
    for (int64_t ph = 0; ph < sh * sw; ++ph) {
      const int64_t T = static_cast<int64_t>(offs[ph].size());
      const int64_t* off = offs[ph].data();
      for (int64_t t = 0; t < T; ++t) pw[t] = w[widx[ph][t]];
      // out[I][J] = sum_t pw[t] * gbuf[I * gcols + J + off[t]], rows of PJ (dense, the extra
      // columns of the last kCols group spill into the next row or the slack).
      V* __restrict out = phases.data() + ph * phase_size;
      const V* __restrict gb = gbuf.data();
      for (int64_t I = 0; I < PI; ++I)
        for (int64_t J = 0; J < PJ; J += kCols) {
          V acc[kCols];
          for (int r = 0; r < kCols; ++r) acc[r] = V{};
          const V* base = gb + I * gcols + J;
          for (int64_t t = 0; t < T; ++t) {
            const V wv = pw[t];
            const V* src = base + off[t];
            for (int r = 0; r < kCols; ++r) acc[r] += wv * src[r];
          }
          for (int r = 0; r < kCols; ++r) out[I * PJ + J + r] = acc[r];
        }
    }
    for (int64_t ih = 0; ih < H; ++ih) {
      const int64_t R = ih + p.pad_h, rh = R % sh, I = R / sh;
      V* __restrict d = dense.data() + ih * W;
      const V* src = phases.data() + rh * sw * phase_size + I * PJ;
      int64_t rw = p.pad_w % sw, J = p.pad_w / sw;
      for (int64_t iw = 0; iw < W; ++iw) {
        d[iw] = src[rw * phase_size + J];
        if (++rw == sw) {
          rw = 0;
          ++J;
        }
      }
    }
    scatter_block(a.dst + n * a.ds.n + c0 * a.ds.c, a.ds.c, a.ds.h, a.ds.w, dense.data(), W, H, W,
                  nc, stage.data());
  }
}

// acc[k] += sum over ow < n of g[ow] * in[ow * sw + k * dw], k < NK, with kCols independent
// accumulator sets (the sum order is fixed: deterministic). SW_/DW_ > 0: compile-time sw/dw.
template <int NK, int SW_, int DW_, typename V>
CVOPS_ALWAYS_INLINE inline void dot_row(V* __restrict acc, const V* __restrict g,
                                        const V* __restrict in, int64_t n, int64_t sw_,
                                        int64_t dw_) {
  const int64_t sw = SW_ > 0 ? SW_ : sw_, dw = DW_ > 0 ? DW_ : dw_;
  V a[kCols][NK];
  for (int r = 0; r < kCols; ++r)
    for (int k = 0; k < NK; ++k) a[r][k] = V{};
  int64_t ow = 0;
  for (; ow + kCols <= n; ow += kCols)
    for (int r = 0; r < kCols; ++r) {
      const V gv = g[ow + r];
      for (int k = 0; k < NK; ++k) a[r][k] += gv * in[(ow + r) * sw + k * dw];
    }
  for (; ow < n; ++ow) {
    const V gv = g[ow];
    for (int k = 0; k < NK; ++k) a[0][k] += gv * in[ow * sw + k * dw];
  }
  for (int k = 0; k < NK; ++k) acc[k] += (a[0][k] + a[1][k]) + (a[2][k] + a[3][k]);
}

template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>
CVOPS_ALWAYS_INLINE inline void blocked_backward_weight_body(Shape<KH_, KW_, SW_, DW_>,
                                                             const BlockedArgs<scalar_t>& a,
                                                             int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = typename BlockVec<acc_t>::type;
  const DepthwiseParams& p = a.p;
  const int64_t KH = KH_ > 0 ? KH_ : p.kernel_h, KW = KW_ > 0 ? KW_ : p.kernel_w;
  const int64_t KK = KH * KW, blocks = (p.channels + kBlock - 1) / kBlock;
  const int64_t hp = p.height + 2 * p.pad_h, wp = p.width + 2 * p.pad_w;
  const int64_t OH = p.out_h, OW = p.out_w, sh = p.stride_h, sw = SW_ > 0 ? SW_ : p.stride_w;
  const int64_t dh = DW_ > 0 ? DW_ : p.dil_h, dw = DW_ > 0 ? DW_ : p.dil_w;
  VecBuffer<V> in(hp * wp);
  VecBuffer<V> gbuf(OH * OW);
  VecBuffer<V> stage(p.height * p.width);
  VecBuffer<V> accv(KK + 1);  // the taps, then the bias
  VecBuffer<V> ones(1);
  ones[0] = V{} + acc_t(1);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kBlock;
    const int64_t nc = std::min(kBlock, p.channels - c0);
    gather_block(in.data() + p.pad_h * wp + p.pad_w, wp, a.src + n * a.ss.n + c0 * a.ss.c, a.ss.c,
                 a.ss.h, a.ss.w, p.height, p.width, nc, stage.data());
    gather_block(gbuf.data(), OW, a.grad + n * a.gs.n + c0 * a.gs.c, a.gs.c, a.gs.h, a.gs.w, OH, OW,
                 nc, stage.data());
    // Row by row: per kernel row (3x3) or per tap (other kernels), kCols columns at a time
    // into kCols independent accumulator sets, added into acc at the end of the row.
    V* __restrict acc = accv.data();
    for (int64_t t = 0; t <= KK; ++t) acc[t] = V{};
    const V* __restrict q = in.data();
    for (int64_t oh = 0; oh < OH; ++oh) {
      const V* grow = gbuf.data() + oh * OW;
      dot_row<1, 0, 0>(acc + KK, grow, ones.data(), OW, 0, 0);  // bias: ones[0] * g
      for (int64_t kh = 0; kh < KH; ++kh) {
        const V* irow = q + (oh * sh + kh * dh) * wp;
        if (KW_ > 0)
          dot_row<(KW_ > 0 ? KW_ : 1), SW_, DW_>(acc + kh * KW, grow, irow, OW, sw, dw);
        else
          for (int64_t kw = 0; kw < KW; ++kw)
            dot_row<1, 0, 0>(acc + kh * KW + kw, grow, irow + kw * dw, OW, sw, dw);
      }
    }
    V* res = reinterpret_cast<V*>(a.partial) + task * (KK + 1);
    for (int64_t t = 0; t <= KK; ++t) res[t] = acc[t];
  }
}

// res[c][t] = sum over n, in index order, of partial[n][c / kBlock][t][c % kBlock]: one vector
// of kBlock channels at a time (the same order per channel, so the same bits).
template <typename acc_t>
void blocked_reduce_partials(acc_t* res, const acc_t* partial, int64_t batch, int64_t blocks,
                             int64_t T, int64_t channels) {
  using V = typename BlockVec<acc_t>::type;
  const V* part = reinterpret_cast<const V*>(partial);
  for (int64_t cb = 0; cb < blocks; ++cb)
    for (int64_t t = 0; t < T; ++t) {
      V sum = part[cb * T + t];
      for (int64_t n = 1; n < batch; ++n) sum += part[(n * blocks + cb) * T + t];
      for (int64_t l = 0; l < kBlock && cb * kBlock + l < channels; ++l)
        res[(cb * kBlock + l) * T + t] = sum[l];
    }
}

// (image, channel block) tasks per parallel chunk (parallel_grain).
int64_t blocked_grain(const DepthwiseParams& p) {
  return parallel_grain(kBlock * std::max(p.out_h * p.out_w, p.height * p.width) * p.kernel_h *
                        p.kernel_w);
}

int64_t blocked_tasks(const DepthwiseParams& p) {
  return p.batch * ((p.channels + kBlock - 1) / kBlock);
}

// Runs body(shape, begin, end) over the (image, channel block) tasks in simd::dispatch_isa's
// baseline or AVX2+FMA function (capped at AVX2: a block of 8 floats is one AVX2 vector). 3x3
// undilated at column stride 1 or 2 gets compile-time loops, everything else the runtime ones.
template <typename Body>
void blocked_run(const DepthwiseParams& p, const Body& body) {
  const bool k3 = p.square(3) && p.undilated();
  at::parallel_for(0, blocked_tasks(p), blocked_grain(p), [&](int64_t begin, int64_t end) {
    auto run = [&](auto shape) {
      simd::dispatch_isa<simd::MaxIsa::kAvx2>([&](auto)
                                                  CVOPS_ALWAYS_INLINE { body(shape, begin, end); });
    };
    if (k3 && p.stride_w == 1)
      run(Shape<3, 3, 1, 1>());
    else if (k3 && p.stride_w == 2)
      run(Shape<3, 3, 2, 1>());
    else
      run(Shape<0, 0, 0, 0>());
  });
}

}  // namespace

bool blocked_applies(const DepthwiseCall& call, DepthwiseDirection direction) {
  return direction != DepthwiseDirection::kBackward && at::isFloatingType(call.dtype);
}

namespace {
// Output channel c * M + m reads input channel c: with each input channel repeated M times
// (repeat_interleave), a multiplier-M call is this multiplier-1 one.
DepthwiseParams one_to_one(const DepthwiseParams& p) {
  DepthwiseParams q = p;
  q.channels = p.out_channels();
  q.multiplier = 1;
  return q;
}
}  // namespace

void blocked_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                     at::Tensor& output, const DepthwiseParams& p) {
  if (p.multiplier > 1)
    return blocked_forward(input.repeat_interleave(p.multiplier, 1), weight, bias, output,
                           one_to_one(p));
  at::Tensor w = weight.contiguous();
  at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_depthwise_conv2d_cpu", [&] {
        BlockedArgs<scalar_t> a{};
        a.p = p;
        a.src = input.const_data_ptr<scalar_t>();
        a.ss = strides_of(input);
        a.weight = w.const_data_ptr<scalar_t>();
        a.bias = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
        a.dst = output.mutable_data_ptr<scalar_t>();
        a.ds = strides_of(output);
        blocked_run(p, [&](auto shape, int64_t begin, int64_t end)
                           CVOPS_ALWAYS_INLINE { blocked_forward_body(shape, a, begin, end); });
      });
}

void blocked_backward_input(const at::Tensor& grad, const at::Tensor& weight,
                            at::Tensor& grad_input, const DepthwiseParams& p) {
  if (p.multiplier > 1) {  // the gradient of each of the M copies, summed per channel
    const DepthwiseParams q = one_to_one(p);
    at::Tensor copies = at::empty({p.batch, q.channels, p.height, p.width}, grad_input.options());
    blocked_backward_input(grad, weight, copies, q);
    at::sum_out(grad_input, copies.view({p.batch, p.channels, p.multiplier, p.height, p.width}),
                {2});
    return;
  }
  at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_depthwise_conv2d_backward_input_cpu",
      [&] {
        BlockedArgs<scalar_t> a{};
        a.p = p;
        a.src = grad.const_data_ptr<scalar_t>();
        a.ss = strides_of(grad);
        a.weight = w.const_data_ptr<scalar_t>();
        a.dst = grad_input.mutable_data_ptr<scalar_t>();
        a.ds = strides_of(grad_input);
        blocked_run(p, [&](auto shape, int64_t begin, int64_t end) CVOPS_ALWAYS_INLINE {
          blocked_backward_input_body(shape, a, begin, end);
        });
      });
}

void blocked_backward_weight(const at::Tensor& grad, const at::Tensor& input, at::Tensor& result,
                             const DepthwiseParams& p) {
  if (p.multiplier > 1)
    return blocked_backward_weight(grad, input.repeat_interleave(p.multiplier, 1), result,
                                   one_to_one(p));
  const int64_t KK = p.kernel_h * p.kernel_w;
  // One partial per (image, channel block), summed over the images in index order.
  at::Tensor partial = at::empty({blocked_tasks(p) * (KK + 1) * kBlock}, result.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_depthwise_conv2d_backward_weight_cpu",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        BlockedArgs<scalar_t> a{};
        a.p = p;
        a.src = input.const_data_ptr<scalar_t>();
        a.ss = strides_of(input);
        a.grad = grad.const_data_ptr<scalar_t>();
        a.gs = strides_of(grad);
        a.partial = partial.mutable_data_ptr<acc_t>();
        blocked_run(p, [&](auto shape, int64_t begin, int64_t end) CVOPS_ALWAYS_INLINE {
          blocked_backward_weight_body(shape, a, begin, end);
        });
        const int64_t blocks = (p.channels + kBlock - 1) / kBlock, T = KK + 1;
        blocked_reduce_partials(result.mutable_data_ptr<acc_t>(), a.partial, p.batch, blocks, T,
                                p.channels);
      });
}

}  // namespace cvops
