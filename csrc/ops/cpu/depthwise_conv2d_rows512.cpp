// Depthwise 2-D convolution CPU kernels: the AVX-512 row correlation (float32, NCHW, stride 1,
// dilation 1, square K x K kernels, K = 3, 5, 7), used by the masked path
// (depthwise_conv2d_masked.cpp) for the forward and the stride-1 input gradient.
//
// A vector holds 16 outputs of one row (a row of up to 16, or a 16-wide column chunk of a
// wider one). The masked kernel loads every tap of every output vector: K * K unaligned
// loads per 16 outputs, and at about one such load per cycle the loads, not the FMAs, bound
// it. Here the kernel walks down the plane one source row at a time instead: the row's K
// shifted vectors (masked loads, zero where the tap falls in the padding) are loaded once and
// each feeds the K output rows that read it, held in a ring of K accumulators. That is K
// loads and K * K FMAs per 16 outputs, FMA-bound. G images of one channel run together and
// share the taps, which stay in registers. Rows of at most 8 hold two images per vector, and
// where such a pair fits 8 lanes with zero lanes to spare (3x3 on 7x7) one loaded row pair is
// rotated into the K tap columns (rotation_fits). Rows wider than 32 are walked a band of
// chunks of one image at a time (correlate_band).
//
// Measured on MobileNetV2's small planes (3x3, one thread, 2026-11-29): [8,384,14,14] 61 us
// against 146 us for the channel-blocked correlation, [8,960,7,7] 70 us against 99 us.
#include "ops/cpu/depthwise_conv2d_rows512.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/avx512_utils.h"
#include "common/cpu_utils.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>
#define CVOPS_DW_ROWS512 1
#else
#define CVOPS_DW_ROWS512 0
#endif

