// Depthwise 2-D convolution CPU kernels, AVX-512 masked-load path: float32, NCHW, stride 1
// or 2 along each axis.
//
// Outputs are taken 16 at a time, in "slots". When the output and the plane the kernel reads
// have the same width (the usual "same" padding) a slot runs on across row ends, so a 7x7
// plane is 4 slots, not 7; otherwise a slot is up to 16 outputs of one row. Tap t of every
// lane of a slot then reads the plane at the slot's offset plus one per-tap constant: one
// vector load. A 16-bit mask per (slot, tap), computed once per call and the same for every
// plane, zeroes the lanes whose tap lands in the padding (or that are past the plane's end).
// AVX-512 masked loads do not fault on masked-off lanes, so at stride 1 the loads read the
// caller's planes directly: no padded copies and no transposes, and any kernel size, dilation
// and padding run the same loop.
//
// Stride 2 becomes stride 1 on phase planes. Along rows that is only a pitch: the rows
// a, a + 2, ... of a plane are a plane of pitch 2W. Along columns the plane is split into
// its even and odd columns first (a streaming deinterleave, two loads and two permutes per
// 32 elements), and tap (kh, kw) reads one of them at a constant offset. The input gradient
// is computed per phase of the input the same way, written through the same pitches, and its
// columns are interleaved back.
//
// * Forward: out(r, c) = bias + sum_t w_t * phase_t(r + dr_t, c + dc_t).
// * Input gradient: per input phase, the correlation of the output gradient with the taps of
//   that phase, mirrored (dr_t = -floor((kh * dil_h - pad_h) / s_h)).
// * Weight and bias gradient: per channel, over the images and the slots in a fixed order,
//   g * (the tap's masked load) into one 16-lane accumulator per tap, the lanes summed at the
//   end: the same order for any thread count, so the result is deterministic.
//
// A task is one channel of every image. G images run together, sharing each tap's weight and
// mask, with U slots each: G * U = 8 independent accumulators hide the FMA latency at any
// batch size.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/avx512_utils.h"
#include "common/cpu_utils.h"
#include "ops/cpu/depthwise_conv2d_cpu.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>
#define CVOPS_DW_MASKED 1
#else
#define CVOPS_DW_MASKED 0
#endif

namespace cvops {
namespace {

#if CVOPS_DW_MASKED

constexpr int64_t kPrefetchBytes = 1024;  // software prefetch distance in the plane loops
constexpr int kMaxGroup = 8;              // images per group

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

// The layout a strided kernel reads (or the input gradient is written in): a plane of
// H x W with stride phases (sh, sw), sh and sw in {1, 2}. With sw == 2 the plane is split
// into its even and odd columns, two planes of H x cols (cols = ceil(W / 2)) one after the
// other; with sw == 1 it is the plane itself (cols = W). Row phase a of column phase b
// then starts at base(a, b) with pitch sh * cols and has rows_of(a) x cols_of(b) elements.
struct Phases {
  int64_t sh, sw, height, width, cols;
  bool split() const { return sw > 1; }
  int64_t size() const { return sw * height * cols; }  // scratch floats when split
  int64_t pitch() const { return sh * cols; }
  int64_t base(int64_t a, int64_t b) const { return b * height * cols + a * cols; }
  int64_t rows_of(int64_t a) const { return (height - a + sh - 1) / sh; }
  int64_t cols_of(int64_t b) const { return (width - b + sw - 1) / sw; }
};

Phases input_phases(const DepthwiseParams& p) {
  return {p.stride_h, p.stride_w, p.height, p.width, (p.width + p.stride_w - 1) / p.stride_w};
}

// What one kernel computes: out (out_h x out_w, rows out_pitch apart, from out_base) from the
// planes at src, tap t of output (r, c) reading src[off[t] + (r + dr[t]) * pitch + c + dc[t]]
// when 0 <= r + dr[t] < lim_h[t] and 0 <= c + dc[t] < lim_w[t], with weight index widx[t].
struct Correlation {
  int64_t out_h, out_w, out_pitch, out_base, pitch;
  std::vector<int64_t> off, dr, dc, lim_h, lim_w, widx;
  void add(int64_t o, int64_t r, int64_t c, int64_t lh, int64_t lw, int64_t w) {
    off.push_back(o);
    dr.push_back(r);
    dc.push_back(c);
    lim_h.push_back(lh);
    lim_w.push_back(lw);
    widx.push_back(w);
  }
};

// The forward, reading the input in the layout ph.
Correlation forward_correlation(const DepthwiseParams& p, const Phases& ph) {
  Correlation c{p.out_h, p.out_w, p.out_w, 0, ph.pitch(), {}, {}, {}, {}, {}, {}};
  for (int64_t kh = 0; kh < p.kernel_h; ++kh)
    for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
      const int64_t r = kh * p.dil_h - p.pad_h, q = kw * p.dil_w - p.pad_w;
      const int64_t a = floor_mod(r, ph.sh), b = floor_mod(q, ph.sw);
      c.add(ph.base(a, b), floor_div(r, ph.sh), floor_div(q, ph.sw), ph.rows_of(a), ph.cols_of(b),
            kh * p.kernel_w + kw);
    }
  return c;
}

// The input gradient's phase (a, b), written in the layout ph, from the output gradient:
// input (sh * I + a, sw * J + b) = sum over the taps of that phase of w * grad(I - dr, J - dc).
Correlation backward_input_correlation(const DepthwiseParams& p, const Phases& ph, int64_t a,
                                       int64_t b) {
  Correlation c{
      ph.rows_of(a), ph.cols_of(b), ph.pitch(), ph.base(a, b), p.out_w, {}, {}, {}, {}, {}, {}};
  for (int64_t kh = 0; kh < p.kernel_h; ++kh)
    for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
      const int64_t r = kh * p.dil_h - p.pad_h, q = kw * p.dil_w - p.pad_w;
      if (floor_mod(r, ph.sh) != a || floor_mod(q, ph.sw) != b) continue;
      c.add(0, -floor_div(r, ph.sh), -floor_div(q, ph.sw), p.out_h, p.out_w, kh * p.kernel_w + kw);
    }
  return c;
}

