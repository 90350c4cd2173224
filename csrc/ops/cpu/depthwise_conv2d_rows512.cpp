// Depthwise 2-D convolution CPU kernels: the AVX-512 row walks (float32, NCHW, undilated), run
// by the plan of depthwise_conv2d_dispatch.cpp when their *_applies (at the end) says so:
//  - rows512: stride 1, square K x K (K = 3, 5, 7). The forward and the input gradient are one
//    correlation (the input gradient correlates the output gradient with the flipped taps);
//    the weight gradient is 3x3 only;
//  - stride2_512: 3x3, stride 2: forward, input gradient, weight gradient;
//  - backward512: 3x3, stride 1, padding 1, rows of at most 15: both gradients in one walk.
// Each walks down a plane one row at a time, so that a loaded row serves every output row (or
// tap row) that reads it. Every weight gradient sums in a fixed order (images, rows, column
// chunks, then sum_lanes' tree): the same for any thread count.
#include "ops/cpu/depthwise_conv2d_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/avx512_utils.h"
#include "common/cpu_utils.h"

// One guard for the file: the helpers of avx512_utils.h exist under the same condition.
#if CVOPS_HAS_AVX2_TARGET

namespace cvops {
namespace {

// Widest row (outputs) rows512 walks one column chunk of several images at a time
// (correlate_channels); wider rows are walked a band of chunks of one image (correlate_band).
constexpr int64_t kChunkWalkMaxWidth = 32;
// Column chunks per band of the 3x3 band walks: with the ring of 3 rows per chunk, 4 chunks
// fill the registers. The rows512 weight gradient takes rows of one band at most: wider ones
// read the planes once per band, and the masked kernel wins (tuned on the 2-core Zen 5 VM, see
// docs/depthwise_conv2d.md).
constexpr int kBandChunks3x3 = 4;
// Widest output stride2_512 takes: its walk down one column chunk at a time loses to the
// masked kernel's flat walk on wider planes (tuned on the 2-core Zen 5 VM, see
// docs/depthwise_conv2d.md).
constexpr int64_t kStride2MaxWidth = 32;

// Rows the band walks prefetch ahead of the one they load.
constexpr int64_t kRowsAhead = 4;

// One call as the kernels read it: dense NCHW float32 planes and their geometry.
// (built with designated initializers: the pointers a direction does not use stay null)
struct Job {
  const float* src = nullptr;   // the input (rows512's input gradient: the output gradient)
  const float* grad = nullptr;  // the output gradient (weight gradients, stride-2 input
                                // gradient, fused)
  const float* taps = nullptr;  // [channels][KH * KW] (rows512's input gradient: flipped)
  const float* bias = nullptr;  // [channels] or nullptr
  float* dst = nullptr;         // the output, or grad_input
  float* result = nullptr;      // weight gradients: [channels][KH * KW + 1], taps then bias
  DepthwiseParams p;  // rows512's input gradient: p.input_grad_as_correlation(), src -> dst
};

// w[kh][kw] = taps[kh * K + kw] in every lane.
template <int K>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void broadcast_taps(__m512 (&w)[K][K],
                                                                   const float* taps) {
#pragma GCC unroll 16
  for (int kh = 0; kh < K; ++kh)
#pragma GCC unroll 16
    for (int kw = 0; kw < K; ++kw) w[kh][kw] = _mm512_set1_ps(taps[kh * K + kw]);
}

// Every loop over a K x K array of vectors is unrolled: a run-time index keeps it in memory.
template <int K>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void zero_sums(__m512 (&acc)[K][K],
                                                              __m512& acc_bias) {
  acc_bias = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int kh = 0; kh < K; ++kh)
#pragma GCC unroll 16
    for (int kw = 0; kw < K; ++kw) acc[kh][kw] = _mm512_setzero_ps();
}

// A channel's weight and bias gradient, res[0 .. K * K]: the accumulators' lanes summed.
template <int K>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void store_sums(float* res,
                                                               const __m512 (&acc)[K][K],
                                                               __m512 acc_bias) {
#pragma GCC unroll 16
  for (int kh = 0; kh < K; ++kh)
#pragma GCC unroll 16
    for (int kw = 0; kw < K; ++kw) res[kh * K + kw] = sum_lanes(acc[kh][kw]);
  res[K * K] = sum_lanes(acc_bias);
}

// Prefetches channel c's gradient and input planes of images [n + P, n + 2P) (those that
// exist): the next images of a weight-gradient walk that takes P at a time.
template <int P>
inline void prefetch_images(const Job& j, int64_t c, int64_t n) {
  const DepthwiseParams& p = j.p;
  const int64_t g_plane = p.out_h * p.out_w, x_plane = p.height * p.width;
  for (int64_t i = n + P; i < n + 2 * P && i < p.batch; ++i) {
    prefetch_floats(j.grad + (i * p.channels + c) * g_plane, g_plane);
    prefetch_floats(j.src + (i * p.channels + c) * x_plane, x_plane);
  }
}

// ---- rows512 ----
// A vector holds 16 outputs of one row (a row of up to 16, or a 16-wide column chunk of a
// wider one). Loading every tap of every output vector costs K * K unaligned loads per 16
// outputs and is load-bound; the walk goes down the plane one source row at a time instead:
// the row's K shifted vectors (masked loads, zero where the tap falls in the padding) are
// loaded once and each feeds the K output rows that read it, held in a ring of K
// accumulators. That is K loads and K * K FMAs per 16 outputs, FMA-bound. G images of one
// channel run together and share the taps, which stay in registers. Rows of at most 8 hold
// two images per vector, and where such a pair fits 8 lanes with zero lanes to spare (3x3 on
// 7x7) one loaded row pair is rotated into the K tap columns (rotation_fits). Rows wider than
// kChunkWalkMaxWidth are walked a band of chunks of one image at a time (correlate_band).
// The geometry g of these functions is the correlation's: source planes g.height x g.width,
// destination planes g.out_h x g.out_w.

// Per call: the column chunks of the destination rows and each kernel column's load mask.
struct Columns {
  int64_t chunks;
  std::vector<uint16_t> valid;  // [chunk]: lanes that are outputs
  std::vector<uint16_t> mask;   // [chunk][kw]: output lanes whose tap column is in the source
};

Columns columns_of(const DepthwiseParams& g) {
  Columns c;
  c.chunks = (g.out_w + kLanes - 1) / kLanes;
  c.valid.resize(c.chunks);
  c.mask.resize(c.chunks * g.kernel_w);
  for (int64_t ch = 0; ch < c.chunks; ++ch) {
    c.valid[ch] = lanes_below(g.out_w - ch * kLanes);
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      uint16_t m = 0;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t col = ch * kLanes + l, src_col = g.input_col(col, kw);
        if (col < g.out_w && src_col >= 0 && src_col < g.width) m |= uint16_t(1u << l);
      }
      c.mask[ch * g.kernel_w + kw] = m;
    }
  }
  return c;
}

// Whether a pair of rows (one per 8-lane half, zero above g.width) serves every tap column by
// rotation: each stored output lane's source column, taken modulo 16 lanes, must be a column
// of its own row or one of the zero lanes (a read before the row's start wraps into the
// other half's top lanes, one past its end reads its own).
bool rotation_fits(const DepthwiseParams& g) {
  constexpr int64_t kHalf = kLanes / 2;
  if (g.width > kHalf) return false;
  for (int64_t half = 0; half < 2; ++half)
    for (int64_t col = 0; col < g.out_w; ++col)
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t src_col = g.input_col(col, kw);
        const int64_t lane = (half * kHalf + src_col + kLanes) % kLanes;
        const int64_t lane_col = lane % kHalf;  // the column the lane holds, if any
        const bool own_half = lane / kHalf == half;
        const bool zero = lane_col >= g.width;
        const bool right = own_half && lane_col == src_col;
        if (!zero && !right) return false;
      }
  return true;
}

