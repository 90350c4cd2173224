// RoI Pool CPU kernels: forward (output + argmax) and a backward that is deterministic by
// construction.
//
// Forward, two memory layouts picked per call by a cost model (as for RoI Align):
//  * channels-last: the input is viewed as [N, H, W, C] (a copy for NCHW input) and the
//    innermost loop is a branch-free max/argmax update over contiguous channels, written
//    with GCC vector extensions (AVX2 or SSE2 body picked when the library loads). Wins when
//    the bins cover more pixels than the map has (detectors).
//  * planar: [N, C, H, W] planes, parallel over (RoI, channel) pairs. Cheaper when a few RoIs
//    pool a large map, because nothing is transposed.
// Bin ranges are computed once per RoI and reused across channels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_utils.h"
#include "common/simd.h"
#include "ops/roi_pool.h"
#include "ops/roi_pool_checks.h"

// The 32-byte vectors below never cross a non-inlined call boundary, so GCC's note about the
// AVX calling convention does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace cvops {
namespace {

using namespace roi_pool_math;

struct Params {
  double spatial_scale;
  int64_t pooled_height, pooled_width;
  int64_t batch, height, width;  // of the input
};

// Box and per-row/per-column bin ranges of one RoI.
template <typename acc_t>
struct RoiBins {
  RoiBox box;
  std::vector<BinRange> rows;  // [pooled_height]
  std::vector<BinRange> cols;  // [pooled_width]

  template <typename scalar_t>
  void compute(const scalar_t* roi, const Params& p) {
    box = roi_box(static_cast<double>(roi[0]), static_cast<double>(roi[1]),
                  static_cast<double>(roi[2]), static_cast<double>(roi[3]),
                  static_cast<double>(roi[4]), p.spatial_scale, p.batch);
    rows.resize(p.pooled_height);
    cols.resize(p.pooled_width);
    for (int64_t ph = 0; ph < p.pooled_height; ++ph)
      rows[ph] = bin_range<acc_t>(ph, box.start_h, box.roi_h, p.pooled_height, p.height);
    for (int64_t pw = 0; pw < p.pooled_width; ++pw)
      cols[pw] = bin_range<acc_t>(pw, box.start_w, box.roi_w, p.pooled_width, p.width);
  }