// The slots of one plane and their masks: the same for every plane of a call.
struct SlotTable {
  int64_t slots = 0, taps = 0;
  std::vector<int64_t> out_off;  // per slot: its first output
  std::vector<int64_t> in_off;   // per slot: the element lane 0 reads at tap offset 0
  std::vector<uint16_t> valid;   // per slot: the lanes that are outputs
  std::vector<uint16_t> mask;    // [slot][tap]: valid lanes whose tap reads inside its plane
  std::vector<int64_t> tap_off;  // per tap: off + dr * pitch + dc
  std::vector<int64_t> widx;     // per tap: weight index
  bool stream = false;           // whole aligned output vectors with non-temporal stores
};

// Lane masks by vector compares on the lanes' output coordinates (oh, ow): a 112x112 plane
// has 784 slots x 9 taps, too many for a per-lane scalar loop on every call.
CVOPS_TARGET_AVX512 SlotTable build_slot_table(const Correlation& c) {
  SlotTable tab;
  tab.taps = static_cast<int64_t>(c.dr.size());
  tab.widx = c.widx;
  // Flat: input flat index == output flat index + a per-tap offset.
  const bool flat = c.out_w == c.pitch && c.out_w == c.out_pitch;
  const int64_t per_row = (c.out_w + kLanes - 1) / kLanes;
  tab.slots = flat ? (c.out_h * c.out_w + kLanes - 1) / kLanes : c.out_h * per_row;
  tab.out_off.resize(tab.slots);
  tab.in_off.resize(tab.slots);
  tab.valid.resize(tab.slots);
  tab.mask.resize(tab.slots * tab.taps);
  tab.tap_off.resize(tab.taps);
  for (int64_t t = 0; t < tab.taps; ++t) tab.tap_off[t] = c.off[t] + c.dr[t] * c.pitch + c.dc[t];

  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i out_w = _mm512_set1_epi32(static_cast<int32_t>(c.out_w));
  const __m512i total = _mm512_set1_epi32(static_cast<int32_t>(c.out_h * c.out_w));
  const __m512i zero = _mm512_setzero_si512();
  __m512i oh = zero, ow = iota;  // flat: the lanes' coordinates, advanced slot by slot
  for (int64_t s = 0; s < tab.slots; ++s) {
    __mmask16 valid;
    if (flat) {
      if (s > 0) ow = _mm512_add_epi32(ow, _mm512_set1_epi32(kLanes));
      for (__mmask16 wrap = _mm512_cmpge_epi32_mask(ow, out_w); wrap != 0;
           wrap = _mm512_cmpge_epi32_mask(ow, out_w)) {
        ow = _mm512_mask_sub_epi32(ow, wrap, ow, out_w);
        oh = _mm512_mask_add_epi32(oh, wrap, oh, _mm512_set1_epi32(1));
      }
      const __m512i e = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(s * kLanes)));
      valid = _mm512_cmplt_epi32_mask(e, total);
      tab.out_off[s] = c.out_base + s * kLanes;
      tab.in_off[s] = s * kLanes;
    } else {
      const int64_t r = s / per_row, j = s % per_row;
      oh = _mm512_set1_epi32(static_cast<int32_t>(r));
      ow = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(j * kLanes)));
      valid = _mm512_cmplt_epi32_mask(ow, out_w);
      tab.out_off[s] = c.out_base + r * c.out_pitch + j * kLanes;
      tab.in_off[s] = r * c.pitch + j * kLanes;
    }
    tab.valid[s] = valid;
    for (int64_t t = 0; t < tab.taps; ++t) {
      const __m512i ih = _mm512_add_epi32(oh, _mm512_set1_epi32(static_cast<int32_t>(c.dr[t])));
      const __m512i iw = _mm512_add_epi32(ow, _mm512_set1_epi32(static_cast<int32_t>(c.dc[t])));
      __mmask16 m = _mm512_mask_cmpge_epi32_mask(valid, ih, zero);
      m = _mm512_mask_cmplt_epi32_mask(m, ih, _mm512_set1_epi32(static_cast<int32_t>(c.lim_h[t])));
      m = _mm512_mask_cmpge_epi32_mask(m, iw, zero);
      m = _mm512_mask_cmplt_epi32_mask(m, iw, _mm512_set1_epi32(static_cast<int32_t>(c.lim_w[t])));
      tab.mask[s * tab.taps + t] = m;
    }
  }
  return tab;
}