// One column chunk of G vectors of planes of one channel: src[g] and dst[g] point at the
// chunk's first column. With kPair (rows of at most 8) vector g holds two images' rows, plane
// 2g in lanes 0-7 and plane 2g + 1 in lanes 8-15: two masked loads per vector, half the FMAs.
// Step s loads source row s - pad_h (when it exists) and adds it into output rows s - kh;
// output row s starts at step s in ring slot s % K and is complete, and stored, after step
// s + K - 1. With kRotate (pairs whose rows fit with zero lanes to spare: rotation_fits) a
// source row pair is loaded once, zero above each row, and each tap column's vector is that
// vector rotated by kw - pad_w lanes: a read past a row's end or before its start lands on
// zeros. Two loads and K permutes per row pair instead of 2K masked loads. geo is a copy:
// the AVX-512 stores may alias anything, so fields read through a reference would be reloaded
// after every store.
template <int K, int G, bool kPair, bool kRotate = false>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void correlate_chunk(
    float* const* dst_planes, const float* const* src_planes, const DepthwiseParams geo,
    const __m512 (&w)[K][K], __m512 init, const uint16_t* mask, __mmask16 valid) {
  constexpr int P = kPair ? 2 : 1;  // planes per vector
  const float* src[G * P];
  float* dst[G * P];
  __m512 acc[G][K];
  for (int i = 0; i < G * P; ++i) {
    // (the pointers advance with the steps: the source's by a row, the output's once a row
    // is stored; a pair's second plane is read and written 8 lanes up)
    const int64_t up = i % P == 1 ? kLanes / 2 : 0;
    src[i] = src_planes[i] - geo.pad_h * geo.width - geo.pad_w - up;
    dst[i] = dst_planes[i] - up;
  }
  for (int g = 0; g < G; ++g)
    for (int k = 0; k < K; ++k) acc[g][k] = init;
  __mmask16 m[K][P];
  for (int kw = 0; kw < K; ++kw) {
    m[kw][0] = mask[kw];
    if (kPair) m[kw][P - 1] = static_cast<__mmask16>(mask[kw] << 8);
  }
  const __mmask16 stored[2] = {valid, static_cast<__mmask16>(valid << 8)};
  const __mmask16 row_mask[2] = {lanes_below(geo.width),
                                 static_cast<__mmask16>(lanes_below(geo.width) << 8)};
  __m512i rotate[K];
  for (int kw = 0; kw < K; ++kw) rotate[kw] = rotation(kw - geo.pad_w);
  const int64_t steps = geo.out_h + K - 1, src_w = geo.width, dst_w = geo.out_w;
  const int64_t first = geo.pad_h, last = geo.pad_h + geo.height;  // steps with a source row
  for (int64_t s0 = 0; s0 < steps; s0 += K) {
    unrolled<K>([&](auto step) CVOPS_AVX512_LAMBDA {
      constexpr int u = decltype(step)::value;
      const int64_t s = s0 + u;
      if (s >= steps) return;
      for (int g = 0; g < G; ++g) acc[g][u] = init;
      if (s >= first && s < last) {
        if constexpr (kRotate) {
          for (int g = 0; g < G; ++g) {
            __m512 row = _mm512_maskz_loadu_ps(row_mask[0], src[2 * g] + geo.pad_w);
            row = _mm512_mask_loadu_ps(row, row_mask[1], src[2 * g + 1] + geo.pad_w);
            unrolled<K>([&](auto column) CVOPS_AVX512_LAMBDA {
              constexpr int kw = decltype(column)::value;
              const __m512 v = _mm512_permutexvar_ps(rotate[kw], row);
              for (int kh = 0; kh < K; ++kh) {
                __m512& a = acc[g][(u - kh + K) % K];
                a = _mm512_fmadd_ps(w[kh][kw], v, a);
              }
            });
          }
        } else {
          unrolled<K>([&](auto column) CVOPS_AVX512_LAMBDA {
            constexpr int kw = decltype(column)::value;
            for (int g = 0; g < G; ++g) {
              __m512 v = _mm512_maskz_loadu_ps(m[kw][0], src[g * P] + kw);
              if (kPair) v = _mm512_mask_loadu_ps(v, m[kw][P - 1], src[g * P + P - 1] + kw);
              for (int kh = 0; kh < K; ++kh) {
                __m512& a = acc[g][(u - kh + K) % K];
                a = _mm512_fmadd_ps(w[kh][kw], v, a);
              }
            }
          });
        }
      }
      for (int i = 0; i < G * P; ++i) src[i] += src_w;
      if (s >= K - 1) {
        for (int i = 0; i < G * P; ++i) {
          _mm512_mask_storeu_ps(dst[i], stored[i % P], acc[i / P][(u + 1) % K]);
          dst[i] += dst_w;
        }
      }
    });
  }
}

// G vectors of images (planes of 2G images with kPair) per group.
template <int K, int G, bool kPair, bool kRotate>
CVOPS_TARGET_AVX512 void correlate_channels(const Job& j, const Columns& cols, int64_t begin,
                                            int64_t end) {
  constexpr int64_t kGroup = kPair ? 2 * G : G;  // images per group
  const DepthwiseParams geo = j.p;
  const int64_t src_plane = geo.height * geo.width, dst_plane = geo.out_h * geo.out_w;
  const int64_t src_image = geo.channels * src_plane, dst_image = geo.channels * dst_plane;
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[K][K];
    broadcast_taps<K>(w, j.taps + c * K * K);
    const __m512 init = _mm512_set1_ps(j.bias != nullptr ? j.bias[c] : 0.f);
    for (int64_t n = 0; n < geo.batch;) {
      const int64_t count = std::min<int64_t>(kGroup, geo.batch - n);
      // (masked loads do not train the hardware prefetchers: fetch the next channel's planes)
      if (c + 1 < end)
        for (int64_t g = 0; g < count; ++g) {
          prefetch_floats(j.src + (n + g) * src_image + (c + 1) * src_plane, src_plane);
        }
      for (int64_t ch = 0; ch < cols.chunks; ++ch) {
        const float* src[kGroup];
        float* dst[kGroup];
        for (int64_t g = 0; g < count; ++g) {
          src[g] = j.src + (n + g) * src_image + c * src_plane + ch * kLanes;
          dst[g] = j.dst + (n + g) * dst_image + c * dst_plane + ch * kLanes;
        }
        const uint16_t* mask = cols.mask.data() + ch * K;
        const __mmask16 valid = cols.valid[ch];
        if (count == kGroup) {
          correlate_chunk<K, G, kPair, kRotate>(dst, src, geo, w, init, mask, valid);
        } else {  // the batch's last, short group: one image at a time
          for (int64_t g = 0; g < count; ++g)
            correlate_chunk<K, 1, false>(dst + g, src + g, geo, w, init, mask, valid);
        }
      }
      n += count;
    }
  }
}

// Wide rows (more than kChunkWalkMaxWidth outputs): one image at a time, B adjacent column
// chunks of a row (a band) walking down the plane together, each with its own masks. The plane
// is read once per band, row after row, instead of once per chunk (a chunk walk down a plane of
// 56 or 112 columns reads every row's lines again for each chunk, and G planes of that size do
// not stay in L1). dst and src point at the band's first column.
template <int K, int B>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void correlate_band(
    float* dst, const float* src, const DepthwiseParams geo, const __m512 (&w)[K][K], __m512 init,
    const uint16_t* mask, const uint16_t* valid, bool stream) {
  // (at 7x7 the 49 taps do not fit in registers beside the accumulators: the FMAs read them
  // from the stack, an L1 load each, still fewer loads than loading every tap's input)
  __m512 acc[B][K];
  for (int b = 0; b < B; ++b)
    for (int k = 0; k < K; ++k) acc[b][k] = init;
  src -= geo.pad_h * geo.width + geo.pad_w;
  const int64_t steps = geo.out_h + K - 1, src_w = geo.width, dst_w = geo.out_w;
  const int64_t first = geo.pad_h, last = geo.pad_h + geo.height;  // steps with a source row
  for (int64_t s0 = 0; s0 < steps; s0 += K) {
    unrolled<K>([&](auto step) CVOPS_AVX512_LAMBDA {
      constexpr int u = decltype(step)::value;
      const int64_t s = s0 + u;
      if (s >= steps) return;
      for (int b = 0; b < B; ++b) acc[b][u] = init;
      if (s >= first && s < last) {
        if (s + kRowsAhead < last) prefetch_floats(src + kRowsAhead * src_w, B * kLanes);
        unrolled<K>([&](auto column) CVOPS_AVX512_LAMBDA {
          constexpr int kw = decltype(column)::value;
          for (int b = 0; b < B; ++b) {
            const __m512 v = _mm512_maskz_loadu_ps(mask[b * K + kw], src + b * kLanes + kw);
            for (int kh = 0; kh < K; ++kh) {
              __m512& a = acc[b][(u - kh + K) % K];
              a = _mm512_fmadd_ps(w[kh][kw], v, a);
            }
          }
        });
      }
      src += src_w;
      if (s >= K - 1) {
        for (int b = 0; b < B; ++b) {
          float* out = dst + b * kLanes;
          if (stream && valid[b] == 0xFFFF && (reinterpret_cast<uintptr_t>(out) & 63) == 0)
            _mm512_stream_ps(out, acc[b][(u + 1) % K]);
          else
            _mm512_mask_storeu_ps(out, valid[b], acc[b][(u + 1) % K]);
        }
        dst += dst_w;
      }
    });
  }
}