  // Number of pixel visits of all bins of this RoI (per channel).
  double visits() const {
    double h = 0, w = 0;
    for (const auto& r : rows) h += static_cast<double>(r.end - r.begin);
    for (const auto& c : cols) w += static_cast<double>(c.end - c.begin);
    return h * w;
  }
};

// Channels-last pays one transpose of the input and then runs vectorised.
bool use_channels_last(const at::Tensor& rois, const Params& p, int64_t channels,
                       bool input_is_channels_last) {
  if (input_is_channels_last) return true;
  if (channels < 4) return false;
  double visits = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois.scalar_type(),
                                  "cvops_roi_pool_cost", [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    const scalar_t* r = rois.const_data_ptr<scalar_t>();
                                    RoiBins<acc_t> bins;
                                    for (int64_t k = 0; k < rois.size(0); ++k, r += 5) {
                                      bins.compute(r, p);
                                      if (bins.box.valid) visits += bins.visits();
                                    }
                                  });
  return visits >= static_cast<double>(p.batch * p.height * p.width);
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// Max/argmax of one non-empty bin over contiguous channels (channels-last image), with GCC
// vector extensions: 32-byte vectors of the op-math type and of same-width integer indices.
// Each chunk of kVecs vectors keeps its running max and argmax in registers while the bin's
// pixels are scanned in row-major order; the update is branch-free.
template <typename acc_t, int kBytes>
struct Lanes;
template <int kBytes>
struct Lanes<float, kBytes> {
  typedef float V __attribute__((vector_size(kBytes)));
  typedef int32_t I __attribute__((vector_size(kBytes)));
  using index_t = int32_t;
  static constexpr int64_t n = kBytes / 4;
};
template <int kBytes>
struct Lanes<double, kBytes> {
  typedef double V __attribute__((vector_size(kBytes)));
  typedef int64_t I __attribute__((vector_size(kBytes)));
  using index_t = int64_t;
  static constexpr int64_t n = kBytes / 8;
};

template <typename I, typename T>
CVOPS_ALWAYS_INLINE inline I splat(T x) {
  I v;
  for (size_t i = 0; i < sizeof(I) / sizeof(T); ++i) v[i] = x;
  return v;
}

template <typename V, typename scalar_t>
CVOPS_ALWAYS_INLINE inline V load_lanes(const scalar_t* p) {
  V v;
  if constexpr (std::is_same_v<scalar_t, std::remove_reference_t<decltype(v[0])>>) {
    std::memcpy(&v, p, sizeof(V));
  } else {  // half / bfloat16: widen to float
    constexpr int64_t n = sizeof(V) / sizeof(v[0]);
    float tmp[n];
    for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<float>(p[i]);
    std::memcpy(&v, tmp, sizeof(V));
  }
  return v;
}

// Max/argmax of one channel of one bin with the exact rule of takes_over().
template <typename scalar_t, typename acc_t>
inline void bin_max_scalar(const scalar_t* image, int64_t W, int64_t C, BinRange hr, BinRange wr,
                           int64_t c, acc_t* m, int32_t* a) {
  int64_t best = hr.begin * W + wr.begin;
  acc_t mv = static_cast<acc_t>(image[best * C + c]);
  for (int64_t h = hr.begin; h < hr.end; ++h) {
    for (int64_t w = wr.begin; w < wr.end; ++w) {
      const acc_t v = static_cast<acc_t>(image[(h * W + w) * C + c]);
      if (takes_over(v, mv)) {
        mv = v;
        best = h * W + w;
      }
    }
  }
  m[c] = mv;
  a[c] = static_cast<int32_t>(best);
}

template <int kBytes, int64_t kVecs, typename scalar_t, typename acc_t>
CVOPS_ALWAYS_INLINE inline void bin_max_impl(const scalar_t* __restrict image, int64_t W, int64_t C,
                                             BinRange hr, BinRange wr, acc_t* __restrict m,
                                             int32_t* __restrict a) {
  using L = Lanes<acc_t, kBytes>;
  using V = typename L::V;
  using I = typename L::I;
  using index_t = typename L::index_t;
  constexpr int64_t kChunk = kVecs * L::n;
  const int64_t first = hr.begin * W + wr.begin;
  const I first_v = splat<I>(static_cast<index_t>(first));
  int64_t c = 0;
  for (; c + kChunk <= C; c += kChunk) {
    V mv[kVecs];
    I av[kVecs];
    I nan{};  // any NaN seen, OR-ed over the chunk's vectors
    for (int64_t u = 0; u < kVecs; ++u) {
      mv[u] = load_lanes<V>(image + first * C + c + u * L::n);
      av[u] = first_v;
    }
    // Hot loop: a strict '>' keeps the first maximum; NaNs are only flagged here (a NaN
    // first pixel already sticks, since nothing compares greater than it).
    for (int64_t h = hr.begin; h < hr.end; ++h) {
      for (int64_t w = (h == hr.begin ? wr.begin + 1 : wr.begin); w < wr.end; ++w) {
        const int64_t idx = h * W + w;
        const scalar_t* px = image + idx * C + c;
        const I iv = splat<I>(static_cast<index_t>(idx));
        for (int64_t u = 0; u < kVecs; ++u) {
          const V v = load_lanes<V>(px + u * L::n);
          const I take = v > mv[u];
          mv[u] = take ? v : mv[u];
          av[u] = take ? iv : av[u];
          nan |= (v != v);
        }
      }
    }
    bool any_nan = false;
    for (int64_t i = 0; i < L::n; ++i) any_nan |= nan[i] != 0;
    for (int64_t u = 0; u < kVecs; ++u) {
      for (int64_t i = 0; i < L::n; ++i) {
        m[c + u * L::n + i] = mv[u][i];
        a[c + u * L::n + i] = static_cast<int32_t>(av[u][i]);
      }
    }
    if (any_nan) {  // rare: redo the chunk's channels with the exact NaN rule
      for (int64_t ch = c; ch < c + kChunk; ++ch) bin_max_scalar(image, W, C, hr, wr, ch, m, a);
    }
  }
  for (; c < C; ++c) bin_max_scalar(image, W, C, hr, wr, c, m, a);  // remaining channels
}

// 32-byte vectors where the CPU has AVX2, 16-byte (SSE2 on x86-64) vectors otherwise: the
// body runs in a function compiled for that ISA alone (common/simd.h's dispatch_isa, capped at
// AVX2: no AVX-512 body was written or measured for it), so the build's minimum CPU is
// unchanged.
template <typename scalar_t, typename acc_t>
inline void bin_max(const scalar_t* image, int64_t W, int64_t C, BinRange hr, BinRange wr, acc_t* m,
                    int32_t* a) {
  simd::dispatch_isa<simd::MaxIsa::kAvx2>([&](auto lanes) CVOPS_ALWAYS_INLINE {
    bin_max_impl<decltype(lanes)::value * 4, 4>(image, W, C, hr, wr, m, a);
  });
}

template <typename scalar_t>
void roi_pool_forward_impl(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output,
                           at::Tensor& argmax, const Params& p, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_rois = rois.size(0), channels = input.size(1);
  const int64_t H = p.height, W = p.width, PH = p.pooled_height, PW = p.pooled_width;
  const int64_t bins = PH * PW;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  int32_t* amax = argmax.mutable_data_ptr<int32_t>();
  const scalar_t nan = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());

