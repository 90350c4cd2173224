// Depthwise 2-D convolution CPU kernels: AVX-512 row kernels for 3x3 at stride 2 (float32,
// NCHW, dilation 1), used by the masked path (depthwise_conv2d_masked.cpp).
//
// Output c of a row reads input columns 2c + d, d = kw - pad_w. For 16 outputs from column
// 16 * chunk, two masked loads of 16 input columns each from 32 * chunk + 2q (q = floor(d / 2),
// zero outside the row) and one two-source permute of their even (d even) or odd lanes give
// the 16 inputs of tap column kw. The three d of a kernel row share two such load pairs. The
// masked path instead first copied every plane into even and odd column planes and loaded
// each tap of each output vector from them.
//
// Rows: output row r reads input rows 2r - pad_h + kh. Row 2r - pad_h + 2 (kh = 2) is row
// 2(r + 1) - pad_h + 0 of the next output row, so its three tap vectors are kept for it: two
// new input rows per output row, 8 loads, 6 permutes and 9 FMAs per 16 outputs. Rows outside
// the input are zero vectors. G images of one channel run together and share the taps.
#include "ops/cpu/depthwise_conv2d_stride2_512.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/avx512_utils.h"
#include "common/cpu_utils.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>
#define CVOPS_DW_S2_512 1
#else
#define CVOPS_DW_S2_512 0
#endif

namespace cvops {
namespace {

#if CVOPS_DW_S2_512

constexpr int64_t kLanes = 16;
constexpr int kImages = 2;  // images per group: 2 x (3 kept + 3 new tap vectors) + 9 taps
// Widest output the kernels take. They walk down the plane one column chunk at a time, which
// on wide planes costs more locality than the masked path's flat walk: measured (3x3, 2
// threads, 2026-11-29; forward / input gradient / weight gradient, us, against the masked
// path) [8,192,28,28] 70/49/79 vs 91/123/100, [8,144,56,56] 207/413/206 vs 279/522/279, but
// [8,96,112,112] 2065/-/2368 vs 1333/-/1262.
constexpr int64_t kMaxWidth = 32;

// Per call, per column chunk: the output lanes and the masks of the two load pairs.
struct Stride2Columns {
  int64_t chunks;
  int64_t q0;        // the first load pair starts at input column 32 * chunk + 2 * q0
  bool odd_first;    // d = -pad_w is odd: kw 0 takes pair 0's odd lanes, kw 1 and 2 pair 1's
  std::vector<uint16_t> valid;  // [chunk]
  std::vector<uint16_t> mask;   // [chunk][pair][lo, hi]
};

Stride2Columns columns_of(const Stride2Planes& p) {
  Stride2Columns c;
  c.chunks = (p.out_w + kLanes - 1) / kLanes;
  const int64_t d0 = -p.pad_w;
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
          if (start + l >= 0 && start + l < p.in_w) m |= uint16_t(1u << l);
        c.mask[(ch * 2 + pair) * 2 + half] = m;
      }
  }
  return c;
}

// w[kh][kw] = taps[kh * 3 + kw] in every lane.
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void broadcast_taps(__m512 (&w)[3][3],
                                                                   const float* taps) {
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw) w[kh][kw] = _mm512_set1_ps(taps[kh * 3 + kw]);
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
// 2r - pad_h is the previous output row's last).
struct InnerRows {
  int64_t begin, end;
};
InnerRows inner_rows(const Stride2Planes& p) {
  // 2r - pad_h + 1 >= 0 from r = pad_h / 2; 2r - pad_h + 2 <= in_h - 1 until (in_h + pad_h - 1) / 2
  const int64_t end = std::min<int64_t>(p.out_h, (p.in_h + p.pad_h - 1) / 2);
  return {std::min<int64_t>(p.pad_h / 2, end), end};
}

