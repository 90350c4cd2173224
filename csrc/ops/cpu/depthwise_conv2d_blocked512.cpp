// Depthwise 2-D convolution CPU kernels: the AVX-512 channel-blocked correlation for small
// planes (float32, NCHW, stride 1, dilation 1), used by the masked path
// (depthwise_conv2d_masked.cpp) for the forward and the stride-1 input gradient.
//
// On 7x7-14x14 planes the masked kernel spends about two cycles per tap and 16 outputs on
// unaligned masked loads. Here a task takes 16 channels of one image instead:
// * 16x16 in-register transposes turn 16 planes into one vector of 16 channels per pixel,
//   stored in a zero-padded buffer [rows][cols] (the padding written once per thread);
// * every tap of every output pixel is one FMA with the tap's 16 weights in a vector; a row
//   of kCols outputs is register-blocked, so each loaded input vector serves KW taps;
// * the result is transposed back, 16 pixels at a time.
// This is oneDNN's design. The two transposes (64 shuffles per 16 pixels each way) cost about
// as much as the 3x3 arithmetic, so it only wins on small planes and more so with larger
// kernels (see kMaxPlane).
#include "ops/cpu/depthwise_conv2d_blocked512.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/avx512_utils.h"
#include "common/cpu_utils.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>
#define CVOPS_DW_B512 1
#else
#define CVOPS_DW_B512 0
#endif

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on _mm512_undefined_ps inside
// _mm512_unpacklo_ps and _mm512_shuffle_f32x4 (a false positive), and VecBuffer<__m512>
// drops __m512's may_alias attribute in the template argument (harmless: the buffers are
// only accessed as __m512).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace cvops {
namespace {

#if CVOPS_DW_B512

constexpr int64_t kLanes = 16;     // channels per task, one float vector
constexpr int64_t kCols = 8;       // output columns register-blocked
constexpr int64_t kMaxKernel = 7;  // taps per kernel row and column
// Largest output plane that takes the blocked correlation. Measured (fp32, 3x3, 2 threads,
// forward and input gradient against the masked kernel, 2026-11-29): 7x7 1.25-1.3x, 14x14
// 1.05-1.15x, 28x28 0.85-1.0x, 56x56 0.6-0.8x; 5x5 and 7x7 kernels on 7x7 and 14x14 planes
// 1.3-1.45x.
constexpr int64_t kMaxPlane = 14 * 14;

// In-place transpose of the 16 x 16 matrix r[row][lane]: unpack, shuffle and two 128-bit
// lane permute steps.
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 8; ++i) {
    const int a = (i / 4) * 8 + i % 4;
    t[a] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0x88);
    t[a + 4] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

// Per call: the padded input buffer's shape and where each pixel goes.
struct Layout {
  int64_t buf_w, buf_h;  // padded input buffer, in vectors
  int64_t out_cols;      // output row pitch in the output buffer: dst_w rounded up to kCols
  std::vector<int32_t> in_at;   // per source pixel: its vector in the input buffer
  std::vector<int32_t> out_at;  // per destination pixel: its vector in the output buffer
};

Layout layout_of(const PlaneCorrelation& j) {
  Layout l;
  l.out_cols = (j.dst_w + kCols - 1) / kCols * kCols;
  l.buf_w = std::max(j.src_w + 2 * j.pad_w, l.out_cols + j.kw_count - 1);
  l.buf_h = j.src_h + 2 * j.pad_h;
  l.in_at.resize(j.src_h * j.src_w);
  for (int64_t r = 0; r < j.src_h; ++r)
    for (int64_t c = 0; c < j.src_w; ++c)
      l.in_at[r * j.src_w + c] = static_cast<int32_t>((r + j.pad_h) * l.buf_w + c + j.pad_w);
  l.out_at.resize(j.dst_h * j.dst_w);
  for (int64_t r = 0; r < j.dst_h; ++r)
    for (int64_t c = 0; c < j.dst_w; ++c)
      l.out_at[r * j.dst_w + c] = static_cast<int32_t>(r * l.out_cols + c);
  return l;
}