// correlate_band for a band of `count` <= B chunks.
template <int K, int B>
CVOPS_TARGET_AVX512 void correlate_short_band(int64_t count, float* dst, const float* src,
                                              const DepthwiseParams geo, const __m512 (&w)[K][K],
                                              __m512 init, const uint16_t* mask,
                                              const uint16_t* valid, bool stream) {
  if (count == B) {
    correlate_band<K, B>(dst, src, geo, w, init, mask, valid, stream);
  } else if constexpr (B > 1) {
    correlate_short_band<K, B - 1>(count, dst, src, geo, w, init, mask, valid, stream);
  }
}

template <int K, int B>
CVOPS_TARGET_AVX512 void correlate_wide_channels(const Job& j, const Columns& cols, int64_t begin,
                                                 int64_t end) {
  const DepthwiseParams geo = j.p;
  const int64_t src_plane = geo.height * geo.width, dst_plane = geo.out_h * geo.out_w;
  const int64_t src_image = geo.channels * src_plane, dst_image = geo.channels * dst_plane;
  const bool stream = output_streams(geo.batch * geo.channels * dst_plane * int64_t(sizeof(float)));
  // A large output whose rows are not whole lines (56 wide: every other row starts mid-line)
  // is staged: each plane is computed into a scratch plane at the same offset within a line,
  // still in L1, and streamed out whole lines at a time (stream_floats). Streaming the chunks
  // in place would leave half of such lines to ordinary stores and their reads for ownership.
  const bool staged = stream && geo.out_w % kLanes != 0;
  VecBuffer<__m512> scratch(staged ? dst_plane / kLanes + 2 : 0);
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[K][K];
    broadcast_taps<K>(w, j.taps + c * K * K);
    const __m512 init = _mm512_set1_ps(j.bias != nullptr ? j.bias[c] : 0.f);
    for (int64_t n = 0; n < geo.batch; ++n) {
      const float* src = j.src + n * src_image + c * src_plane;
      float* dst = j.dst + n * dst_image + c * dst_plane;
      float* out = dst;
      if (staged)
        out = reinterpret_cast<float*>(scratch.data()) +
              (reinterpret_cast<uintptr_t>(dst) & 63) / sizeof(float);
      for (int64_t ch = 0; ch < cols.chunks; ch += B) {
        const uint16_t* mask = cols.mask.data() + ch * K;
        const uint16_t* valid = cols.valid.data() + ch;
        const int64_t at = ch * kLanes;
        // (the row's last band may be short)
        correlate_short_band<K, B>(std::min<int64_t>(B, cols.chunks - ch), out + at, src + at, geo,
                                   w, init, mask, valid, stream && !staged);
      }
      if (staged) stream_floats(dst, out, dst_plane);
    }
  }
  if (stream) _mm_sfence();  // the streamed stores are visible before the op returns
}

// Images per group, by kernel size: enough accumulators in flight to hide the FMA latency,
// few enough that the ring, the taps and a loaded vector fit the 32 registers.
template <int K>
CVOPS_TARGET_AVX512 void correlate_channels(const Job& j, const Columns& cols, int64_t begin,
                                            int64_t end) {
  constexpr int G = K == 3 ? 4 : 2;
  if (j.p.out_w > kLanes / 2)
    correlate_channels<K, G, false, false>(j, cols, begin, end);
  else if (rotation_fits(j.p))
    correlate_channels<K, G, true, true>(j, cols, begin, end);
  else
    correlate_channels<K, G, true, false>(j, cols, begin, end);
}

// dst = bias (or 0) + the stride-1 correlation of src with the taps, geometry j.p.
void correlate(const Job& j) {
  const Columns cols = columns_of(j.p);
  const int64_t K = j.p.kernel_h;
  const int64_t work = j.p.batch * j.p.out_h * cols.chunks * kLanes * K * j.p.kernel_w;
  at::parallel_for(0, j.p.channels, parallel_grain(work), [&](int64_t begin, int64_t end) {
    if (j.p.out_w > kChunkWalkMaxWidth) {
      if (K == 3)
        correlate_wide_channels<3, kBandChunks3x3>(j, cols, begin, end);
      else if (K == 5)
        correlate_wide_channels<5, 2>(j, cols, begin, end);
      else
        correlate_wide_channels<7, 2>(j, cols, begin, end);
      return;
    }
    switch (K) {
      case 3: correlate_channels<3>(j, cols, begin, end); break;
      case 5: correlate_channels<5>(j, cols, begin, end); break;
      case 7: correlate_channels<7>(j, cols, begin, end); break;
      default: TORCH_INTERNAL_ASSERT(false, "bad kernel size");
    }
  });
}

// The weight gradient of one channel, 3x3: walking down the input plane as the correlation
// does, step s loads output-gradient row s into a ring of the last K rows and input row
// s - pad_h as K shifted vectors; tap (kh, kw) accumulates gradient row s - kh times shifted
// vector kw. K * K accumulators are K * K independent FMA chains. With kPair (rows of at
// most 8) a vector holds two images' rows, lanes 0-7 and 8-15 (an odd batch's last image
// alone, its partner's masks empty): half the FMAs. With kRotate (as in the correlation) an
// input row pair is loaded once and rotated into the K shifted vectors, lanes that are no
// output zeroed: a zero gradient lane times an infinite input would be a NaN.
template <int K, bool kPair, bool kRotate>
CVOPS_TARGET_AVX512 void weight_grad_channel(const Job& j, const Columns& cols, int64_t c) {
  constexpr int P = kPair ? 2 : 1;  // images per vector
  const DepthwiseParams& p = j.p;
  const int64_t g_plane = p.out_h * p.out_w, x_plane = p.height * p.width;
  const int64_t g_image = p.channels * g_plane, x_image = p.channels * x_plane;
  const int64_t g_w = p.out_w, x_w = p.width, grad_h = p.out_h;
  const int64_t steps = grad_h + K - 1, first = p.pad_h, last = p.pad_h + p.height;
  __m512 acc[K][K], acc_bias;
  zero_sums<K>(acc, acc_bias);
  __m512i rotate[K];  // with kRotate: input column l + kw - pad_w into lane l
#pragma GCC unroll 16
  for (int kw = 0; kw < K; ++kw) rotate[kw] = rotation(kw - p.pad_w);
  for (int64_t n = 0; n < p.batch; n += P) {
    const bool both = kPair && n + 1 < p.batch;
    const float* g_base = j.grad + n * g_image + c * g_plane;
    const float* x_base = j.src + n * x_image + c * x_plane;
    prefetch_images<P>(j, c, n);
    for (int64_t ch = 0; ch < cols.chunks; ++ch) {
      // the pair's second image: lanes 8-15, read 8 floats before its row
      __mmask16 m[K][P], valid[P];
      const float* gp[P];
      const float* xp[P];
#pragma GCC unroll 2
      for (int i = 0; i < P; ++i) {
        const bool present = i == 0 || both;
        valid[i] = present ? static_cast<__mmask16>(cols.valid[ch] << (8 * i)) : 0;
#pragma GCC unroll 16
        for (int kw = 0; kw < K; ++kw)
          m[kw][i] = present ? static_cast<__mmask16>(cols.mask[ch * K + kw] << (8 * i)) : 0;
        gp[i] = g_base + i * g_image + ch * kLanes - 8 * i;
        xp[i] = x_base + i * x_image + ch * kLanes - p.pad_h * x_w - p.pad_w - 8 * i;
      }
      const __mmask16 row_mask[2] = {lanes_below(p.width),
                                     static_cast<__mmask16>(both ? lanes_below(p.width) << 8 : 0)};
      const __mmask16 outputs = valid[0] | valid[P - 1];
      __m512 ring[K];
#pragma GCC unroll 16
      for (int k = 0; k < K; ++k) ring[k] = _mm512_setzero_ps();
      for (int64_t s = 0; s < steps; ++s) {
        // ring[k]: gradient row s - k (zero outside the gradient, and then not used)
#pragma GCC unroll 16
        for (int k = K - 1; k > 0; --k) ring[k] = ring[k - 1];
        ring[0] = _mm512_setzero_ps();
        if (s < grad_h) {
          ring[0] = _mm512_maskz_loadu_ps(valid[0], gp[0]);
          if (kPair) ring[0] = _mm512_mask_loadu_ps(ring[0], valid[P - 1], gp[P - 1]);
          acc_bias = _mm512_add_ps(acc_bias, ring[0]);
#pragma GCC unroll 2
          for (int i = 0; i < P; ++i) gp[i] += g_w;
        }
        if (s >= first && s < last) {
          // Only gradient rows that exist, kh in [lo, hi]: 0 * an infinite input would be a
          // NaN that the true sum does not have.
          const int64_t lo = std::max<int64_t>(0, s - grad_h + 1);
          const int64_t hi = std::min<int64_t>(K - 1, s);
          __m512 row = _mm512_setzero_ps();
          if (kRotate) {
            row = _mm512_maskz_loadu_ps(row_mask[0], xp[0] + p.pad_w);
            row = _mm512_mask_loadu_ps(row, row_mask[1], xp[P - 1] + p.pad_w);
          }
          // the tap column kw's input vector
          const auto shifted = [&](int kw) CVOPS_AVX512_LAMBDA {
            if (kRotate) return _mm512_maskz_permutexvar_ps(outputs, rotate[kw], row);
            __m512 v = _mm512_maskz_loadu_ps(m[kw][0], xp[0] + kw);
            if (kPair) v = _mm512_mask_loadu_ps(v, m[kw][P - 1], xp[P - 1] + kw);
            return v;
          };
          if (lo == 0 && hi == K - 1) {
#pragma GCC unroll 16
            for (int kw = 0; kw < K; ++kw) {
              const __m512 v = shifted(kw);
#pragma GCC unroll 16
              for (int kh = 0; kh < K; ++kh)
                acc[kh][kw] = _mm512_fmadd_ps(ring[kh], v, acc[kh][kw]);
            }
          } else {
#pragma GCC unroll 16
            for (int kw = 0; kw < K; ++kw) {
              const __m512 v = shifted(kw);
#pragma GCC unroll 16
              for (int kh = 0; kh < K; ++kh)
                if (kh >= lo && kh <= hi) acc[kh][kw] = _mm512_fmadd_ps(ring[kh], v, acc[kh][kw]);
            }
          }
        }
#pragma GCC unroll 2
        for (int i = 0; i < P; ++i) xp[i] += x_w;
      }
    }
  }
  store_sums<K>(j.result + c * (K * K + 1), acc, acc_bias);
}