// One column chunk of G images of one channel.
template <bool kOddFirst, bool kShort, int G>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void forward_chunk(
    float* const* out, const float* const* in, const Stride2Planes& p, const __m512 (&w)[3][3],
    __m512 init, const __mmask16* m, __mmask16 valid, int64_t in_col) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                         30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const int64_t in_h = p.in_h, in_w = p.in_w, out_h = p.out_h, out_w = p.out_w;
  // (the masks as values: read through `m` they were reloaded for every row)
  const __mmask16 masks[4] = {m[0], m[1], kShort ? __mmask16(0) : m[2],
                              kShort ? __mmask16(0) : m[3]};
  __m512 kept[G][3];  // the tap vectors of input row 2r - pad_h
  int64_t row = -p.pad_h;
  for (int g = 0; g < G; ++g)
    tap_columns<kOddFirst, kShort>(kept[g], in[g] + row * in_w + in_col, row >= 0 && row < in_h,
                                   masks, even, odd);
  // The inner rows are walked with no checks (compiled apart: the checks and their branches
  // were a third of the loop; forward 53 -> 42 us on [8,192,28,28]).
  const InnerRows inner = inner_rows(p);
  const auto output_row = [&](int64_t r, auto checked) CVOPS_AVX512_LAMBDA {
    constexpr bool kChecked = decltype(checked)::value;
    for (int g = 0; g < G; ++g) {
      __m512 v1[3], v2[3];
      tap_columns<kOddFirst, kShort>(v1, in[g] + (row + 1) * in_w + in_col,
                                     !kChecked || (row + 1 >= 0 && row + 1 < in_h), masks, even,
                                     odd);
      tap_columns<kOddFirst, kShort>(v2, in[g] + (row + 2) * in_w + in_col,
                                     !kChecked || (row + 2 >= 0 && row + 2 < in_h), masks, even,
                                     odd);
      // (a sum per kernel row: three chains of three FMAs, not one of nine)
      __m512 a0 = init, a1 = _mm512_mul_ps(w[1][0], v1[0]), a2 = _mm512_mul_ps(w[2][0], v2[0]);
      a0 = _mm512_fmadd_ps(w[0][0], kept[g][0], a0);
#pragma GCC unroll 2
      for (int kw = 1; kw < 3; ++kw) {
        a0 = _mm512_fmadd_ps(w[0][kw], kept[g][kw], a0);
        a1 = _mm512_fmadd_ps(w[1][kw], v1[kw], a1);
        a2 = _mm512_fmadd_ps(w[2][kw], v2[kw], a2);
      }
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) kept[g][kw] = v2[kw];
      _mm512_mask_storeu_ps(out[g] + r * out_w, valid, _mm512_add_ps(a0, _mm512_add_ps(a1, a2)));
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
CVOPS_TARGET_AVX512 void forward_channels(const Stride2Planes& p, const Stride2Columns& cols,
                                          const float* weight, const float* bias, float* output,
                                          int64_t begin, int64_t end) {
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[3][3];
    broadcast_taps(w, weight + c * 9);
    const __m512 init = _mm512_set1_ps(bias != nullptr ? bias[c] : 0.f);
    for (int64_t n = 0; n < p.batch;) {
      const int64_t count = std::min<int64_t>(kImages, p.batch - n);
      const float* in[kImages];
      float* out[kImages];
      for (int64_t g = 0; g < count; ++g) {
        in[g] = p.input + ((n + g) * p.channels + c) * in_plane;
        out[g] = output + ((n + g) * p.channels + c) * out_plane;
      }
      for (int64_t ch = 0; ch < cols.chunks; ++ch) {
        const __mmask16* m = reinterpret_cast<const __mmask16*>(cols.mask.data()) + ch * 4;
        const int64_t in_col = 32 * ch + 2 * cols.q0;
        float* o[kImages];
        for (int64_t g = 0; g < count; ++g) o[g] = out[g] + ch * kLanes;
        const __mmask16 valid = cols.valid[ch];
        if (valid != 0xFFFF) {
          if (count == kImages) {
            forward_chunk<kOddFirst, true, kImages>(o, in, p, w, init, m, valid, in_col);
          } else {
            for (int64_t g = 0; g < count; ++g)
              forward_chunk<kOddFirst, true, 1>(o + g, in + g, p, w, init, m, valid, in_col);
          }
        } else if (count == kImages) {
          forward_chunk<kOddFirst, false, kImages>(o, in, p, w, init, m, valid, in_col);
        } else {
          for (int64_t g = 0; g < count; ++g)
            forward_chunk<kOddFirst, false, 1>(o + g, in + g, p, w, init, m, valid, in_col);
        }
      }
      n += count;
    }
  }
}