  if (channels_last) {
    parallel_for_dynamic(num_rois, 4, [&](int64_t begin, int64_t end) {
      RoiBins<acc_t> rb;
      // One RoI's results bin-major ([bins][C], as bin_max produces them), then transposed
      // into the [C][bins] output with sequential writes.
      std::vector<acc_t> m(bins * channels);
      std::vector<int32_t> a(bins * channels);
      for (int64_t k = begin; k < end; ++k) {
        rb.compute(roi_data + k * 5, p);
        scalar_t* out_roi = out + k * channels * bins;
        int32_t* am_roi = amax + k * channels * bins;
        if (!rb.box.valid) {
          std::fill(out_roi, out_roi + channels * bins, nan);
          std::fill(am_roi, am_roi + channels * bins, -1);
          continue;
        }
        const scalar_t* image = in + rb.box.batch_index * H * W * channels;
        for (int64_t ph = 0; ph < PH; ++ph) {
          const BinRange hr = rb.rows[ph];
          for (int64_t pw = 0; pw < PW; ++pw) {
            const BinRange wr = rb.cols[pw];
            acc_t* mb = m.data() + (ph * PW + pw) * channels;
            int32_t* ab = a.data() + (ph * PW + pw) * channels;
            if (hr.end <= hr.begin || wr.end <= wr.begin) {
              std::fill(mb, mb + channels, acc_t(0));
              std::fill(ab, ab + channels, -1);
              continue;
            }
            bin_max(image, W, channels, hr, wr, mb, ab);
          }
        }
        for (int64_t ch = 0; ch < channels; ++ch) {
          for (int64_t b = 0; b < bins; ++b) {
            out_roi[ch * bins + b] = static_cast<scalar_t>(m[b * channels + ch]);
            am_roi[ch * bins + b] = a[b * channels + ch];
          }
        }
      }
    });
    return;
  }