// The weight gradient of one channel for rows wider than kChunkWalkMaxWidth (up to one band),
// 3x3: one image at a time, a band of B adjacent column chunks walks down the planes together
// (as correlate_band does), so each row's lines are read once, not once per chunk. Step s
// loads the band's gradient row s into each chunk's ring of the last K rows and input row
// s - pad_h as K shifted vectors per chunk; tap (kh, kw) accumulates gradient row s - kh times
// the shifted vector kw of every chunk, in chunk order.
template <int K, int B>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void weight_grad_band(
    __m512 (&acc)[K][K], __m512& acc_bias, const float* gp, const float* xp,
    const DepthwiseParams& p, const uint16_t* mask, const uint16_t* valid) {
  const int64_t g_w = p.out_w, x_w = p.width, grad_h = p.out_h;
  const int64_t steps = grad_h + K - 1, first = p.pad_h, last = p.pad_h + p.height;
  xp -= p.pad_h * x_w + p.pad_w;
  __m512 ring[B][K];
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) ring[b][k] = _mm512_setzero_ps();
  for (int64_t s = 0; s < steps; ++s) {
    // ring[b][k]: chunk b's gradient row s - k (zero outside the gradient, and then not used)
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
#pragma GCC unroll 16
      for (int k = K - 1; k > 0; --k) ring[b][k] = ring[b][k - 1];
      ring[b][0] = _mm512_setzero_ps();
    }
    if (s < grad_h) {
      if (s + kRowsAhead < grad_h) prefetch_floats(gp + kRowsAhead * g_w, B * kLanes);
#pragma GCC unroll 16
      for (int b = 0; b < B; ++b) {
        ring[b][0] = _mm512_maskz_loadu_ps(valid[b], gp + b * kLanes);
        acc_bias = _mm512_add_ps(acc_bias, ring[b][0]);
      }
      gp += g_w;
    }
    if (s >= first && s < last) {
      if (s + kRowsAhead < last) prefetch_floats(xp + kRowsAhead * x_w, B * kLanes);
      // Only gradient rows that exist, kh in [lo, hi]: 0 * an infinite input would be a NaN
      // that the true sum does not have.
      const int64_t lo = std::max<int64_t>(0, s - grad_h + 1);
      const int64_t hi = std::min<int64_t>(K - 1, s);
#pragma GCC unroll 16
      for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
        for (int kw = 0; kw < K; ++kw) {
          const __m512 v = _mm512_maskz_loadu_ps(mask[b * K + kw], xp + b * kLanes + kw);
#pragma GCC unroll 16
          for (int kh = 0; kh < K; ++kh)
            if (kh >= lo && kh <= hi) acc[kh][kw] = _mm512_fmadd_ps(ring[b][kh], v, acc[kh][kw]);
        }
    }
    xp += x_w;  // input row s - pad_h + 1 next
  }
}

// weight_grad_band for a band of `count` <= B chunks.
template <int K, int B>
CVOPS_TARGET_AVX512 void weight_grad_short_band(int64_t count, __m512 (&acc)[K][K],
                                                __m512& acc_bias, const float* gp, const float* xp,
                                                const DepthwiseParams& p, const uint16_t* mask,
                                                const uint16_t* valid) {
  if (count == B) {
    weight_grad_band<K, B>(acc, acc_bias, gp, xp, p, mask, valid);
  } else if constexpr (B > 1) {
    weight_grad_short_band<K, B - 1>(count, acc, acc_bias, gp, xp, p, mask, valid);
  }
}

template <int K, int B>
CVOPS_TARGET_AVX512 void weight_grad_wide_channel(const Job& j, const Columns& cols, int64_t c) {
  const DepthwiseParams& p = j.p;
  const int64_t g_plane = p.out_h * p.out_w, x_plane = p.height * p.width;
  const int64_t g_image = p.channels * g_plane, x_image = p.channels * x_plane;
  __m512 acc[K][K], acc_bias;
  zero_sums<K>(acc, acc_bias);
  for (int64_t n = 0; n < p.batch; ++n) {
    const float* g_base = j.grad + n * g_image + c * g_plane;
    const float* x_base = j.src + n * x_image + c * x_plane;
    for (int64_t ch = 0; ch < cols.chunks; ch += B) {
      const int64_t at = ch * kLanes;
      // (the row's last band may be short)
      weight_grad_short_band<K, B>(std::min<int64_t>(B, cols.chunks - ch), acc, acc_bias,
                                   g_base + at, x_base + at, p, cols.mask.data() + ch * K,
                                   cols.valid.data() + ch);
    }
  }
  store_sums<K>(j.result + c * (K * K + 1), acc, acc_bias);
}

// ---- stride2_512: 3x3, stride 2 ----
// Output c of a row reads input columns 2c + d, d = kw - pad_w. For 16 outputs from column
// 16 * chunk, two masked loads of 16 input columns each from 32 * chunk + 2q (q = floor(d / 2),
// zero outside the row) and one two-source permute of their even (d even) or odd lanes give
// the 16 inputs of tap column kw. The three d of a kernel row share two such load pairs.
// Rows: output row r reads input rows 2r - pad_h + kh. Row 2r - pad_h + 2 (kh = 2) is row
// 2(r + 1) - pad_h + 0 of the next output row, so its three tap vectors are kept for it: two
// new input rows per output row, 8 loads, 6 permutes and 9 FMAs per 16 outputs. Rows outside
// the input are zero vectors. kImages images of one channel run together and share the taps.