namespace cvops {
namespace {

#if CVOPS_DW_ROWS512

constexpr int64_t kLanes = 16;
// Widest row (outputs) the chunk walk takes (correlate_channels: column chunks of several
// images at a time); wider rows take the band walk (correlate_band), see rows512_applies.
constexpr int64_t kMaxWidth = 32;
// Column chunks per band of the 3x3 band walks (correlate_band, weight_grad_band): with the
// ring of 3 rows per chunk, 4 chunks fill the registers.
constexpr int kBandChunks3x3 = 4;
// Rows the band walks prefetch ahead of the one they load (masked loads do not train the
// hardware prefetchers).
constexpr int64_t kRowsAhead = 4;

// Per call: the column chunks of the destination rows and each kernel column's load mask.
struct Columns {
  int64_t chunks;
  std::vector<uint16_t> valid;  // [chunk]: lanes that are outputs
  std::vector<uint16_t> mask;   // [chunk][kw]: output lanes whose tap column is in the source
};

// Output columns [0, dst_w) read source columns col + kw - pad_w of [0, src_w).
Columns columns_of(int64_t dst_w, int64_t src_w, int64_t kw_count, int64_t pad_w) {
  Columns c;
  c.chunks = (dst_w + kLanes - 1) / kLanes;
  c.valid.resize(c.chunks);
  c.mask.resize(c.chunks * kw_count);
  for (int64_t ch = 0; ch < c.chunks; ++ch) {
    c.valid[ch] = lanes_below(dst_w - ch * kLanes);
    for (int64_t kw = 0; kw < kw_count; ++kw) {
      uint16_t m = 0;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t col = ch * kLanes + l, src_col = col + kw - pad_w;
        if (col < dst_w && src_col >= 0 && src_col < src_w) m |= uint16_t(1u << l);
      }
      c.mask[ch * kw_count + kw] = m;
    }
  }
  return c;
}

// Whether a pair of rows (one per 8-lane half, zero above src_w) serves every tap column by
// rotation: each stored output lane's source column, taken modulo 16 lanes, must be a column
// of its own row or one of the zero lanes (a read before the row's start wraps into the
// other half's top lanes, one past its end reads its own).
bool rotation_fits(int64_t dst_w, int64_t src_w, int64_t kw_count, int64_t pad_w) {
  constexpr int64_t kHalf = kLanes / 2;
  if (src_w > kHalf) return false;
  for (int64_t half = 0; half < 2; ++half)
    for (int64_t col = 0; col < dst_w; ++col)
      for (int64_t kw = 0; kw < kw_count; ++kw) {
        const int64_t lane = (half * kHalf + col + kw - pad_w + kLanes) % kLanes;
        const int64_t lane_col = lane % kHalf;  // the column the lane holds, if any
        const bool own_half = lane / kHalf == half;
        const bool zero = lane_col >= src_w;
        const bool right = own_half && lane_col == col + kw - pad_w;
        if (!zero && !right) return false;
      }
  return true;
}

// The geometry a chunk loop needs, as plain values: the AVX-512 stores may alias anything,
// so fields read through a reference would be reloaded after every store.
struct RowGeometry {
  int64_t src_h, src_w, dst_h, dst_w, pad_h, pad_w;
};

// Channel c's taps, each broadcast to a vector; returns its bias (or zero) broadcast, the
// accumulators' start.
template <int K>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline __m512 channel_taps(const PlaneCorrelation& j,
                                                                   int64_t c,
                                                                   __m512 (&w)[K][K]) {
#pragma GCC unroll 16
  for (int kh = 0; kh < K; ++kh)
#pragma GCC unroll 16
    for (int kw = 0; kw < K; ++kw) w[kh][kw] = _mm512_set1_ps(j.taps[(c * K + kh) * K + kw]);
  return _mm512_set1_ps(j.bias != nullptr ? j.bias[c] : 0.f);
}

// One column chunk of G vectors of planes of one channel: src[g] and dst[g] point at the
// chunk's first column. With kPair (rows of at most 8) vector g holds two images' rows, plane
// 2g in lanes 0-7 and plane 2g + 1 in lanes 8-15: two masked loads per vector, half the FMAs.
// Step s loads source row s - pad_h (when it exists) and adds it into output rows s - kh;
// output row s starts at step s in ring slot s % K and is complete, and stored, after step
// s + K - 1. With kRotate (pairs whose rows fit with zero lanes to spare: rotation_fits) a
// source row pair is loaded once, zero above each row, and each tap column's vector is that
// vector rotated by kw - pad_w lanes: a read past a row's end or before its start lands on
// zeros. Two loads and K permutes per row pair instead of 2K masked loads.
template <int K, int G, bool kPair, bool kRotate = false>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void correlate_chunk(
    float* const* dst_planes, const float* const* src_planes, const RowGeometry geo,
    const __m512 (&w)[K][K], __m512 init, const uint16_t* mask, __mmask16 valid) {
  constexpr int P = kPair ? 2 : 1;  // planes per vector
  const float* src[G * P];
  float* dst[G * P];
  __m512 acc[G][K];
  for (int i = 0; i < G * P; ++i) {
    // (the pointers advance with the steps: the source's by a row, the output's once a row
    // is stored; a pair's second plane is read and written 8 lanes up)
    const int64_t up = i % P == 1 ? kLanes / 2 : 0;
    src[i] = src_planes[i] - geo.pad_h * geo.src_w - geo.pad_w - up;
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
  const __mmask16 row_mask[2] = {lanes_below(geo.src_w),
                                 static_cast<__mmask16>(lanes_below(geo.src_w) << 8)};
  __m512i rotate[K];
  for (int kw = 0; kw < K; ++kw) rotate[kw] = rotation(kw - geo.pad_w);
  const int64_t steps = geo.dst_h + K - 1, src_w = geo.src_w, dst_w = geo.dst_w;
  const int64_t first = geo.pad_h, last = geo.pad_h + geo.src_h;  // steps with a source row
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
CVOPS_TARGET_AVX512 void correlate_channels(const PlaneCorrelation& j, const Columns& cols,
                                            int64_t begin, int64_t end) {
  constexpr int64_t kGroup = kPair ? 2 * G : G;  // images per group
  const int64_t src_plane = j.src_h * j.src_w, dst_plane = j.dst_h * j.dst_w;
  const int64_t src_image = j.channels * src_plane, dst_image = j.channels * dst_plane;
  const RowGeometry geo{j.src_h, j.src_w, j.dst_h, j.dst_w, j.pad_h, j.pad_w};
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[K][K];
    const __m512 init = channel_taps<K>(j, c, w);
    for (int64_t n = 0; n < j.batch;) {
      const int64_t count = std::min<int64_t>(kGroup, j.batch - n);
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

// Wide rows (more than kMaxWidth outputs): one image at a time, B adjacent column chunks of
// a row (a band) walking down the plane together, each with its own masks. The plane is read
// once per band, row after row, instead of once per chunk (a chunk walk down a plane of 56 or
// 112 columns reads every row's lines again for each chunk, and G planes of that size do not
// stay in L1). dst and src point at the band's first column.
template <int K, int B>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void correlate_band(
    float* dst, const float* src, const RowGeometry geo, const __m512 (&w)[K][K], __m512 init,
    const uint16_t* mask, const uint16_t* valid, bool stream) {
  // (at 7x7 the 49 taps do not fit in registers beside the accumulators: the FMAs read them
  // from the stack, an L1 load each, still fewer loads than the masked kernel's)
  __m512 acc[B][K];
  for (int b = 0; b < B; ++b)
    for (int k = 0; k < K; ++k) acc[b][k] = init;
  src -= geo.pad_h * geo.src_w + geo.pad_w;
  const int64_t steps = geo.dst_h + K - 1, src_w = geo.src_w, dst_w = geo.dst_w;
  const int64_t first = geo.pad_h, last = geo.pad_h + geo.src_h;  // steps with a source row
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
                                              const RowGeometry geo, const __m512 (&w)[K][K],
                                              __m512 init, const uint16_t* mask,
                                              const uint16_t* valid, bool stream) {
  if (count == B) {
    correlate_band<K, B>(dst, src, geo, w, init, mask, valid, stream);
  } else if constexpr (B > 1) {
    correlate_short_band<K, B - 1>(count, dst, src, geo, w, init, mask, valid, stream);
  }
}

template <int K, int B>
CVOPS_TARGET_AVX512 void correlate_wide_channels(const PlaneCorrelation& j, const Columns& cols,
                                                 int64_t begin, int64_t end) {
  const int64_t src_plane = j.src_h * j.src_w, dst_plane = j.dst_h * j.dst_w;
  const int64_t src_image = j.channels * src_plane, dst_image = j.channels * dst_plane;
  const RowGeometry geo{j.src_h, j.src_w, j.dst_h, j.dst_w, j.pad_h, j.pad_w};
  const bool stream = output_streams(j.batch * j.channels * dst_plane * int64_t(sizeof(float)));
  // A large output whose rows are not whole lines (56 wide: every other row starts mid-line)
  // is staged: each plane is computed into a scratch plane at the same offset within a line,
  // still in L1, and streamed out whole lines at a time (stream_floats). Streaming the chunks
  // in place would leave half of such lines to ordinary stores and their reads for ownership.
  const bool staged = stream && j.dst_w % kLanes != 0;
  VecBuffer<__m512> scratch(staged ? dst_plane / kLanes + 2 : 0);
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[K][K];
    const __m512 init = channel_taps<K>(j, c, w);
    for (int64_t n = 0; n < j.batch; ++n) {
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
        correlate_short_band<K, B>(std::min<int64_t>(B, cols.chunks - ch), out + at, src + at,
                                   geo, w, init, mask, valid, stream && !staged);
      }
      if (staged) stream_floats(dst, out, dst_plane);
    }
  }
  if (stream) _mm_sfence();  // the streamed stores are visible before the op returns
}

// Images per group, by kernel size: enough accumulators in flight to hide the FMA latency,
// few enough that the ring, the taps and a loaded vector fit the 32 registers.
template <int K>
CVOPS_TARGET_AVX512 void correlate_channels(const PlaneCorrelation& j, const Columns& cols,
                                            int64_t begin, int64_t end) {
  constexpr int G = K == 3 ? 4 : 2;
  if (j.dst_w > kLanes / 2)
    correlate_channels<K, G, false, false>(j, cols, begin, end);
  else if (rotation_fits(j.dst_w, j.src_w, K, j.pad_w))
    correlate_channels<K, G, true, true>(j, cols, begin, end);
  else
    correlate_channels<K, G, true, false>(j, cols, begin, end);
}

// Channel c's weight and bias gradient: the accumulators' lanes summed (sum_lanes).
template <int K>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void store_channel_sums(
    const PlaneWeightGrad& j, int64_t c, const __m512 (&acc)[K][K], __m512 acc_bias) {
  float* res = j.result + c * (K * K + 1);
  // (unrolled, like every loop over acc: a run-time index would keep acc in memory)
#pragma GCC unroll 16
  for (int kh = 0; kh < K; ++kh)
#pragma GCC unroll 16
    for (int kw = 0; kw < K; ++kw) res[kh * K + kw] = sum_lanes(acc[kh][kw]);
  res[K * K] = sum_lanes(acc_bias);
}

// The weight gradient of one channel, 3x3: walking down the input plane as the correlation
// does, step s loads output-gradient row s into a ring of the last K rows and input row
// s - pad_h as K shifted vectors; tap (kh, kw) accumulates gradient row s - kh times shifted
// vector kw. K * K accumulators are K * K independent FMA chains. With kPair (rows of at
// most 8) a vector holds two images' rows, lanes 0-7 and 8-15 (an odd batch's last image
// alone, its partner's masks empty): half the FMAs. Images, chunks and steps run in a fixed
// order, so the sums do not depend on the thread count. With kRotate (as in the
// correlation) an input row pair is loaded once and rotated into the K shifted vectors, lanes
// that are no output zeroed: a zero gradient lane times an infinite input would be a NaN.
template <int K, bool kPair, bool kRotate>
CVOPS_TARGET_AVX512 void weight_grad_channel(const PlaneWeightGrad& j, const Columns& cols,
                                             int64_t c) {
  constexpr int P = kPair ? 2 : 1;  // images per vector
  const int64_t g_plane = j.grad_h * j.grad_w, x_plane = j.input_h * j.input_w;
  const int64_t g_image = j.channels * g_plane, x_image = j.channels * x_plane;
  const int64_t g_w = j.grad_w, x_w = j.input_w, grad_h = j.grad_h;
  const int64_t steps = grad_h + K - 1, first = j.pad_h, last = j.pad_h + j.input_h;
  __m512 acc[K][K], acc_bias = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int kh = 0; kh < K; ++kh)
#pragma GCC unroll 16
    for (int kw = 0; kw < K; ++kw) acc[kh][kw] = _mm512_setzero_ps();
  __m512i rotate[K];  // with kRotate: input column l + kw - pad_w into lane l
#pragma GCC unroll 16
  for (int kw = 0; kw < K; ++kw) rotate[kw] = rotation(kw - j.pad_w);
  for (int64_t n = 0; n < j.batch; n += P) {
    const bool both = kPair && n + 1 < j.batch;
    const float* g_base = j.grad + n * g_image + c * g_plane;
    const float* x_base = j.input + n * x_image + c * x_plane;
    // (masked loads do not train the hardware prefetchers: fetch the next images' planes)
    for (int64_t i = P; i < 2 * P && n + i < j.batch; ++i) {
      prefetch_floats(g_base + i * g_image, g_plane);
      prefetch_floats(x_base + i * x_image, x_plane);
    }
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
        xp[i] = x_base + i * x_image + ch * kLanes - j.pad_h * x_w - j.pad_w - 8 * i;
      }
      const __mmask16 row_mask[2] = {lanes_below(j.input_w),
                                     static_cast<__mmask16>(both ? lanes_below(j.input_w) << 8
                                                                 : 0)};
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
            row = _mm512_maskz_loadu_ps(row_mask[0], xp[0] + j.pad_w);
            row = _mm512_mask_loadu_ps(row, row_mask[1], xp[P - 1] + j.pad_w);
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
  store_channel_sums<K>(j, c, acc, acc_bias);
}

// The weight gradient of one channel for rows wider than kMaxWidth (up to one band), 3x3:
// one image at a time, a band of B adjacent column chunks walks down the planes together (as
// correlate_band does), so each row's lines are read once, not once per chunk. Step s loads
// the band's gradient row s into each chunk's ring of the last K rows and input row s - pad_h
// as K shifted vectors per chunk; tap (kh, kw) accumulates gradient row s - kh times the
// shifted vector kw of every chunk, in chunk order. Images, bands, steps and chunks run in a
// fixed order, so the sums do not depend on the thread count.
template <int K, int B>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void weight_grad_band(
    __m512 (&acc)[K][K], __m512& acc_bias, const float* gp, const float* xp,
    const PlaneWeightGrad& j, const uint16_t* mask, const uint16_t* valid) {
  const int64_t g_w = j.grad_w, x_w = j.input_w, grad_h = j.grad_h;
  const int64_t steps = grad_h + K - 1, first = j.pad_h, last = j.pad_h + j.input_h;
  xp -= j.pad_h * x_w + j.pad_w;
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
                                                __m512& acc_bias, const float* gp,
                                                const float* xp, const PlaneWeightGrad& j,
                                                const uint16_t* mask, const uint16_t* valid) {
  if (count == B) {
    weight_grad_band<K, B>(acc, acc_bias, gp, xp, j, mask, valid);
  } else if constexpr (B > 1) {
    weight_grad_short_band<K, B - 1>(count, acc, acc_bias, gp, xp, j, mask, valid);
  }
}

template <int K, int B>
CVOPS_TARGET_AVX512 void weight_grad_wide_channel(const PlaneWeightGrad& j, const Columns& cols,
                                                  int64_t c) {
  const int64_t g_plane = j.grad_h * j.grad_w, x_plane = j.input_h * j.input_w;
  const int64_t g_image = j.channels * g_plane, x_image = j.channels * x_plane;
  __m512 acc[K][K], acc_bias = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int kh = 0; kh < K; ++kh)
#pragma GCC unroll 16
    for (int kw = 0; kw < K; ++kw) acc[kh][kw] = _mm512_setzero_ps();
  for (int64_t n = 0; n < j.batch; ++n) {
    const float* g_base = j.grad + n * g_image + c * g_plane;
    const float* x_base = j.input + n * x_image + c * x_plane;
    for (int64_t ch = 0; ch < cols.chunks; ch += B) {
      const int64_t at = ch * kLanes;
      // (the row's last band may be short)
      weight_grad_short_band<K, B>(std::min<int64_t>(B, cols.chunks - ch), acc, acc_bias,
                                   g_base + at, x_base + at, j, cols.mask.data() + ch * K,
                                   cols.valid.data() + ch);
    }
  }
  store_channel_sums<K>(j, c, acc, acc_bias);
}

#endif  // CVOPS_DW_ROWS512

}  // namespace

