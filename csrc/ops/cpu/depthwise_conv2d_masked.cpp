// Depthwise 2-D convolution CPU kernels, AVX-512 masked-load path: float32, stride 1, NCHW.
//
// Outputs are taken 16 at a time, in "slots". When the output and the plane the kernel reads
// have the same width (the usual "same" padding) a slot runs on across row ends, so a 7x7
// plane is 4 slots, not 7; otherwise a slot is up to 16 outputs of one row. Tap t of every
// lane of a slot then reads the input at the slot's offset plus one per-tap constant: one
// vector load. A 16-bit mask per (slot, tap), computed once per call and the same for every
// plane, zeroes the lanes whose tap lands in the padding (or that are past the plane's end).
// AVX-512 masked loads do not fault on masked-off lanes, so the loads read the caller's
// planes directly: no padded copies and no transposes, and any kernel size, dilation and
// padding run the same loop.
//
// * Forward: out(r, c) = bias + sum_t w_t * in(r + dr_t, c + dc_t), dr_t = kh * dil_h - pad_h.
// * Input gradient (stride 1 only): the same loop over the output gradient with the taps
//   mirrored, dr_t = pad_h - kh * dil_h (and w_t unchanged).
// * Weight and bias gradient: per channel, over the images in index order and the slots in
//   order, g * (the tap's masked load) into one 16-lane accumulator per tap, the lanes summed
//   at the end: the same order for any thread count, so the result is deterministic.
//
// A task is one channel of every image. G images run together, sharing each tap's weight and
// mask, with U slots each: G * U = 8 independent accumulators hide the FMA latency at any
// batch size.
#include "ops/cpu/depthwise_conv2d_masked.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/cpu_utils.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>
#define CVOPS_DW_MASKED 1
#else
#define CVOPS_DW_MASKED 0
#endif

namespace cvops {
namespace {

#if CVOPS_DW_MASKED

constexpr int64_t kLanes = 16;
constexpr int64_t kPrefetchBytes = 1024;  // software prefetch distance in the plane loops

// What one kernel computes: out (out_h x out_w) from in (in_h x in_w), tap t of output (r, c)
// reading in(r + dr[t], c + dc[t]) with weight index t.
struct Correlation {
  int64_t out_h, out_w, in_h, in_w;
  std::vector<int64_t> dr, dc;
};

Correlation forward_correlation(const DepthwiseParams& p) {
  Correlation c{p.out_h, p.out_w, p.height, p.width, {}, {}};
  for (int64_t kh = 0; kh < p.kernel_h; ++kh)
    for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
      c.dr.push_back(kh * p.dil_h - p.pad_h);
      c.dc.push_back(kw * p.dil_w - p.pad_w);
    }
  return c;
}

// Stride 1: grad_input(r, c) = sum over taps of w[kh][kw] * grad(r + pad_h - kh * dil_h, ...).
Correlation backward_input_correlation(const DepthwiseParams& p) {
  Correlation c{p.height, p.width, p.out_h, p.out_w, {}, {}};
  for (int64_t kh = 0; kh < p.kernel_h; ++kh)
    for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
      c.dr.push_back(p.pad_h - kh * p.dil_h);
      c.dc.push_back(p.pad_w - kw * p.dil_w);
    }
  return c;
}

// The slots of one plane and their masks: the same for every plane of a call.
struct SlotTable {
  int64_t slots = 0, taps = 0;
  std::vector<int64_t> out_off;  // per slot: its first output
  std::vector<int64_t> in_off;   // per slot: the input element lane 0 reads at tap offset 0
  std::vector<uint16_t> valid;   // per slot: the lanes that are outputs
  std::vector<uint16_t> mask;    // [slot][tap]: valid lanes whose tap reads inside the input
  std::vector<int64_t> tap_off;  // per tap: dr * in_w + dc
};