namespace stride2 {

constexpr int kImages = 2;  // 2 x (3 kept + 3 new tap vectors) + 9 taps fit the registers

// Per call, per column chunk: the output lanes and the masks of the two load pairs.
struct Columns {
  int64_t chunks;
  int64_t q0;      // the first load pair starts at input column 32 * chunk + 2 * q0
  bool odd_first;  // d = -pad_w is odd: kw 0 takes pair 0's odd lanes, kw 1 and 2 pair 1's
  std::vector<uint16_t> valid;  // [chunk]
  std::vector<uint16_t> mask;   // [chunk][pair][lo, hi]
};

Columns columns_of(const DepthwiseParams& p) {
  Columns c;
  c.chunks = (p.out_w + kLanes - 1) / kLanes;
  const int64_t d0 = p.input_col(0, 0);  // -pad_w
  c.odd_first = (d0 % 2) != 0;
  c.q0 = c.odd_first ? (d0 - 1) / 2 : d0 / 2;  // floor(d0 / 2), d0 <= 0
  c.valid.resize(c.chunks);
  c.mask.resize(c.chunks * 4);
  for (int64_t ch = 0; ch < c.chunks; ++ch) {
    c.valid[ch] = lanes_below(p.out_w - ch * kLanes);
    for (int64_t pair = 0; pair < 2; ++pair)
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t start = 32 * ch + 2 * (c.q0 + pair) + kLanes * half;
        uint16_t m = 0;
        for (int64_t l = 0; l < kLanes; ++l)
          if (start + l >= 0 && start + l < p.width) m |= uint16_t(1u << l);
        c.mask[(ch * 2 + pair) * 2 + half] = m;
      }
  }
  return c;
}

// The _mm512_permutex2var_ps indices of the even lanes of two vectors (0, 2, ..., 30); the odd
// ones are these plus one.
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline __m512i even_lanes() {
  return _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}

// The three tap-column vectors of one input row (zero when the row is outside the input):
// v[kw][l] = row[2 * (16 * chunk + l) + kw - pad_w]. row points at the chunk's load base.
// kShort (a chunk with at most 15 outputs): lane 15 is not stored, so pair 1 (pair 0 two
// columns on) need not be loaded; its lanes 0-14 are pair 0's lanes 2-31, picked by the
// permutes with indices two higher: two loads per row instead of four.
template <bool kOddFirst, bool kShort>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void tap_columns(__m512 (&v)[3], const float* row,
                                                                bool inside, const __mmask16* m,
                                                                __m512i even, __m512i odd) {
  if (!inside) {
    v[0] = v[1] = v[2] = _mm512_setzero_ps();
    return;
  }
  const __m512 a0 = _mm512_maskz_loadu_ps(m[0], row), a1 = _mm512_maskz_loadu_ps(m[1], row + 16);
  if (kShort) {  // (lane 15 of the shifted picks zeroed: the weight gradient multiplies it)
    const __m512i two = _mm512_set1_epi32(2);
    const __mmask16 low15 = 0x7FFF;
    if (kOddFirst) {
      v[0] = _mm512_permutex2var_ps(a0, odd, a1);
      v[1] = _mm512_maskz_permutex2var_ps(low15, a0, _mm512_add_epi32(even, two), a1);
      v[2] = _mm512_maskz_permutex2var_ps(low15, a0, _mm512_add_epi32(odd, two), a1);
    } else {
      v[0] = _mm512_permutex2var_ps(a0, even, a1);
      v[1] = _mm512_permutex2var_ps(a0, odd, a1);
      v[2] = _mm512_maskz_permutex2var_ps(low15, a0, _mm512_add_epi32(even, two), a1);
    }
    return;
  }
  const __m512 b0 = _mm512_maskz_loadu_ps(m[2], row + 2),
               b1 = _mm512_maskz_loadu_ps(m[3], row + 18);
  if (kOddFirst) {  // d = -1, 0, 1 (pad 1): pair 0 odd lanes, pair 1 even and odd
    v[0] = _mm512_permutex2var_ps(a0, odd, a1);
    v[1] = _mm512_permutex2var_ps(b0, even, b1);
    v[2] = _mm512_permutex2var_ps(b0, odd, b1);
  } else {  // d = 0, 1, 2 (pad 0): pair 0 even and odd, pair 1 even
    v[0] = _mm512_permutex2var_ps(a0, even, a1);
    v[1] = _mm512_permutex2var_ps(a0, odd, a1);
    v[2] = _mm512_permutex2var_ps(b0, even, b1);
  }
}

// The output rows [begin, end) whose new input rows, 2r - pad_h + 1 and + 2, both exist (row
// 2r - pad_h is the previous output row's last). They are walked with no bounds checks,
// compiled apart from the rows that need them: the checks and their branches were a third of
// the loop.
struct InnerRows {
  int64_t begin, end;
};
InnerRows inner_rows(const DepthwiseParams& p) {
  // 2r - pad_h + 1 >= 0 from r = pad_h / 2; 2r - pad_h + 2 <= in_h - 1 until (in_h + pad_h - 1) / 2
  const int64_t end = std::min<int64_t>(p.out_h, (p.height + p.pad_h - 1) / 2);
  return {std::min<int64_t>(p.pad_h / 2, end), end};
}

// The walk down one column chunk of G planes of one channel (in[g]: the chunk's load base):
// f(g, r, kept, v1, v2) for each output row r and image g, with the tap vectors (tap_columns)
// of the input rows 2r - pad_h (kept from the row before), 2r - pad_h + 1 and 2r - pad_h + 2.
template <bool kOddFirst, bool kShort, int G, typename F>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void walk_chunk(const float* const* in,
                                                               const DepthwiseParams& p,
                                                               const __mmask16* m, F&& f) {
  const __m512i even = even_lanes(), odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const int64_t in_h = p.height, in_w = p.width, out_h = p.out_h;
  // (the masks as values: read through `m` they were reloaded for every row)
  const __mmask16 masks[4] = {m[0], m[1], kShort ? __mmask16(0) : m[2],
                              kShort ? __mmask16(0) : m[3]};
  const auto columns = [&](__m512(&v)[3], int g, int64_t i, auto checked) CVOPS_AVX512_LAMBDA {
    const bool inside = !decltype(checked)::value || (i >= 0 && i < in_h);
    tap_columns<kOddFirst, kShort>(v, in[g] + i * in_w, inside, masks, even, odd);
  };
  __m512 kept[G][3];
  int64_t row = p.input_row(0, 0);  // 2r - pad_h
  for (int g = 0; g < G; ++g) columns(kept[g], g, row, std::true_type());
  const InnerRows inner = inner_rows(p);
  const auto output_row = [&](int64_t r, auto checked) CVOPS_AVX512_LAMBDA {
    for (int g = 0; g < G; ++g) {
      __m512 v1[3], v2[3];
      columns(v1, g, row + 1, checked);
      columns(v2, g, row + 2, checked);
      f(g, r, kept[g], v1, v2);
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) kept[g][kw] = v2[kw];
    }
  };
  for (int64_t r = 0; r < out_h; ++r, row += 2) {
    if (r >= inner.begin && r < inner.end)
      output_row(r, std::false_type());
    else
      output_row(r, std::true_type());
  }
}

template <bool kOddFirst>
CVOPS_TARGET_AVX512 void forward_channels(const Job& j, const Columns& cols, int64_t begin,
                                          int64_t end) {
  const DepthwiseParams& p = j.p;
  const int64_t in_plane = p.height * p.width, out_plane = p.out_h * p.out_w, out_w = p.out_w;
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[3][3];
    broadcast_taps<3>(w, j.taps + c * 9);
    const __m512 init = _mm512_set1_ps(j.bias != nullptr ? j.bias[c] : 0.f);
    for (int64_t n = 0; n < p.batch;) {
      const int64_t count = std::min<int64_t>(kImages, p.batch - n);
      for (int64_t ch = 0; ch < cols.chunks; ++ch) {
        const __mmask16* m = reinterpret_cast<const __mmask16*>(cols.mask.data()) + ch * 4;
        const __mmask16 valid = cols.valid[ch];
        const float* in[kImages];
        float* out[kImages];
        for (int64_t g = 0; g < count; ++g) {
          in[g] = j.src + ((n + g) * p.channels + c) * in_plane + 32 * ch + 2 * cols.q0;
          out[g] = j.dst + ((n + g) * p.channels + c) * out_plane + ch * kLanes;
        }
        // output row r of one image from the tap vectors of its three input rows: a sum per
        // kernel row (three chains of three FMAs, not one of nine)
        const auto output_row = [&](float* o, int64_t r, const __m512(&kept)[3],
                                    const __m512(&v1)[3],
                                    const __m512(&v2)[3]) CVOPS_AVX512_LAMBDA {
          __m512 a0 = init, a1 = _mm512_mul_ps(w[1][0], v1[0]), a2 = _mm512_mul_ps(w[2][0], v2[0]);
          a0 = _mm512_fmadd_ps(w[0][0], kept[0], a0);
#pragma GCC unroll 2
          for (int kw = 1; kw < 3; ++kw) {
            a0 = _mm512_fmadd_ps(w[0][kw], kept[kw], a0);
            a1 = _mm512_fmadd_ps(w[1][kw], v1[kw], a1);
            a2 = _mm512_fmadd_ps(w[2][kw], v2[kw], a2);
          }
          _mm512_mask_storeu_ps(o + r * out_w, valid, _mm512_add_ps(a0, _mm512_add_ps(a1, a2)));
        };
        // kImages images at once, or the batch's last one alone; a short chunk compiled apart
        const auto chunk = [&](auto images, auto short_chunk) CVOPS_AVX512_LAMBDA {
          constexpr int G = decltype(images)::value;
          for (int64_t g0 = 0; g0 < count; g0 += G) {
            walk_chunk<kOddFirst, decltype(short_chunk)::value, G>(
                in + g0, p, m, [&](int g, int64_t r, const auto&... v) CVOPS_AVX512_LAMBDA {
                  output_row(out[g0 + g], r, v...);
                });
          }
        };
        const bool group = count == kImages;
        if (valid != 0xFFFF) {
          if (group)
            chunk(std::integral_constant<int, kImages>(), std::true_type());
          else
            chunk(std::integral_constant<int, 1>(), std::true_type());
        } else if (group) {
          chunk(std::integral_constant<int, kImages>(), std::false_type());
        } else {
          chunk(std::integral_constant<int, 1>(), std::false_type());
        }
      }
      n += count;
    }
  }
}