// The weight gradient of one channel: output row r's gradient times the tap vectors of its
// three input rows, into one accumulator per tap (nine independent FMA chains), images and
// rows in order: the sums do not depend on the thread count.
template <bool kOddFirst>
CVOPS_TARGET_AVX512 void weight_grad_channel(const Stride2Planes& p, const Stride2Columns& cols,
                                             const float* grad, int64_t c, float* result) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                         30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const int64_t in_h = p.in_h, in_w = p.in_w, out_h = p.out_h, out_w = p.out_w;
  const int64_t in_plane = in_h * in_w, out_plane = out_h * out_w;
  __m512 acc[3][3], acc_bias = _mm512_setzero_ps();
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh)
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) acc[kh][kw] = _mm512_setzero_ps();
  for (int64_t n = 0; n < p.batch; ++n) {
    const float* in = p.input + (n * p.channels + c) * in_plane;
    const float* g = grad + (n * p.channels + c) * out_plane;
    for (int64_t ch = 0; ch < cols.chunks; ++ch) {
      const __mmask16* m = reinterpret_cast<const __mmask16*>(cols.mask.data()) + ch * 4;
      const __mmask16 valid = cols.valid[ch];
      const float* base = in + 32 * ch + 2 * cols.q0;
      const float* gp = g + ch * kLanes;
      // (as in forward_chunk: the short or full chunk and the rows with or without checks
      // compiled apart, the masks as values)
      const auto chunk = [&](auto short_chunk) CVOPS_AVX512_LAMBDA {
        constexpr bool kShort = decltype(short_chunk)::value;
        const __mmask16 masks[4] = {m[0], m[1], kShort ? __mmask16(0) : m[2],
                                    kShort ? __mmask16(0) : m[3]};
        const auto columns = [&](__m512 (&v)[3], int64_t at, auto checked) CVOPS_AVX512_LAMBDA {
          const bool inside = !decltype(checked)::value || (at >= 0 && at < in_h);
          tap_columns<kOddFirst, kShort>(v, base + at * in_w, inside, masks, even, odd);
        };
        __m512 kept[3];
        int64_t row = -p.pad_h;
        columns(kept, row, std::true_type());
        const auto output_row = [&](auto checked) CVOPS_AVX512_LAMBDA {
          __m512 v1[3], v2[3];
          columns(v1, row + 1, checked);
          columns(v2, row + 2, checked);
          const __m512 gv = _mm512_maskz_loadu_ps(valid, gp);
          acc_bias = _mm512_add_ps(acc_bias, gv);
#pragma GCC unroll 3
          for (int kw = 0; kw < 3; ++kw) {
            acc[0][kw] = _mm512_fmadd_ps(gv, kept[kw], acc[0][kw]);
            acc[1][kw] = _mm512_fmadd_ps(gv, v1[kw], acc[1][kw]);
            acc[2][kw] = _mm512_fmadd_ps(gv, v2[kw], acc[2][kw]);
            kept[kw] = v2[kw];
          }
        };
        const InnerRows inner = inner_rows(p);
        for (int64_t r = 0; r < out_h; ++r, row += 2, gp += out_w) {
          if (r >= inner.begin && r < inner.end)
            output_row(std::false_type());
          else
            output_row(std::true_type());
        }
      };
      if (valid != 0xFFFF)
        chunk(std::true_type());
      else
        chunk(std::false_type());
    }
  }
  float* res = result + c * 10;
  // (unrolled, like every loop over acc: a run-time index would keep acc in memory)
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh)
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) res[kh * 3 + kw] = sum_lanes(acc[kh][kw]);
  res[9] = sum_lanes(acc_bias);
}

// The input gradient. Input column 2m + e (e = 0, 1) receives tap column kw from gradient
// column m + shift[kw] when d = kw - pad_w has parity e, shift = (e - d) / 2: for pad 1,
// even columns take kw 1 from m, odd ones kw 0 from m + 1 and kw 2 from m. A gradient row is
// loaded at the two shifts (masked to the gradient's columns), its nine FMAs go into the even
// and odd halves of the three input rows it reaches (2r - pad_h + kh), and the halves of a
// finished row are interleaved by two permutes into 32 columns and stored.
struct Stride2InputColumns {
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

Stride2InputColumns input_columns_of(const Stride2Planes& p) {
  Stride2InputColumns c;
  c.chunks = (p.in_w + 31) / 32;
  // shift = (e - d) / 2 for d = kw - pad_w of parity e; the smaller of the two is kw 2's
  const int64_t d2 = 2 - p.pad_w, e2 = ((d2 % 2) + 2) % 2;
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
      c.store[ch * 2 + k] = lanes_below(p.in_w - 32 * ch - kLanes * k);
    }
  }
  return c;
}