// Lane masks by vector compares on the lanes' output coordinates (oh, ow): a 112x112 plane
// has 784 slots x 9 taps, too many for a per-lane scalar loop on every call.
CVOPS_TARGET_AVX512 SlotTable build_slot_table(const Correlation& c) {
  SlotTable tab;
  tab.taps = static_cast<int64_t>(c.dr.size());
  const bool flat = c.out_w == c.in_w;  // input flat index == output flat index
  const int64_t per_row = (c.out_w + kLanes - 1) / kLanes;
  tab.slots = flat ? (c.out_h * c.out_w + kLanes - 1) / kLanes : c.out_h * per_row;
  tab.out_off.resize(tab.slots);
  tab.in_off.resize(tab.slots);
  tab.valid.resize(tab.slots);
  tab.mask.resize(tab.slots * tab.taps);
  tab.tap_off.resize(tab.taps);
  for (int64_t t = 0; t < tab.taps; ++t) tab.tap_off[t] = c.dr[t] * c.in_w + c.dc[t];

  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i out_w = _mm512_set1_epi32(static_cast<int32_t>(c.out_w));
  const __m512i total = _mm512_set1_epi32(static_cast<int32_t>(c.out_h * c.out_w));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i in_h = _mm512_set1_epi32(static_cast<int32_t>(c.in_h));
  const __m512i in_w = _mm512_set1_epi32(static_cast<int32_t>(c.in_w));
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
      tab.out_off[s] = tab.in_off[s] = s * kLanes;
    } else {
      const int64_t r = s / per_row, j = s % per_row;
      oh = _mm512_set1_epi32(static_cast<int32_t>(r));
      ow = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(j * kLanes)));
      valid = _mm512_cmplt_epi32_mask(ow, out_w);
      tab.out_off[s] = r * c.out_w + j * kLanes;
      tab.in_off[s] = r * c.in_w + j * kLanes;
    }
    tab.valid[s] = valid;
    for (int64_t t = 0; t < tab.taps; ++t) {
      const __m512i ih = _mm512_add_epi32(oh, _mm512_set1_epi32(static_cast<int32_t>(c.dr[t])));
      const __m512i iw = _mm512_add_epi32(ow, _mm512_set1_epi32(static_cast<int32_t>(c.dc[t])));
      __mmask16 m = _mm512_mask_cmpge_epi32_mask(valid, ih, zero);
      m = _mm512_mask_cmplt_epi32_mask(m, ih, in_h);
      m = _mm512_mask_cmpge_epi32_mask(m, iw, zero);
      m = _mm512_mask_cmplt_epi32_mask(m, iw, in_w);
      tab.mask[s * tab.taps + t] = m;
    }
  }
  return tab;
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
    _mm_prefetch(reinterpret_cast<const char*>(in[g] + in_off[0] + tab.tap_off[T - 1]) +
                     kPrefetchBytes, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(out[g] + tab.out_off[s0]) + kPrefetchBytes,
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
    for (int g = 0; g < G; ++g) _mm512_mask_storeu_ps(out[g] + o, v, acc[g][u]);
  }
}

template <int G>
CVOPS_TARGET_AVX512 void correlate_planes(float* const* out, const float* const* in,
                                          const float* w, float init, const SlotTable& tab) {
  constexpr int U = 8 / G;
  const __m512 init_v = _mm512_set1_ps(init);
  int64_t s = 0;
  for (; s + U <= tab.slots; s += U) correlate_slots<G, U>(out, in, w, init_v, tab, s);
  for (; s < tab.slots; ++s) correlate_slots<G, 1>(out, in, w, init_v, tab, s);
}

// out[n][c] = correlation of in[n][c] with channel c's taps, for channels [begin, end) of
// every image; images 8, 4, 2, 1 at a time.
void correlate_channels(float* out, const float* in, const float* weight, const float* bias,
                        const SlotTable& tab, int64_t batch, int64_t channels, int64_t out_plane,
                        int64_t in_plane, int64_t begin, int64_t end) {
  float* o[8];
  const float* x[8];
  for (int64_t c = begin; c < end; ++c) {
    const float* w = weight + c * tab.taps;
    const float init = bias != nullptr ? bias[c] : 0.f;
    for (int64_t n = 0; n < batch;) {
      const int64_t left = batch - n;
      const int G = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
      for (int g = 0; g < G; ++g) {
        o[g] = out + ((n + g) * channels + c) * out_plane;
        x[g] = in + ((n + g) * channels + c) * in_plane;
      }
      switch (G) {
        case 8: correlate_planes<8>(o, x, w, init, tab); break;
        case 4: correlate_planes<4>(o, x, w, init, tab); break;
        case 2: correlate_planes<2>(o, x, w, init, tab); break;
        default: correlate_planes<1>(o, x, w, init, tab); break;
      }
      n += G;
    }
  }
}