// The weight gradient of one channel: output row r's gradient times the tap vectors of its
// three input rows, into one accumulator per tap (nine independent FMA chains).
template <bool kOddFirst>
CVOPS_TARGET_AVX512 void weight_grad_channel(const Job& j, const Columns& cols, int64_t c) {
  const DepthwiseParams& p = j.p;
  const int64_t in_plane = p.height * p.width, out_plane = p.out_h * p.out_w, out_w = p.out_w;
  __m512 acc[3][3], acc_bias;
  zero_sums<3>(acc, acc_bias);
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t ch = 0; ch < cols.chunks; ++ch) {
      const __mmask16* m = reinterpret_cast<const __mmask16*>(cols.mask.data()) + ch * 4;
      const __mmask16 valid = cols.valid[ch];
      const float* in = j.src + (n * p.channels + c) * in_plane + 32 * ch + 2 * cols.q0;
      const float* gp = j.grad + (n * p.channels + c) * out_plane + ch * kLanes;
      const auto chunk = [&](auto short_chunk) CVOPS_AVX512_LAMBDA {
        walk_chunk<kOddFirst, decltype(short_chunk)::value, 1>(
            &in, p, m,
            [&](int, int64_t r, const auto& kept, const auto& v1, const auto& v2)
                CVOPS_AVX512_LAMBDA {
                  const __m512 gv = _mm512_maskz_loadu_ps(valid, gp + r * out_w);
                  acc_bias = _mm512_add_ps(acc_bias, gv);
#pragma GCC unroll 3
                  for (int kw = 0; kw < 3; ++kw) {
                    acc[0][kw] = _mm512_fmadd_ps(gv, kept[kw], acc[0][kw]);
                    acc[1][kw] = _mm512_fmadd_ps(gv, v1[kw], acc[1][kw]);
                    acc[2][kw] = _mm512_fmadd_ps(gv, v2[kw], acc[2][kw]);
                  }
                });
      };
      if (valid != 0xFFFF)
        chunk(std::true_type());
      else
        chunk(std::false_type());
    }
  }
  store_sums<3>(j.result + c * 10, acc, acc_bias);
}

// The input gradient. Input column 2m + e (e = 0, 1) receives tap column kw from gradient
// column m + shift[kw] when d = kw - pad_w has parity e, shift = (e - d) / 2: for pad 1,
// even columns take kw 1 from m, odd ones kw 0 from m + 1 and kw 2 from m. A gradient row is
// loaded at the two shifts (masked to the gradient's columns), its nine FMAs go into the even
// and odd halves of the three input rows it reaches (2r - pad_h + kh), and the halves of a
// finished row are interleaved by two permutes into 32 columns and stored.
struct InputColumns {
  int64_t chunks;               // of 32 input columns
  int64_t shift[2];             // the two gradient column shifts, shift[1] = shift[0] + 1
  std::vector<uint16_t> mask;   // [chunk][load]: gradient lanes inside the gradient
  std::vector<uint16_t> store;  // [chunk][lo, hi]: input columns inside the input
};

// Per kw, by the parity of pad_w: the load (0: shift[0], 1: shift[1]) and the half (0 even
// input columns, 1 odd) it goes to. pad_w odd (d = -1, 0, 1 for pad 1): kw 0 is odd from
// m + 1, kw 1 even from m, kw 2 odd from m. pad_w even (d = 0, 1, 2): kw 0 even from m, kw 1
// odd from m, kw 2 even from m - 1.
template <bool kOddPad>
struct InputTaps {
  static constexpr int load[3] = {1, kOddPad ? 0 : 1, 0};
  static constexpr int half[3] = {kOddPad ? 1 : 0, kOddPad ? 0 : 1, kOddPad ? 1 : 0};
};

InputColumns input_columns_of(const DepthwiseParams& p) {
  InputColumns c;
  c.chunks = (p.width + 31) / 32;
  // shift = (e - d) / 2 for d = kw - pad_w of parity e; the smaller of the two is kw 2's
  const int64_t d2 = p.input_col(0, 2), e2 = ((d2 % 2) + 2) % 2;
  c.shift[0] = (e2 - d2) / 2;
  c.shift[1] = c.shift[0] + 1;
  c.mask.resize(c.chunks * 2);
  c.store.resize(c.chunks * 2);
  for (int64_t ch = 0; ch < c.chunks; ++ch) {
    for (int k = 0; k < 2; ++k) {
      uint16_t m = 0;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t col = kLanes * ch + l + c.shift[k];
        if (col >= 0 && col < p.out_w) m |= uint16_t(1u << l);
      }
      c.mask[ch * 2 + k] = m;
      c.store[ch * 2 + k] = lanes_below(p.width - 32 * ch - kLanes * k);
    }
  }
  return c;
}

// One chunk of 32 input columns of G images of one channel.
template <bool kOddPad, int G>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void input_grad_chunk(
    float* const* gi, const float* const* grad, const DepthwiseParams& p, const InputColumns& cols,
    const __m512 (&w)[3][3], int64_t ch) {
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
  const int64_t in_h = p.height, in_w = p.width, out_h = p.out_h, out_w = p.out_w;
  const __mmask16 m0 = cols.mask[ch * 2], m1 = cols.mask[ch * 2 + 1];
  const __mmask16 s0 = cols.store[ch * 2], s1 = cols.store[ch * 2 + 1];
  const int64_t col = 32 * ch;
  // input row i's even and odd halves -> 32 columns
  auto store_row = [&](float* plane, int64_t i, __m512 even, __m512 odd) CVOPS_AVX512_LAMBDA {
    if (i < 0 || i >= in_h) return;
    float* dst = plane + i * in_w + col;
    _mm512_mask_storeu_ps(dst, s0, _mm512_permutex2var_ps(even, lo_idx, odd));
    _mm512_mask_storeu_ps(dst + kLanes, s1, _mm512_permutex2var_ps(even, hi_idx, odd));
  };
  __m512 carry[G][2];  // row 2r - pad_h: kernel row 2 of gradient row r - 1 so far
  for (int g = 0; g < G; ++g) carry[g][0] = carry[g][1] = _mm512_setzero_ps();
  int64_t top = p.input_row(0, 0);  // 2r - pad_h
  for (int64_t r = 0; r < out_h; ++r, top += 2) {
    for (int g = 0; g < G; ++g) {
      const float* gr = grad[g] + r * out_w + kLanes * ch;
      const __m512 v[2] = {_mm512_maskz_loadu_ps(m0, gr + cols.shift[0]),
                           _mm512_maskz_loadu_ps(m1, gr + cols.shift[1])};
      __m512 rows[3][2] = {{carry[g][0], carry[g][1]},
                           {_mm512_setzero_ps(), _mm512_setzero_ps()},
                           {_mm512_setzero_ps(), _mm512_setzero_ps()}};
#pragma GCC unroll 3
      for (int kh = 0; kh < 3; ++kh)
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; ++kw) {
          __m512& a = rows[kh][InputTaps<kOddPad>::half[kw]];
          a = _mm512_fmadd_ps(w[kh][kw], v[InputTaps<kOddPad>::load[kw]], a);
        }
      store_row(gi[g], top, rows[0][0], rows[0][1]);
      store_row(gi[g], top + 1, rows[1][0], rows[1][1]);
      carry[g][0] = rows[2][0];
      carry[g][1] = rows[2][1];
    }
  }
  // the last row reached, then rows no tap reaches (zero)
  for (int g = 0; g < G; ++g) {
    store_row(gi[g], top, carry[g][0], carry[g][1]);
    for (int64_t i = std::max<int64_t>(top + 1, 0); i < in_h; ++i)
      store_row(gi[g], i, _mm512_setzero_ps(), _mm512_setzero_ps());
  }
}