// How split_columns and merge_columns walk a plane of ph.height x ph.width (ph.split()):
// with W even the whole plane is one stream of n elements (even flat index = even column),
// else each row is; a stream's even and odd elements are rows of pitch ph.cols.
struct ColumnStreams {
  int64_t rows, n, n_even, n_odd;
  explicit ColumnStreams(const Phases& ph) {
    const bool flat = ph.width % 2 == 0;
    rows = flat ? 1 : ph.height;
    n = flat ? ph.height * ph.width : ph.width;
    n_even = (n + 1) / 2;
    n_odd = n / 2;
  }
};

// Splits plane x into its even and odd column planes at dst.
CVOPS_TARGET_AVX512 void split_columns(float* __restrict dst, const float* __restrict x,
                                       const Phases& ph) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const int64_t W = ph.width, C = ph.cols;
  const ColumnStreams cs(ph);
  const int64_t n = cs.n, n_even = cs.n_even, n_odd = cs.n_odd;
  for (int64_t i = 0; i < cs.rows; ++i) {
    const float* src = x + i * W;
    float* ev = dst + i * C;
    float* od = ev + ph.height * C;
    int64_t j = 0;
    for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
      _mm_prefetch(reinterpret_cast<const char*>(src + j) + kPrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(src + j) + kPrefetchBytes + 64, _MM_HINT_T0);
      const __m512 lo = _mm512_loadu_ps(src + j), hi = _mm512_loadu_ps(src + j + kLanes);
      _mm512_storeu_ps(ev + j / 2, _mm512_permutex2var_ps(lo, even, hi));
      _mm512_storeu_ps(od + j / 2, _mm512_permutex2var_ps(lo, odd, hi));
    }
    if (j < n) {  // the last, partial 32
      const __m512 lo = _mm512_maskz_loadu_ps(lanes_below(n - j), src + j);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes_below(n - j - kLanes), src + j + kLanes);
      _mm512_mask_storeu_ps(ev + j / 2, lanes_below(n_even - j / 2),
                            _mm512_permutex2var_ps(lo, even, hi));
      _mm512_mask_storeu_ps(od + j / 2, lanes_below(n_odd - j / 2),
                            _mm512_permutex2var_ps(lo, odd, hi));
    }
  }
}