// One task: 16 channels from c0 of image n. buf (zero outside the written pixels) and obuf
// are the thread's; w holds the 16 channels' taps as vectors, init their bias.
template <int KW>
CVOPS_TARGET_AVX512 void correlate_block(const PlaneCorrelation& j, const Layout& l, int64_t n,
                                         int64_t c0, const __m512* w, __m512 init,
                                         __m512* __restrict buf, __m512* __restrict obuf) {
  const int64_t src_plane = j.src_h * j.src_w, dst_plane = j.dst_h * j.dst_w;
  const float* src = j.src + (n * j.channels + c0) * src_plane;
  __m512 r[kLanes];
  for (int64_t p0 = 0; p0 < src_plane; p0 += kLanes) {
    const int64_t count = std::min(kLanes, src_plane - p0);
    const __mmask16 m = lanes_below(count);
    for (int c = 0; c < kLanes; ++c) r[c] = _mm512_maskz_loadu_ps(m, src + c * src_plane + p0);
    transpose16(r);
    for (int64_t i = 0; i < count; ++i) buf[l.in_at[p0 + i]] = r[i];
  }
  for (int64_t oh = 0; oh < j.dst_h; ++oh)
    for (int64_t ow = 0; ow < l.out_cols; ow += kCols) {
      __m512 acc[kCols];
      for (int i = 0; i < kCols; ++i) acc[i] = init;
      for (int64_t kh = 0; kh < j.kh_count; ++kh) {
        const __m512* row = buf + (oh + kh) * l.buf_w + ow;
        __m512 in[kCols + KW - 1];
        for (int i = 0; i < kCols + KW - 1; ++i) {
          in[i] = row[i];
          // Keep it in a register: GCC would otherwise fold a load into every FMA, and loads,
          // not FMAs, are what this core runs short of (about one 512-bit load per cycle).
          __asm__("" : "+v"(in[i]));
        }
        const __m512* wk = w + kh * KW;
        for (int kw = 0; kw < KW; ++kw)
          for (int i = 0; i < kCols; ++i) acc[i] = _mm512_fmadd_ps(wk[kw], in[i + kw], acc[i]);
      }
      for (int i = 0; i < kCols; ++i) obuf[oh * l.out_cols + ow + i] = acc[i];
    }
  float* dst = j.dst + (n * j.channels + c0) * dst_plane;
  for (int64_t p0 = 0; p0 < dst_plane; p0 += kLanes) {
    const int64_t count = std::min(kLanes, dst_plane - p0);
    for (int64_t i = 0; i < kLanes; ++i)
      r[i] = i < count ? obuf[l.out_at[p0 + i]] : _mm512_setzero_ps();
    transpose16(r);
    const __mmask16 m = lanes_below(count);
    for (int c = 0; c < kLanes; ++c) _mm512_mask_storeu_ps(dst + c * dst_plane + p0, m, r[c]);
  }
}

template <int KW>
CVOPS_TARGET_AVX512 void correlate_tasks(const PlaneCorrelation& j, const Layout& l,
                                         const float* taps, int64_t begin, int64_t end) {
  VecBuffer<__m512> buf(l.buf_w * l.buf_h);  // zero: the padding stays so
  VecBuffer<__m512> obuf(j.dst_h * l.out_cols);
  const int64_t KK = j.kh_count * KW, blocks = j.channels / kLanes;
  const int64_t block_floats = kLanes * j.src_h * j.src_w;
  for (int64_t task = begin; task < end; ++task) {
    // Image-major: consecutive tasks read consecutive memory.
    const int64_t n = task / blocks, block = task % blocks, c0 = block * kLanes;
    const __m512* w = reinterpret_cast<const __m512*>(taps) + block * KK;
    // (the next block's planes, which follow this one's)
    prefetch_floats(j.src + (n * j.channels + c0) * j.src_h * j.src_w + block_floats,
                    block_floats);
    const __m512 init = j.bias != nullptr ? _mm512_loadu_ps(j.bias + c0) : _mm512_setzero_ps();
    correlate_block<KW>(j, l, n, c0, w, init, buf.data(), obuf.data());
  }
}

#endif  // CVOPS_DW_B512

}  // namespace

bool blocked512_applies(const PlaneCorrelation& j) {
#if CVOPS_DW_B512
  return cpu_has_avx512() && j.channels >= kLanes && j.kh_count <= kMaxKernel &&
         j.kw_count <= kMaxKernel && j.pad_h >= 0 && j.pad_w >= 0 &&
         j.dst_h * j.dst_w <= kMaxPlane &&
         j.dst_h == j.src_h + 2 * j.pad_h - j.kh_count + 1 &&
         j.dst_w == j.src_w + 2 * j.pad_w - j.kw_count + 1;
#else
  (void)j;
  return false;
#endif
}

int64_t blocked512_correlate(const PlaneCorrelation& j) {
#if CVOPS_DW_B512
  const int64_t blocks = j.channels / kLanes, KK = j.kh_count * j.kw_count;
  // The taps transposed: [block][tap] vectors of 16 channels.
  VecBuffer<__m512> tap_vectors(blocks * KK);
  float* taps = reinterpret_cast<float*>(tap_vectors.data());
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t t = 0; t < KK; ++t)
      for (int64_t c = 0; c < kLanes; ++c)
        taps[(b * KK + t) * kLanes + c] = j.taps[(b * kLanes + c) * KK + t];
  const Layout l = layout_of(j);
  const int64_t work = kLanes * j.dst_h * j.dst_w * KK;  // multiply-adds per task
  at::parallel_for(0, blocks * j.batch, parallel_grain(work),
                   [&](int64_t begin, int64_t end) {
                     switch (j.kw_count) {
#define CVOPS_DW_CASE(K) \
  case K: correlate_tasks<K>(j, l, taps, begin, end); break;
                       CVOPS_DW_CASE(1) CVOPS_DW_CASE(2) CVOPS_DW_CASE(3) CVOPS_DW_CASE(4)
                       CVOPS_DW_CASE(5) CVOPS_DW_CASE(6) CVOPS_DW_CASE(7)
#undef CVOPS_DW_CASE
                       default: TORCH_INTERNAL_ASSERT(false, "bad kernel width");
                     }
                   });
  return blocks * kLanes;
#else
  (void)j;
  return 0;
#endif
}

}  // namespace cvops

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