// The 16 lanes summed in index order (a store and a scalar loop: once per tap and channel).
CVOPS_TARGET_AVX512 inline float sum_lanes(__m512 v) {
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, v);
  float sum = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// acc[j] += sum over the G images from n0 and the slots s of g(n, s) * (masked input of
// tap t0 + j), for j < TC, in the order slot, image; acc_bias += sum of g. Each tap's mask
// serves the G images.
template <int TC, int G, bool kBias>
CVOPS_TARGET_AVX512 CVOPS_ALWAYS_INLINE inline void dot_images(
    __m512* acc, __m512& acc_bias, const float* g, int64_t g_image, const float* x,
    int64_t x_image, int64_t n0, const SlotTable& tab, int64_t t0, int64_t g_ahead,
    int64_t x_ahead) {
  const float* gp[G];
  const float* xp[G];
  for (int i = 0; i < G; ++i) {
    gp[i] = g + (n0 + i) * g_image;
    xp[i] = x + (n0 + i) * x_image;
  }
  const int64_t T = tab.taps;
  const int64_t* off = tab.tap_off.data() + t0;
  for (int64_t s = 0; s < tab.slots; ++s) {
    const int64_t o = tab.out_off[s], in = tab.in_off[s];
    __m512 gv[G];
#pragma GCC unroll 8
    for (int i = 0; i < G; ++i) {
      // (the hardware prefetchers do not keep up with these masked loads on their own)
      _mm_prefetch(reinterpret_cast<const char*>(gp[i] + o) + g_ahead, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(xp[i] + in + off[TC - 1]) + x_ahead,
                   _MM_HINT_T0);
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

// res[t0 + j] = sum over the images and slots of g * (masked input of tap t0 + j), for
// j < TC, in a fixed order (image groups of 8, 4, 2, 1; slot; image; lane); with kBias also
// res[taps] = sum of g.
template <int TC, bool kBias>
CVOPS_TARGET_AVX512 void dot_taps(float* res, const float* g, int64_t g_image,
                                  const float* x, int64_t x_image, int64_t batch,
                                  const SlotTable& tab, int64_t t0) {
  __m512 acc[TC];
  __m512 acc_bias = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int j = 0; j < TC; ++j) acc[j] = _mm512_setzero_ps();
  // Prefetch distance: further on in the plane, or for planes smaller than that the same
  // place in the planes of the next image group.
  const bool small = tab.slots * kLanes * int64_t(sizeof(float)) <= kPrefetchBytes;
  for (int64_t n = 0; n < batch;) {
    const int64_t left = batch - n;
    const int G = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    const int64_t g_ahead = small ? G * g_image * int64_t(sizeof(float)) : kPrefetchBytes;
    const int64_t x_ahead = small ? G * x_image * int64_t(sizeof(float)) : kPrefetchBytes;
#define CVOPS_DW_DOT_IMAGES(GG)                                                             \
  dot_images<TC, GG, kBias>(acc, acc_bias, g, g_image, x, x_image, n, tab, t0, g_ahead, \
                            x_ahead)
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

template <bool kBias>
void dot_taps_chunk(int64_t count, float* res, const float* g, int64_t g_image, const float* x,
                    int64_t x_image, int64_t batch, const SlotTable& tab, int64_t t0) {
#define CVOPS_DW_DOT(TC) dot_taps<TC, kBias>(res, g, g_image, x, x_image, batch, tab, t0)
  switch (count) {
    case 1: CVOPS_DW_DOT(1); break;
    case 2: CVOPS_DW_DOT(2); break;
    case 3: CVOPS_DW_DOT(3); break;
    case 4: CVOPS_DW_DOT(4); break;
    case 5: CVOPS_DW_DOT(5); break;
    case 6: CVOPS_DW_DOT(6); break;
    case 7: CVOPS_DW_DOT(7); break;
    case 8: CVOPS_DW_DOT(8); break;
    case 9: CVOPS_DW_DOT(9); break;
    case 10: CVOPS_DW_DOT(10); break;
    case 11: CVOPS_DW_DOT(11); break;
    case 12: CVOPS_DW_DOT(12); break;
    default: TORCH_INTERNAL_ASSERT(false, "bad tap count ", count);
  }
#undef CVOPS_DW_DOT
}

// Tasks per parallel chunk: about 2^16 multiply-adds, like the other paths.
int64_t masked_grain(int64_t per_task) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, per_task));
}

#endif  // CVOPS_DW_MASKED

}  // namespace