// The inverse: interleaves the even and odd column planes at src into the plane x.
CVOPS_TARGET_AVX512 void merge_columns(float* __restrict x, const float* __restrict src,
                                       const Phases& ph) {
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
  const int64_t W = ph.width, C = ph.cols;
  const ColumnStreams cs(ph);
  const int64_t n = cs.n, n_even = cs.n_even, n_odd = cs.n_odd;
  for (int64_t i = 0; i < cs.rows; ++i) {
    float* dst = x + i * W;
    const float* ev = src + i * C;
    const float* od = ev + ph.height * C;
    int64_t j = 0;
    for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
      const __m512 e = _mm512_loadu_ps(ev + j / 2), o = _mm512_loadu_ps(od + j / 2);
      _mm512_storeu_ps(dst + j, _mm512_permutex2var_ps(e, lo_idx, o));
      _mm512_storeu_ps(dst + j + kLanes, _mm512_permutex2var_ps(e, hi_idx, o));
    }
    if (j < n) {  // the last, partial 32
      const __m512 e = _mm512_maskz_loadu_ps(lanes_below(n_even - j / 2), ev + j / 2);
      const __m512 o = _mm512_maskz_loadu_ps(lanes_below(n_odd - j / 2), od + j / 2);
      _mm512_mask_storeu_ps(dst + j, lanes_below(n - j), _mm512_permutex2var_ps(e, lo_idx, o));
      _mm512_mask_storeu_ps(dst + j + kLanes, lanes_below(n - j - kLanes),
                            _mm512_permutex2var_ps(e, hi_idx, o));
    }
  }
}

// G planes x U slots from slot s0: out = init + sum_t w[t] * (masked input at tap t).
template <int G, int U>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void correlate_slots(float* const* out,
                                                                    const float* const* in,
                                                                    const float* w, __m512 init,
                                                                    const SlotTable& tab,
                                                                    int64_t s0) {
  __m512 acc[G][U];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < U; ++u) acc[g][u] = init;
  const int64_t T = tab.taps;
  const uint16_t* mask = tab.mask.data() + s0 * T;
  const int64_t* in_off = tab.in_off.data() + s0;
  // (the hardware prefetchers do not keep up with these masked loads on their own)
  for (int g = 0; g < G; ++g) {
    if (T > 0)
      _mm_prefetch(
          reinterpret_cast<const char*>(in[g] + in_off[0] + tab.tap_off[T - 1]) + kPrefetchBytes,
          _MM_HINT_T0);
  }
  for (int64_t t = 0; t < T; ++t) {
    const __m512 wt = _mm512_set1_ps(w[t]);
    const int64_t off = tab.tap_off[t];
    for (int u = 0; u < U; ++u) {
      const __mmask16 k = mask[u * T + t];
      for (int g = 0; g < G; ++g)
        acc[g][u] =
            _mm512_fmadd_ps(wt, _mm512_maskz_loadu_ps(k, in[g] + in_off[u] + off), acc[g][u]);
    }
  }
  for (int u = 0; u < U; ++u) {
    const int64_t o = tab.out_off[s0 + u];
    const __mmask16 v = tab.valid[s0 + u];
    for (int g = 0; g < G; ++g) {
      float* dst = out[g] + o;
      if (tab.stream && v == 0xFFFF && (reinterpret_cast<uintptr_t>(dst) & 63) == 0)
        _mm512_stream_ps(dst, acc[g][u]);
      else
        _mm512_mask_storeu_ps(dst, v, acc[g][u]);
    }
  }
}

template <int G>
CVOPS_TARGET_AVX512 void correlate_planes(float* const* out, const float* const* in, const float* w,
                                          float init, const SlotTable& tab) {
  constexpr int U = 8 / G;
  const __m512 init_v = _mm512_set1_ps(init);
  int64_t s = 0;
  for (; s + U <= tab.slots; s += U) correlate_slots<G, U>(out, in, w, init_v, tab, s);
  for (; s < tab.slots; ++s) correlate_slots<G, 1>(out, in, w, init_v, tab, s);
}

void correlate_group(int G, float* const* out, const float* const* in, const float* w, float init,
                     const SlotTable& tab) {
  switch (G) {
    case 8: correlate_planes<8>(out, in, w, init, tab); break;
    case 4: correlate_planes<4>(out, in, w, init, tab); break;
    case 2: correlate_planes<2>(out, in, w, init, tab); break;
    default: correlate_planes<1>(out, in, w, init, tab); break;
  }
}