bool rows512_applies(const PlaneCorrelation& j) {
#if CVOPS_DW_ROWS512
  const bool square = j.kh_count == j.kw_count &&
                      (j.kh_count == 3 || j.kh_count == 5 || j.kh_count == 7);
  // Rows wider than kMaxWidth take the band walk, which beats the masked kernel at every width
  // measured: a large output is streamed out whole lines at a time, staged when its rows are
  // not whole lines (forward [8,144,56,56] 415 -> 325 us, two threads, same process; 5x5 and
  // 7x7 have the loads to save at any size: [8,144,56,56] 5x5 940 -> 565-780 us,
  // [8,96,56,56] 7x7 1200 -> 770-790).
  return cpu_has_avx512() && square && j.dst_h > 0 && j.dst_w > 0;
#else
  (void)j;
  return false;
#endif
}

bool rows512_weight_grad_applies(const PlaneWeightGrad& j) {
#if CVOPS_DW_ROWS512
  // Rows wider than kMaxWidth: the band walk while one band covers a row (each line read
  // once). Wider rows take several bands, each reading the planes again; the masked kernel
  // wins there ([8,32,112,112] 480 against 540 us, [8,16,200,200] 880 against 2090). Measured
  // against the masked kernel, two threads, alternated in one process: [8,32,56,56] 137 ->
  // 80 us, [8,64,64,64] 303 -> 172, [8,144,48,48] 493 -> 367; [8,144,56,56] ~610 both
  // (reading 29 MB from memory).
  return cpu_has_avx512() && j.kernel == 3 && j.grad_h > 0 && j.grad_w > 0 &&
         j.grad_w <= kBandChunks3x3 * kLanes;
#else
  (void)j;
  return false;
#endif
}