// One chunk of 32 input columns of G images of one channel.
template <bool kOddPad, int G>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void input_grad_chunk(
    float* const* gi, const float* const* grad, const Stride2Planes& p,
    const Stride2InputColumns& cols, const __m512 (&w)[3][3], int64_t ch) {
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7,
                                           23);
  const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
  const int64_t in_h = p.in_h, in_w = p.in_w, out_h = p.out_h, out_w = p.out_w;
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
  int64_t top = -p.pad_h;  // 2r - pad_h
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
CVOPS_TARGET_AVX512 void input_grad_channels(const Stride2Planes& p,
                                             const Stride2InputColumns& cols, const float* grad,
                                             const float* weight, float* grad_input,
                                             int64_t begin, int64_t end) {
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  for (int64_t c = begin; c < end; ++c) {
    __m512 w[3][3];
    broadcast_taps(w, weight + c * 9);
    for (int64_t n = 0; n < p.batch;) {
      const int64_t count = std::min<int64_t>(kImages, p.batch - n);
      const float* g[kImages];
      float* gi[kImages];
      for (int64_t k = 0; k < count; ++k) {
        g[k] = grad + ((n + k) * p.channels + c) * out_plane;
        gi[k] = grad_input + ((n + k) * p.channels + c) * in_plane;
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

#endif  // CVOPS_DW_S2_512

}  // namespace

bool stride2_512_applies(const Stride2Planes& p) {
#if CVOPS_DW_S2_512
  return cpu_has_avx512() && p.out_h > 0 && p.out_w > 0 && p.out_w <= kMaxWidth &&
         p.pad_h >= 0 && p.pad_w >= 0;
#else
  (void)p;
  return false;
#endif
}

#if CVOPS_DW_S2_512
namespace {
// f(begin, end) over the channels, in chunks of about 2^16 multiply-adds.
template <typename F>
void over_channels(const Stride2Planes& p, int64_t chunks, const F& f) {
  at::parallel_for(0, p.channels, parallel_grain(p.batch * p.out_h * chunks * kLanes * 9), f);
}
}  // namespace

void stride2_512_forward(const Stride2Planes& p, const float* weight, const float* bias,
                         float* output) {
  const Stride2Columns cols = columns_of(p);
  over_channels(p, cols.chunks, [&](int64_t begin, int64_t end) {
    if (cols.odd_first)
      forward_channels<true>(p, cols, weight, bias, output, begin, end);
    else
      forward_channels<false>(p, cols, weight, bias, output, begin, end);
  });
}

void stride2_512_weight_grad(const Stride2Planes& p, const float* grad, float* result) {
  const Stride2Columns cols = columns_of(p);
  over_channels(p, cols.chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (cols.odd_first)
        weight_grad_channel<true>(p, cols, grad, c, result);
      else
        weight_grad_channel<false>(p, cols, grad, c, result);
    }
  });
}

void stride2_512_input_grad(const Stride2Planes& p, const float* grad, const float* weight,
                            float* grad_input) {
  const Stride2InputColumns cols = input_columns_of(p);
  over_channels(p, cols.chunks, [&](int64_t begin, int64_t end) {
    if (p.pad_w % 2 != 0)
      input_grad_channels<true>(p, cols, grad, weight, grad_input, begin, end);
    else
      input_grad_channels<false>(p, cols, grad, weight, grad_input, begin, end);
  });
}

#else  // no AVX-512 target: stride2_512_applies() is false, these never run

void stride2_512_forward(const Stride2Planes&, const float*, const float*, float*) {
  TORCH_INTERNAL_ASSERT(false, "depthwise stride-2 kernels not built");
}
void stride2_512_weight_grad(const Stride2Planes&, const float*, float*) {
  TORCH_INTERNAL_ASSERT(false, "depthwise stride-2 kernels not built");
}
void stride2_512_input_grad(const Stride2Planes&, const float*, const float*, float*) {
  TORCH_INTERNAL_ASSERT(false, "depthwise stride-2 kernels not built");
}

#endif  // CVOPS_DW_S2_512

}  // namespace cvops