// Images per group: 8, 4, 2, 1 (the same split for every channel).
int group_size(int64_t left) { return left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1; }

// A thread's scratch planes: kMaxGroup of `size` floats (none for size 0).
struct Scratch {
  explicit Scratch(int64_t size) : size(size), data(kMaxGroup * size) {}
  float* plane(int g) { return data.data() + g * size; }
  int64_t size;
  std::vector<float> data;
};

// One correlation job over (image, channel) planes: dst planes from src planes, the source
// planes split into columns first (split) or the result written in split columns into
// scratch and merged into dst (merge). Each table writes its part of the destination layout
// (the input gradient: one table per stride phase).
struct Job {
  const float* src;
  int64_t src_plane;
  float* dst;
  int64_t dst_plane;
  Phases phases;
  bool split, merge;
  std::vector<SlotTable> tables;
  const float* weight;  // [C][KK]
  const float* bias;    // or nullptr
  int64_t kk;
};

void run_channels(const Job& job, int64_t batch, int64_t channels, int64_t begin, int64_t end) {
  Scratch buf(job.split || job.merge ? job.phases.size() : 0);
  std::vector<std::vector<float>> w(job.tables.size());
  float* o[kMaxGroup];
  const float* x[kMaxGroup];
  for (int64_t c = begin; c < end; ++c) {
    for (size_t k = 0; k < job.tables.size(); ++k) {  // the channel's weights in tap order
      w[k].resize(job.tables[k].taps);
      for (int64_t t = 0; t < job.tables[k].taps; ++t)
        w[k][t] = job.weight[c * job.kk + job.tables[k].widx[t]];
    }
    const float init = job.bias != nullptr ? job.bias[c] : 0.f;
    for (int64_t n = 0; n < batch;) {
      const int G = group_size(batch - n);
      for (int g = 0; g < G; ++g) {
        const float* plane = job.src + ((n + g) * channels + c) * job.src_plane;
        if (job.split) split_columns(buf.plane(g), plane, job.phases);
        x[g] = job.split ? buf.plane(g) : plane;
        o[g] = job.merge ? buf.plane(g) : job.dst + ((n + g) * channels + c) * job.dst_plane;
      }
      for (size_t k = 0; k < job.tables.size(); ++k)
        correlate_group(G, o, x, w[k].data(), init, job.tables[k]);
      if (job.merge)
        for (int g = 0; g < G; ++g)
          merge_columns(job.dst + ((n + g) * channels + c) * job.dst_plane, buf.plane(g),
                        job.phases);
      n += G;
    }
  }
}

// acc[j] += sum over the G planes gp/xp and the slots s of g(s) * (masked input of tap
// t0 + j), for j < TC, in the order slot, image; acc_bias += sum of g. Each tap's mask serves
// the G images. The prefetches run `ahead` bytes in front of the loads (g_ahead 0: none).
template <int TC, int G, bool kBias>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void dot_images(__m512* acc, __m512& acc_bias,
                                                               const float* const* gp,
                                                               const float* const* xp,
                                                               const SlotTable& tab, int64_t t0,
                                                               int64_t g_ahead, int64_t x_ahead) {
  const int64_t T = tab.taps;
  const int64_t* off = tab.tap_off.data() + t0;
  for (int64_t s = 0; s < tab.slots; ++s) {
    const int64_t o = tab.out_off[s], in = tab.in_off[s];
    __m512 gv[G];
#pragma GCC unroll 8
    for (int i = 0; i < G; ++i) {
      // (the hardware prefetchers do not keep up with these masked loads on their own)
      if (g_ahead != 0)
        _mm_prefetch(reinterpret_cast<const char*>(gp[i] + o) + g_ahead, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(xp[i] + in + off[TC - 1]) + x_ahead, _MM_HINT_T0);
      gv[i] = _mm512_maskz_loadu_ps(tab.valid[s], gp[i] + o);
      if (kBias) acc_bias = _mm512_add_ps(acc_bias, gv[i]);
    }
    const uint16_t* m = tab.mask.data() + s * T + t0;
#pragma GCC unroll 16
    for (int j = 0; j < TC; ++j) {
      const __mmask16 k = m[j];
#pragma GCC unroll 8
      for (int i = 0; i < G; ++i)
        acc[j] = _mm512_fmadd_ps(gv[i], _mm512_maskz_loadu_ps(k, xp[i] + in + off[j]), acc[j]);
    }
  }
}