  // Planar: one task item per (RoI, channel); bins are recomputed only when the RoI changes.
  parallel_for_dynamic(num_rois * channels, 64, [&](int64_t begin, int64_t end) {
    RoiBins<acc_t> rb;
    int64_t current = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / channels, ch = item % channels;
      if (k != current) {
        rb.compute(roi_data + k * 5, p);
        current = k;
      }
      scalar_t* o = out + item * bins;
      int32_t* ao = amax + item * bins;
      if (!rb.box.valid) {
        std::fill(o, o + bins, nan);
        std::fill(ao, ao + bins, -1);
        continue;
      }
      const scalar_t* plane = in + (rb.box.batch_index * channels + ch) * H * W;
      for (int64_t ph = 0; ph < PH; ++ph) {
        const BinRange hr = rb.rows[ph];
        for (int64_t pw = 0; pw < PW; ++pw) {
          const BinRange wr = rb.cols[pw];
          if (hr.end <= hr.begin || wr.end <= wr.begin) {
            o[ph * PW + pw] = scalar_t(0);
            ao[ph * PW + pw] = -1;
            continue;
          }
          int64_t best = hr.begin * W + wr.begin;
          acc_t mv = static_cast<acc_t>(plane[best]);
          for (int64_t h = hr.begin; h < hr.end; ++h) {
            for (int64_t w = wr.begin; w < wr.end; ++w) {
              const acc_t v = static_cast<acc_t>(plane[h * W + w]);
              if (takes_over(v, mv)) {
                mv = v;
                best = h * W + w;
              }
            }
          }
          o[ph * PW + pw] = static_cast<scalar_t>(mv);
          ao[ph * PW + pw] = static_cast<int32_t>(best);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input,
                                                        const at::Tensor& rois,
                                                        double spatial_scale, int64_t pooled_height,
                                                        int64_t pooled_width) {
  check_roi_pool_forward_args(input, rois, spatial_scale, pooled_height, pooled_width);
  check_roi_batch_indices("cvops.roi_pool", rois, input.size(0));
  const int64_t channels = input.size(1);
  at::Tensor output =
      at::empty({rois.size(0), channels, pooled_height, pooled_width}, input.options());
  at::Tensor argmax = at::empty({rois.size(0), channels, pooled_height, pooled_width},
                                input.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};

  const Params p{spatial_scale, pooled_height, pooled_width,
                 input.size(0), input.size(2), input.size(3)};
  at::Tensor rois_c = rois.contiguous();
  if (input.size(2) * input.size(3) == 0) {  // every bin is empty
    output.zero_();
    argmax.fill_(-1);
    // Non-finite boxes still give NaN, as on a non-empty map.
    at::Tensor bad = rois_c.narrow(1, 1, 4).isfinite().all(1).logical_not();
    output.masked_fill_(bad.view({-1, 1, 1, 1}), std::numeric_limits<double>::quiet_NaN());
    return {output, argmax};
  }
  const bool cl =
      use_channels_last(rois_c, p, channels, input.is_contiguous(at::MemoryFormat::ChannelsLast));
  // For channels-last the [N, C, H, W] tensor with channels-last strides *is* [N, H, W, C].
  at::Tensor in =
      input.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_roi_pool_forward_cpu",
      [&] { roi_pool_forward_impl<scalar_t>(in, rois_c, output, argmax, p, cl); });
  return {output, argmax};
}

// ---------------------------------------------------------------------------------------
// Backward: deterministic by construction. Work is split by (batch image, channel block);
// each task owns its slice of the gradient and visits RoIs in index order (bins in row-major
// order), so every gradient element is summed in the same order whatever the thread count:
// the order of torchvision's serial loop, hence bitwise-equal results in float32/float64.
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void roi_pool_backward_impl(const at::Tensor& grad, const at::Tensor& rois,
                            const at::Tensor& argmax, at::Tensor& grad_buf, const Params& p,
                            int64_t channels) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_rois = rois.size(0), batch = p.batch, HW = p.height * p.width;
  const int64_t PW = p.pooled_width, bins = p.pooled_height * PW;
  const scalar_t* g_data = grad.const_data_ptr<scalar_t>();
  const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2),
                gs3 = grad.stride(3);
  const bool grad_dense = gs3 == 1 && gs2 == PW && gs1 == bins;
  const int32_t* am = argmax.const_data_ptr<int32_t>();
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  acc_t* gbuf = grad_buf.mutable_data_ptr<acc_t>();

  // RoIs of each image, in index order (non-finite RoIs never receive gradient).
  std::vector<std::vector<int64_t>> rois_of(batch);
  for (int64_t k = 0; k < num_rois; ++k) {
    const scalar_t* r = roi_data + k * 5;
    const RoiBox box =
        roi_box(static_cast<double>(r[0]), static_cast<double>(r[1]), static_cast<double>(r[2]),
                static_cast<double>(r[3]), static_cast<double>(r[4]), p.spatial_scale, p.batch);
    if (box.valid) rois_of[box.batch_index].push_back(k);
  }
  const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads() + batch - 1) / batch);
  int64_t block = (channels + want - 1) / want;
  block = std::min(channels, std::max<int64_t>(8, block));
  const int64_t blocks = (channels + block - 1) / block;

  // Offsets of each bin in a (possibly strided) grad, e.g. the stride-0 grad of a sum().
  std::vector<int64_t> bin_offset(bins);
  for (int64_t b = 0; b < bins; ++b) bin_offset[b] = (b / PW) * gs2 + (b % PW) * gs3;

  parallel_for_dynamic(batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks;
      const int64_t c0 = (task % blocks) * block;
      const int64_t c1 = std::min(channels, c0 + block);
      for (int64_t k : rois_of[n]) {
        for (int64_t c = c0; c < c1; ++c) {
          acc_t* plane = gbuf + (n * channels + c) * HW;
          const int32_t* a = am + (k * channels + c) * bins;
          if (grad_dense) {
            const scalar_t* g = g_data + k * gs0 + c * gs1;
            for (int64_t b = 0; b < bins; ++b) {
              const int64_t idx = a[b];
              // Indices outside the plane (only from a hand-made argmax) are ignored.
              if (idx >= 0 && idx < HW) plane[idx] += static_cast<acc_t>(g[b]);
            }
          } else {
            const scalar_t* g = g_data + k * gs0 + c * gs1;
            for (int64_t b = 0; b < bins; ++b) {
              const int64_t idx = a[b];
              if (idx >= 0 && idx < HW) plane[idx] += static_cast<acc_t>(g[bin_offset[b]]);
            }
          }
        }
      }
    }
  });
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                 const at::Tensor& argmax, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width) {
  check_roi_pool_backward_args(grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                               batch_size, channels, height, width);
  check_roi_batch_indices("cvops._roi_pool_backward", rois, batch_size);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor buf = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && buf.numel() > 0) {
    const Params p{spatial_scale, pooled_height, pooled_width, batch_size, height, width};
    at::Tensor rois_c = rois.contiguous();
    at::Tensor argmax_c = argmax.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_roi_pool_backward_cpu",
        [&] { roi_pool_backward_impl<scalar_t>(grad, rois_c, argmax_c, buf, p, channels); });
  }
  return buf.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("roi_pool", &roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace cvops