template <bool kOddPad>
CVOPS_TARGET_AVX512 void input_grad_channels(const Job& j, const InputColumns& cols, int64_t begin,
                                             int64_t end) {
  const DepthwiseParams& p = j.p;
  const int64_t in_plane = p.height * p.width, out_plane = p.out_h * p.out_w;
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[3][3];
    broadcast_taps<3>(w, j.taps + c * 9);
    for (int64_t n = 0; n < p.batch;) {
      const int64_t count = std::min<int64_t>(kImages, p.batch - n);
      const float* g[kImages];
      float* gi[kImages];
      for (int64_t k = 0; k < count; ++k) {
        g[k] = j.grad + ((n + k) * p.channels + c) * out_plane;
        gi[k] = j.dst + ((n + k) * p.channels + c) * in_plane;
      }
      for (int64_t ch = 0; ch < cols.chunks; ++ch) {
        if (count == kImages) {
          input_grad_chunk<kOddPad, kImages>(gi, g, p, cols, w, ch);
        } else {
          for (int64_t k = 0; k < count; ++k)
            input_grad_chunk<kOddPad, 1>(gi + k, g + k, p, cols, w, ch);
        }
      }
      n += count;
    }
  }
}

// f(begin, end) over the channels of a stride-2 call whose rows are `chunks` vectors wide.
template <typename F>
void over_channels(const DepthwiseParams& p, int64_t chunks, const F& f) {
  at::parallel_for(0, p.channels, parallel_grain(p.batch * p.out_h * chunks * kLanes * 9), f);
}

}  // namespace stride2

// ---- backward512: both gradients of 3x3, stride 1, padding 1, rows of at most 15 ----
// Separately, the input gradient (the rows512 correlation) and the weight gradient each walk
// the output gradient; here one walk down a plane serves both. Step t loads output-gradient
// row t once:
//  - input gradient: grad_input row t - 1 + kh gains tap row kh times the row's three column
//    shifts (rotations of the loaded row); rows live in a ring of three accumulators, and
//    row t - 1 is complete, and stored, after step t;
//  - weight gradient: input row t - 1 is loaded once and rotated into its three column
//    shifts; tap (kh, kw) gains gradient row t - kh (a ring of the last three) times shift
//    kw. Only gradient rows that exist are multiplied (0 times an infinite input would be a
//    NaN the true sum does not have), and lanes that are no output are zeroed in the shifts.
// A vector holds one image's row (rows of 8-15) or two images' rows (rows of at most 7, lanes
// 0-7 and 8-15). The row and its zero lanes above make every column shift a rotation: a read
// one before a row's start wraps onto zeros, one past its end reads its own zero lane. Per
// step: two row loads, six permutes, 18 multiply-adds.
// Each input-gradient row is a sum of three partial sums, one per tap row, each computed on
// its own (a multiply and two FMAs) and added into the ring: one add per step on the ring's
// dependency chain, not three FMAs, as one pair of images is all there is to overlap.

// One channel, all images, P images per vector (P = 2: rows of at most 7).
template <int P>
CVOPS_TARGET_AVX512 void backward_channel(const Job& j, int64_t c) {
  constexpr int K = 3;
  const DepthwiseParams& p = j.p;
  const int64_t H = p.height, W = p.width, plane = H * W, image = p.channels * plane;
  __m512 w[K][K];
  broadcast_taps<K>(w, j.taps + c * K * K);
  // rotate[d + 1]: lane l takes lane l + d. Input-gradient shift kw reads gradient column
  // l + 1 - kw (rotate[2 - kw]); weight-gradient shift kw reads input column l + kw - 1.
  const __m512i rotate[K] = {rotation(-1), rotation(0), rotation(1)};
  __m512 dw[K][K], db;
  zero_sums<K>(dw, db);
  const uint16_t row = lanes_below(W);
  for (int64_t n = 0; n < p.batch; n += P) {
    const bool both = P == 2 && n + 1 < p.batch;
    // image n + i in lanes 8i..: its pointers 8i floats before its rows
    __mmask16 m[P];
    const float* gp[P];
    const float* xp[P];
    float* gip[P];
    for (int i = 0; i < P; ++i) {
      m[i] = i == 0 || both ? static_cast<__mmask16>(row << (8 * i)) : 0;
      const int64_t offset = (n + i) * image + c * plane - 8 * i;
      gp[i] = j.grad + offset;
      xp[i] = j.src + offset;   // input row t - 1 once t >= 1
      gip[i] = j.dst + offset;  // grad_input row t - 1 once t >= 1
    }
    const __mmask16 outputs = P == 2 ? m[0] | m[P - 1] : m[0];
    prefetch_images<P>(j, c, n);
    // ring[t % 3]: gradient row t; acc[r % 3]: grad_input row r (rows t - 1 .. t + 1 at t)
    __m512 ring[K], acc[K];
    unrolled<K>([&](auto k) CVOPS_AVX512_LAMBDA {
      ring[k] = _mm512_setzero_ps();
      acc[k] = _mm512_setzero_ps();
    });
    for (int64_t t0 = 0; t0 <= H; t0 += K) {
      unrolled<K>([&](auto step) CVOPS_AVX512_LAMBDA {
        constexpr int u = decltype(step)::value;  // t % 3
        const int64_t t = t0 + u;
        if (t > H) return;
        __m512 g = _mm512_setzero_ps();
        if (t < H) {
          g = _mm512_maskz_loadu_ps(m[0], gp[0]);
          if (P == 2) g = _mm512_mask_loadu_ps(g, m[P - 1], gp[P - 1]);
          db = _mm512_add_ps(db, g);
        }
        ring[u] = g;
        if (t >= 1) {  // input row t - 1 (t <= H): weight gradient
          __m512 x = _mm512_maskz_loadu_ps(m[0], xp[0]);
          if (P == 2) x = _mm512_mask_loadu_ps(x, m[P - 1], xp[P - 1]);
          // tap row kh pairs it with gradient row t - kh, which exists for kh in [lo, hi]
          const bool all_rows = t >= 2 && t < H;
          const int64_t lo = std::max<int64_t>(0, t - H + 1), hi = std::min<int64_t>(2, t);
          unrolled<K>([&](auto column) CVOPS_AVX512_LAMBDA {
            constexpr int kw = decltype(column)::value;
            const __m512 shifted = _mm512_maskz_permutexvar_ps(outputs, rotate[kw], x);
            unrolled<K>([&](auto tap_row) CVOPS_AVX512_LAMBDA {
              constexpr int kh = decltype(tap_row)::value;
              if (all_rows || (kh >= lo && kh <= hi))
                dw[kh][kw] = _mm512_fmadd_ps(ring[(u - kh + K) % K], shifted, dw[kh][kw]);
            });
          });
        }
        if (t < H) {  // gradient row t: input gradient rows t - 1 + kh
          __m512 shifted[K];
          unrolled<K>([&](auto column) CVOPS_AVX512_LAMBDA {
            constexpr int kw = decltype(column)::value;
            shifted[kw] = _mm512_permutexvar_ps(rotate[K - 1 - kw], g);
          });
          unrolled<K>([&](auto tap_row) CVOPS_AVX512_LAMBDA {
            constexpr int kh = decltype(tap_row)::value;
            __m512 part = _mm512_mul_ps(w[kh][0], shifted[0]);
            part = _mm512_fmadd_ps(w[kh][1], shifted[1], part);
            part = _mm512_fmadd_ps(w[kh][2], shifted[2], part);
            __m512& a = acc[(u + kh + K - 1) % K];
            a = _mm512_add_ps(a, part);
          });
        }
        // grad_input row t - 1 is complete (row -1 is not stored); its slot starts row t + 2
        __m512& done = acc[(u + K - 1) % K];
        if (t >= 1) {
          for (int i = 0; i < P; ++i) _mm512_mask_storeu_ps(gip[i], m[i], done);
        }
        done = _mm512_setzero_ps();
        for (int i = 0; i < P; ++i) {
          gp[i] += W;
          if (t >= 1) {
            xp[i] += W;
            gip[i] += W;
          }
        }
      });
    }
  }
  store_sums<K>(j.result + c * (K * K + 1), dw, db);
}