// The weight gradient's planes: (n, c) of the output gradient and of the input, the input
// split into phases first when strided.
struct DotJob {
  const float* g;
  int64_t g_plane;
  const float* x;
  int64_t x_plane;
  Phases phases;
  int64_t batch, channels;
};

// res[t0 + j] = sum over the images and slots of g * (masked input of tap t0 + j), for
// j < TC, in a fixed order (image groups of 8, 4, 2, 1; slot; image; lane); with kBias also
// res[taps] = sum of g.
template <int TC, bool kBias>
CVOPS_TARGET_AVX512 void dot_taps(float* res, const DotJob& job, int64_t c, const SlotTable& tab,
                                  int64_t t0, Scratch& buf) {
  __m512 acc[TC];
  __m512 acc_bias = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int j = 0; j < TC; ++j) acc[j] = _mm512_setzero_ps();
  // Prefetch distances (bytes ahead of the loads): large planes further on in the plane; for
  // planes smaller than that the input at the same place in the next image group, and the
  // output gradient not at all (measured: it costs more than it saves). Split planes are in
  // the thread's scratch.
  const bool small = tab.slots * kLanes * int64_t(sizeof(float)) <= kPrefetchBytes;
  const int64_t g_image = job.channels * job.g_plane, x_image = job.channels * job.x_plane;
  const float* gp[kMaxGroup];
  const float* xp[kMaxGroup];
  for (int64_t n = 0; n < job.batch;) {
    const int G = group_size(job.batch - n);
    for (int i = 0; i < G; ++i) {
      gp[i] = job.g + (n + i) * g_image + c * job.g_plane;
      const float* plane = job.x + (n + i) * x_image + c * job.x_plane;
      if (job.phases.split()) split_columns(buf.plane(i), plane, job.phases);
      xp[i] = job.phases.split() ? buf.plane(i) : plane;
    }
    const int64_t g_ahead = small ? 0 : kPrefetchBytes;
    const int64_t x_ahead = job.phases.split() ? 0
                            : small            ? G * x_image * int64_t(sizeof(float))
                                               : kPrefetchBytes;
#define CVOPS_DW_DOT_IMAGES(GG) \
  dot_images<TC, GG, kBias>(acc, acc_bias, gp, xp, tab, t0, g_ahead, x_ahead)
    switch (G) {
      case 8: CVOPS_DW_DOT_IMAGES(8); break;
      case 4: CVOPS_DW_DOT_IMAGES(4); break;
      case 2: CVOPS_DW_DOT_IMAGES(2); break;
      default: CVOPS_DW_DOT_IMAGES(1); break;
    }
#undef CVOPS_DW_DOT_IMAGES
    n += G;
  }
  for (int j = 0; j < TC; ++j) res[t0 + j] = sum_lanes(acc[j]);
  if (kBias) res[tab.taps] = sum_lanes(acc_bias);
}

// Accumulators per pass over the planes: TC taps (+ the bias) stay in registers.
constexpr int64_t kMaxTapsPerPass = 12;

// dot_taps<TC> for TC = count, 1 <= count <= kMaxTapsPerPass.
template <bool kBias, int TC = 1>
void dot_taps_chunk(int64_t count, float* res, const DotJob& job, int64_t c, const SlotTable& tab,
                    int64_t t0, Scratch& buf) {
  if constexpr (TC <= kMaxTapsPerPass) {
    if (count == TC) return dot_taps<TC, kBias>(res, job, c, tab, t0, buf);
    return dot_taps_chunk<kBias, TC + 1>(count, res, job, c, tab, t0, buf);
  }
  TORCH_INTERNAL_ASSERT(false, "bad tap count ", count);
}

#endif  // CVOPS_DW_MASKED

}  // namespace

bool masked_applies(const DepthwiseCall& call, DepthwiseDirection direction) {
  return CVOPS_DW_MASKED && direction != DepthwiseDirection::kBackward && avx512_float_nchw(call) &&
         call.p.stride_h <= 2 && call.p.stride_w <= 2;
}