void rows512_weight_grad(const PlaneWeightGrad& j) {
#if CVOPS_DW_ROWS512
  const Columns cols = columns_of(j.grad_w, j.input_w, j.kernel, j.pad_w);
  const int64_t work = j.batch * j.grad_h * cols.chunks * kLanes * j.kernel * j.kernel;
  const bool paired = j.grad_w <= kLanes / 2;
  const bool rotated = paired && rotation_fits(j.grad_w, j.input_w, j.kernel, j.pad_w);
  at::parallel_for(0, j.channels, parallel_grain(work), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (j.grad_w > kMaxWidth)
        weight_grad_wide_channel<3, kBandChunks3x3>(j, cols, c);
      else if (rotated)
        weight_grad_channel<3, true, true>(j, cols, c);
      else if (paired)
        weight_grad_channel<3, true, false>(j, cols, c);
      else
        weight_grad_channel<3, false, false>(j, cols, c);
    }
  });
#else
  (void)j;
#endif
}

void rows512_correlate(const PlaneCorrelation& j) {
#if CVOPS_DW_ROWS512
  const Columns cols = columns_of(j.dst_w, j.src_w, j.kw_count, j.pad_w);
  const int64_t work = j.batch * j.dst_h * cols.chunks * kLanes * j.kh_count * j.kw_count;
  at::parallel_for(0, j.channels, parallel_grain(work),
                   [&](int64_t begin, int64_t end) {
                     if (j.dst_w > kMaxWidth) {
                       if (j.kh_count == 3)
                         correlate_wide_channels<3, kBandChunks3x3>(j, cols, begin, end);
                       else if (j.kh_count == 5)
                         correlate_wide_channels<5, 2>(j, cols, begin, end);
                       else
                         correlate_wide_channels<7, 2>(j, cols, begin, end);
                       return;
                     }
                     switch (j.kh_count) {
                       case 3: correlate_channels<3>(j, cols, begin, end); break;
                       case 5: correlate_channels<5>(j, cols, begin, end); break;
                       case 7: correlate_channels<7>(j, cols, begin, end); break;
                       default: TORCH_INTERNAL_ASSERT(false, "bad kernel size");
                     }
                   });
#else
  (void)j;
#endif
}

}  // namespace cvops