const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<float>() : nullptr;
}

// The rows512 correlation's rule, on the correlation's geometry g.
bool correlation_applies(const DepthwiseCall& call, const DepthwiseParams& g) {
  return avx512_float_nchw(call) && g.unit_stride() && g.undilated() &&
         (g.square(3) || g.square(5) || g.square(7)) && g.out_h > 0 && g.out_w > 0;
}

}  // namespace

bool stride2_512_applies(const DepthwiseCall& call, DepthwiseDirection direction) {
  const DepthwiseParams& p = call.p;
  return direction != DepthwiseDirection::kBackward && avx512_float_nchw(call) && p.stride_h == 2 &&
         p.stride_w == 2 && p.undilated() && p.square(3) && p.out_h > 0 && p.out_w > 0 &&
         p.out_w <= kStride2MaxWidth && p.pad_h >= 0 && p.pad_w >= 0;
}

bool rows512_applies(const DepthwiseCall& call, DepthwiseDirection direction) {
  const DepthwiseParams& p = call.p;
  switch (direction) {
    case DepthwiseDirection::kForward: return correlation_applies(call, p);
    case DepthwiseDirection::kInputGrad:
      return correlation_applies(call, p.input_grad_as_correlation());
    case DepthwiseDirection::kWeightGrad:
      return avx512_float_nchw(call) && p.unit_stride() && p.undilated() && p.square(3) &&
             p.out_h > 0 && p.out_w > 0 && p.out_w <= kBandChunks3x3 * kLanes;
    default: return false;
  }
}

bool backward512_applies(const DepthwiseCall& call, DepthwiseDirection direction) {
  const DepthwiseParams& p = call.p;
  // A row and at least one zero lane above it fill a vector (or a half of one, rows <= 7).
  return direction == DepthwiseDirection::kBackward && avx512_float_nchw(call) && p.square(3) &&
         p.unit_stride() && p.pad_h == 1 && p.pad_w == 1 && p.undilated() && p.batch > 0 &&
         p.width >= 1 && p.width < kLanes && p.height >= 1;
}

void stride2_512_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                         at::Tensor& output, const DepthwiseParams& p) {
  const Job j{.src = input.const_data_ptr<float>(),
              .taps = weight.const_data_ptr<float>(),
              .bias = data_or_null(bias),
              .dst = output.mutable_data_ptr<float>(),
              .p = p};
  const stride2::Columns cols = stride2::columns_of(p);
  stride2::over_channels(p, cols.chunks, [&](int64_t begin, int64_t end) {
    if (cols.odd_first)
      stride2::forward_channels<true>(j, cols, begin, end);
    else
      stride2::forward_channels<false>(j, cols, begin, end);
  });
}

void stride2_512_backward_input(const at::Tensor& grad, const at::Tensor& weight,
                                at::Tensor& grad_input, const DepthwiseParams& p) {
  const Job j{.grad = grad.const_data_ptr<float>(),
              .taps = weight.const_data_ptr<float>(),
              .dst = grad_input.mutable_data_ptr<float>(),
              .p = p};
  const stride2::InputColumns cols = stride2::input_columns_of(p);
  stride2::over_channels(p, cols.chunks, [&](int64_t begin, int64_t end) {
    if (p.pad_w % 2 != 0)
      stride2::input_grad_channels<true>(j, cols, begin, end);
    else
      stride2::input_grad_channels<false>(j, cols, begin, end);
  });
}

void stride2_512_backward_weight(const at::Tensor& grad, const at::Tensor& input,
                                 at::Tensor& result, const DepthwiseParams& p) {
  const Job j{.src = input.const_data_ptr<float>(),
              .grad = grad.const_data_ptr<float>(),
              .result = result.mutable_data_ptr<float>(),
              .p = p};
  const stride2::Columns cols = stride2::columns_of(p);
  stride2::over_channels(p, cols.chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (cols.odd_first)
        stride2::weight_grad_channel<true>(j, cols, c);
      else
        stride2::weight_grad_channel<false>(j, cols, c);
    }
  });
}

void rows512_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                     at::Tensor& output, const DepthwiseParams& p) {
  correlate(Job{.src = input.const_data_ptr<float>(),
                .taps = weight.const_data_ptr<float>(),
                .bias = data_or_null(bias),
                .dst = output.mutable_data_ptr<float>(),
                .p = p});
}

// The output gradient correlated with the taps flipped in both directions.
void rows512_backward_input(const at::Tensor& grad, const at::Tensor& weight,
                            at::Tensor& grad_input, const DepthwiseParams& p) {
  const int64_t KK = p.kernel_h * p.kernel_w;
  const float* w = weight.const_data_ptr<float>();
  std::vector<float> flipped(p.channels * KK);
  for (int64_t c = 0; c < p.channels; ++c)
    for (int64_t t = 0; t < KK; ++t) flipped[c * KK + t] = w[c * KK + KK - 1 - t];
  correlate(Job{.src = grad.const_data_ptr<float>(),
                .taps = flipped.data(),
                .dst = grad_input.mutable_data_ptr<float>(),
                .p = p.input_grad_as_correlation()});
}

void rows512_backward_weight(const at::Tensor& grad, const at::Tensor& input, at::Tensor& result,
                             const DepthwiseParams& p) {
  const Job j{.src = input.const_data_ptr<float>(),
              .grad = grad.const_data_ptr<float>(),
              .result = result.mutable_data_ptr<float>(),
              .p = p};
  const Columns cols = columns_of(p);
  const int64_t work = p.batch * p.out_h * cols.chunks * kLanes * p.kernel_h * p.kernel_h;
  const bool paired = p.out_w <= kLanes / 2;
  const bool rotated = paired && rotation_fits(p);
  at::parallel_for(0, p.channels, parallel_grain(work), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (p.out_w > kChunkWalkMaxWidth)
        weight_grad_wide_channel<3, kBandChunks3x3>(j, cols, c);
      else if (rotated)
        weight_grad_channel<3, true, true>(j, cols, c);
      else if (paired)
        weight_grad_channel<3, true, false>(j, cols, c);
      else
        weight_grad_channel<3, false, false>(j, cols, c);
    }
  });
}

void backward512_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                          at::Tensor& grad_input, at::Tensor& result, const DepthwiseParams& p) {
  const Job j{.src = input.const_data_ptr<float>(),
              .grad = grad.const_data_ptr<float>(),
              .taps = weight.const_data_ptr<float>(),
              .dst = grad_input.mutable_data_ptr<float>(),
              .result = result.mutable_data_ptr<float>(),
              .p = p};
  const bool paired = p.width < kLanes / 2;
  const int64_t work = p.batch * p.height * kLanes * 2 * 9 / (paired ? 2 : 1);
  at::parallel_for(0, p.channels, parallel_grain(work), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (paired)
        backward_channel<2>(j, c);
      else
        backward_channel<1>(j, c);
    }
  });
}

}  // namespace cvops

#else  // no AVX-512 target: no kernel applies

namespace cvops {

bool stride2_512_applies(const DepthwiseCall&, DepthwiseDirection) { return false; }
bool rows512_applies(const DepthwiseCall&, DepthwiseDirection) { return false; }
bool backward512_applies(const DepthwiseCall&, DepthwiseDirection) { return false; }

// (never called: the dispatcher runs a kernel only where its *_applies said yes)
#define CVOPS_DW_STUBS(name)                                                                \
  void name##_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, \
                      const DepthwiseParams&) {}                                            \
  void name##_backward_input(const at::Tensor&, const at::Tensor&, at::Tensor&,             \
                             const DepthwiseParams&) {}                                     \
  void name##_backward_weight(const at::Tensor&, const at::Tensor&, at::Tensor&,            \
                              const DepthwiseParams&) {}
CVOPS_DW_STUBS(stride2_512)
CVOPS_DW_STUBS(rows512)
#undef CVOPS_DW_STUBS
void backward512_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                          at::Tensor&, const DepthwiseParams&) {}

}  // namespace cvops

#endif  // CVOPS_HAS_AVX2_TARGET