#if CVOPS_DW_MASKED

namespace {
void run_job(Job& job, const DepthwiseParams& p) {
  // Large outputs are written with non-temporal stores (output_streams: full, aligned
  // vectors; the rest as usual). Never into the scratch planes that are read back.
  const int64_t out_bytes = p.batch * p.channels * job.dst_plane * int64_t(sizeof(float));
  const bool stream = !job.merge && output_streams(out_bytes);
  for (SlotTable& tab : job.tables) tab.stream = stream;
  int64_t work = 0;
  for (const SlotTable& tab : job.tables) work += tab.slots * kLanes * tab.taps;
  at::parallel_for(0, p.channels, parallel_grain(p.batch * work), [&](int64_t begin, int64_t end) {
    run_channels(job, p.batch, p.channels, begin, end);
    if (stream) _mm_sfence();  // the streamed stores are visible before the op returns
  });
}
}  // namespace

void masked_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                    at::Tensor& output, const DepthwiseParams& p) {
  const Phases ph = input_phases(p);
  Job job{input.const_data_ptr<float>(),
          p.height * p.width,
          output.mutable_data_ptr<float>(),
          p.out_h * p.out_w,
          ph,
          ph.split(),
          false,
          {build_slot_table(forward_correlation(p, ph))},
          weight.const_data_ptr<float>(),
          bias.defined() ? bias.const_data_ptr<float>() : nullptr,
          p.kernel_h * p.kernel_w};
  run_job(job, p);
}

void masked_backward_input(const at::Tensor& grad, const at::Tensor& weight, at::Tensor& grad_input,
                           const DepthwiseParams& p) {
  const Phases ph = input_phases(p);
  Job job{grad.const_data_ptr<float>(),
          p.out_h * p.out_w,
          grad_input.mutable_data_ptr<float>(),
          p.height * p.width,
          ph,
          false,
          ph.split(),
          {},
          weight.const_data_ptr<float>(),
          nullptr,
          p.kernel_h * p.kernel_w};
  for (int64_t a = 0; a < ph.sh; ++a)
    for (int64_t b = 0; b < ph.sw; ++b)
      job.tables.push_back(build_slot_table(backward_input_correlation(p, ph, a, b)));
  run_job(job, p);
}

void masked_backward_weight(const at::Tensor& grad, const at::Tensor& input, at::Tensor& result,
                            const DepthwiseParams& p) {
  float* res = result.mutable_data_ptr<float>();  // [C][T + 1]; tap order is weight order
  const Phases ph = input_phases(p);
  const SlotTable tab = build_slot_table(forward_correlation(p, ph));
  const int64_t T = tab.taps;
  // Taps per pass: as even as possible, at most kMaxTapsPerPass.
  const int64_t passes = (T + kMaxTapsPerPass - 1) / kMaxTapsPerPass;
  const int64_t per_pass = (T + passes - 1) / passes;
  const DotJob job{grad.const_data_ptr<float>(),
                   p.out_h * p.out_w,
                   input.const_data_ptr<float>(),
                   p.height * p.width,
                   ph,
                   p.batch,
                   p.channels};
  at::parallel_for(0, p.channels, parallel_grain(p.batch * tab.slots * kLanes * T),
                   [&](int64_t begin, int64_t end) {
                     Scratch buf(ph.split() ? ph.size() : 0);
                     for (int64_t c = begin; c < end; ++c)
                       for (int64_t t0 = 0; t0 < T; t0 += per_pass) {
                         const int64_t count = std::min(per_pass, T - t0);
                         if (t0 == 0)
                           dot_taps_chunk<true>(count, res + c * (T + 1), job, c, tab, t0, buf);
                         else
                           dot_taps_chunk<false>(count, res + c * (T + 1), job, c, tab, t0, buf);
                       }
                   });
}

#else  // no AVX-512 target: masked_applies() is false, these never run

void masked_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                    const DepthwiseParams&) {}
void masked_backward_input(const at::Tensor&, const at::Tensor&, at::Tensor&,
                           const DepthwiseParams&) {}
void masked_backward_weight(const at::Tensor&, const at::Tensor&, at::Tensor&,
                            const DepthwiseParams&) {}

#endif  // CVOPS_DW_MASKED

}  // namespace cvops