bool depthwise_use_masked_path(const DepthwiseParams& p, const at::Tensor& t) {
#if CVOPS_DW_MASKED
  if (!cpu_has_avx512() || t.scalar_type() != at::kFloat || p.multiplier != 1 ||
      p.stride_h != 1 || p.stride_w != 1)
    return false;
  if (depthwise_result_format(t) != at::MemoryFormat::Contiguous) return false;
  // The mask table does its lane arithmetic in int32.
  const int64_t limit = int64_t(1) << 30;
  if (p.height * p.width >= limit || p.out_h * p.out_w >= limit) return false;
  const char* env = std::getenv("CVOPS_DEPTHWISE_CPU_PATH");
  return env == nullptr || (std::strcmp(env, "blocked") != 0 && std::strcmp(env, "plane") != 0);
#else
  (void)p;
  (void)t;
  return false;
#endif
}

#if CVOPS_DW_MASKED

namespace {
// dst[n][c] = init (bias[c] or 0) + the correlation `corr` of src[n][c] with channel c's taps.
void run_correlation(const at::Tensor& src, const at::Tensor& weight, const at::Tensor& bias,
                     at::Tensor& dst, const Correlation& corr, const DepthwiseParams& p) {
  const at::Tensor s = src.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
  const SlotTable tab = build_slot_table(corr);
  const int64_t dst_plane = corr.out_h * corr.out_w, src_plane = corr.in_h * corr.in_w;
  const float* sp = s.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  float* dp = dst.mutable_data_ptr<float>();
  at::parallel_for(0, p.channels, masked_grain(p.batch * dst_plane * tab.taps),
                   [&](int64_t begin, int64_t end) {
                     correlate_channels(dp, sp, wp, bp, tab, p.batch, p.channels, dst_plane,
                                        src_plane, begin, end);
                   });
}
}  // namespace

void depthwise_masked_forward(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& bias, at::Tensor& output,
                              const DepthwiseParams& p) {
  run_correlation(input, weight, bias, output, forward_correlation(p), p);
}

void depthwise_masked_backward_input(const at::Tensor& grad, const at::Tensor& weight,
                                     at::Tensor& grad_input, const DepthwiseParams& p) {
  run_correlation(grad, weight, at::Tensor(), grad_input, backward_input_correlation(p), p);
}

void depthwise_masked_backward_weight(const at::Tensor& grad, const at::Tensor& input,
                                      at::Tensor& result, const DepthwiseParams& p) {
  const at::Tensor g = grad.contiguous(), x = input.contiguous();
  const SlotTable tab = build_slot_table(forward_correlation(p));
  const int64_t out_plane = p.out_h * p.out_w, in_plane = p.height * p.width;
  const int64_t T = tab.taps, C = p.channels;
  // Taps per pass: as even as possible, at most kMaxTapsPerPass.
  const int64_t passes = (T + kMaxTapsPerPass - 1) / kMaxTapsPerPass;
  const int64_t per_pass = (T + passes - 1) / passes;
  const float* gp = g.const_data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  float* res = result.mutable_data_ptr<float>();
  at::parallel_for(0, C, masked_grain(p.batch * out_plane * T), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t t0 = 0; t0 < T; t0 += per_pass) {
        const int64_t count = std::min(per_pass, T - t0);
        const float* gc = gp + c * out_plane;
        const float* xc = xp + c * in_plane;
        if (t0 == 0)
          dot_taps_chunk<true>(count, res + c * (T + 1), gc, C * out_plane, xc, C * in_plane,
                               p.batch, tab, t0);
        else
          dot_taps_chunk<false>(count, res + c * (T + 1), gc, C * out_plane, xc, C * in_plane,
                                p.batch, tab, t0);
      }
    }
  });
}

#else  // no AVX-512 target: depthwise_use_masked_path() is false, these never run

void depthwise_masked_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              at::Tensor&, const DepthwiseParams&) {
  TORCH_INTERNAL_ASSERT(false, "depthwise masked path not built");
}
void depthwise_masked_backward_input(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                     const DepthwiseParams&) {
  TORCH_INTERNAL_ASSERT(false, "depthwise masked path not built");
}
void depthwise_masked_backward_weight(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                      const DepthwiseParams&) {
  TORCH_INTERNAL_ASSERT(false, "depthwise masked path not built");
}

#endif  // CVOPS_DW_MASKED

}  // namespace cvops
