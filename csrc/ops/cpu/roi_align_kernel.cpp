// RoI Align CPU kernels: forward and (always deterministic) backward.
//
// Two memory layouts, picked per call by a cost model:
//  * channels-last: the input is viewed as [N, H, W, C] (a copy for NCHW input) and the
//    innermost loop runs over contiguous channels, so each bilinear sample becomes four
//    vectorisable multiply-adds over C values. This wins whenever there are more samples
//    than pixels, which is the detector case.
//  * planar: [N, C, H, W] planes, channel outer loop, like torchvision's kernel (but
//    parallel). Cheaper when few RoIs sample a large map, because nothing is transposed.
// Per-RoI geometry (row and column taps) is computed once per RoI and reused across channels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/roi_align.h"
#include "ops/roi_align_checks.h"

namespace cvops {
namespace {

using namespace roi_align_math;

struct Params {
  double spatial_scale;
  int64_t pooled_height, pooled_width, sampling_ratio;
  bool aligned;
  int64_t batch, height, width;  // of the input
};

// Geometry and axis taps of one RoI, for every bin row/column and sample.
template <typename acc_t>
struct RoiTaps {
  RoiGeometry<acc_t> geometry;
  std::vector<AxisTap<acc_t>> rows;  // [pooled_height * grid_h]
  std::vector<AxisTap<acc_t>> cols;  // [pooled_width * grid_w]

  template <typename scalar_t>
  void compute(const scalar_t* roi, const Params& p) {
    auto& g = geometry;
    g = roi_geometry<acc_t>(roi[0], roi[1], roi[2], roi[3], roi[4],
                            static_cast<acc_t>(p.spatial_scale), p.aligned, p.pooled_height,
                            p.pooled_width, p.sampling_ratio, p.batch);
    rows.resize(p.pooled_height * g.grid_h);
    cols.resize(p.pooled_width * g.grid_w);
    for (int64_t ph = 0; ph < p.pooled_height; ++ph)
      for (int64_t iy = 0; iy < g.grid_h; ++iy)
        rows[ph * g.grid_h + iy] =
            axis_tap(sample_coord(g.start_h, ph, g.bin_h, iy, g.grid_h), p.height);
    for (int64_t pw = 0; pw < p.pooled_width; ++pw)
      for (int64_t ix = 0; ix < g.grid_w; ++ix)
        cols[pw * g.grid_w + ix] =
            axis_tap(sample_coord(g.start_w, pw, g.bin_w, ix, g.grid_w), p.width);
  }

  // Calls f(corners) for every sample of bin (ph, pw) that lies on the map.
  template <typename F>
  void for_each_sample(int64_t ph, int64_t pw, int64_t width, int64_t pixel_stride, F&& f) const {
    const int64_t gh = geometry.grid_h, gw = geometry.grid_w;
    for (int64_t iy = 0; iy < gh; ++iy) {
      const AxisTap<acc_t>& ty = rows[ph * gh + iy];
      if (!ty.inside) continue;
      for (int64_t ix = 0; ix < gw; ++ix) {
        const AxisTap<acc_t>& tx = cols[pw * gw + ix];
        if (!tx.inside) continue;
        f(bilinear_corners(ty, tx, width, pixel_stride));
      }
    }
  }
};

// Total number of bilinear samples over all RoIs (only used to pick a layout).
template <typename scalar_t>
double count_samples(const at::Tensor& rois, const Params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  double total = 0;
  for (int64_t k = 0; k < rois.size(0); ++k, r += 5) {
    auto g =
        roi_geometry<acc_t>(r[0], r[1], r[2], r[3], r[4], static_cast<acc_t>(p.spatial_scale),
                            p.aligned, p.pooled_height, p.pooled_width, p.sampling_ratio, p.batch);
    total += static_cast<double>(g.grid_h * g.grid_w);
  }
  return total * static_cast<double>(p.pooled_height * p.pooled_width);
}

// Channels-last pays one transpose of the input (or gradient) and then runs vectorised.
bool use_channels_last(const at::Tensor& rois, const Params& p, int64_t channels,
                       bool input_is_channels_last) {
  if (input_is_channels_last) return true;
  if (channels < 4) return false;
  double samples = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois.scalar_type(),
                                  "cvops_roi_align_cost",
                                  [&] { samples = count_samples<scalar_t>(rois, p); });
  return samples >= static_cast<double>(p.batch * p.height * p.width);
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// acc[c] += w1 * a[c] + w2 * b[c] + w3 * c[c] + w4 * d[c] over contiguous channels.
template <typename scalar_t, typename acc_t>
inline void accumulate_corners(acc_t* __restrict acc, const scalar_t* __restrict base,
                               const BilinearCorners<acc_t>& c, int64_t n) {
  const scalar_t* __restrict p1 = base + c.o1;
  const scalar_t* __restrict p2 = base + c.o2;
  const scalar_t* __restrict p3 = base + c.o3;
  const scalar_t* __restrict p4 = base + c.o4;
  for (int64_t i = 0; i < n; ++i) {
    acc[i] += c.w1 * static_cast<acc_t>(p1[i]) + c.w2 * static_cast<acc_t>(p2[i]) +
              c.w3 * static_cast<acc_t>(p3[i]) + c.w4 * static_cast<acc_t>(p4[i]);
  }
}

template <typename scalar_t>
void roi_align_forward_impl(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output,
                            const Params& p, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_rois = rois.size(0), channels = input.size(1);
  const int64_t H = p.height, W = p.width;
  const int64_t PH = p.pooled_height, PW = p.pooled_width, bins = PH * PW;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();

  at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
    RoiTaps<acc_t> taps;
    std::vector<acc_t> acc(channels);
    for (int64_t k = begin; k < end; ++k) {
      taps.compute(roi_data + k * 5, p);
      const auto& g = taps.geometry;
      scalar_t* out_roi = out + k * channels * bins;
      if (!g.valid) {
        std::fill(out_roi, out_roi + channels * bins, static_cast<scalar_t>(nan));
        continue;
      }
      const scalar_t* image = in + g.batch_index * channels * H * W;
      if (channels_last) {
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            std::fill(acc.begin(), acc.end(), acc_t(0));
            taps.for_each_sample(ph, pw, W, channels, [&](const BilinearCorners<acc_t>& c) {
              accumulate_corners(acc.data(), image, c, channels);
            });
            scalar_t* o = out_roi + ph * PW + pw;
            for (int64_t ch = 0; ch < channels; ++ch) o[ch * bins] = acc[ch] / g.count;
          }
        }
      } else {
        for (int64_t ch = 0; ch < channels; ++ch) {
          const scalar_t* plane = image + ch * H * W;
          for (int64_t ph = 0; ph < PH; ++ph) {
            for (int64_t pw = 0; pw < PW; ++pw) {
              acc_t sum = 0;
              taps.for_each_sample(ph, pw, W, 1, [&](const BilinearCorners<acc_t>& c) {
                sum += interpolate<acc_t>(plane, c);
              });
              out_roi[ch * bins + ph * PW + pw] = sum / g.count;
            }
          }
        }
      }
    }
  });
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t sampling_ratio, bool aligned) {
  check_roi_align_forward_args(input, rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio);
  check_roi_batch_indices("cvops.roi_align", rois, input.size(0));
  const int64_t channels = input.size(1);
  at::Tensor output =
      at::empty({rois.size(0), channels, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) return output;

  const Params p{spatial_scale, pooled_height, pooled_width,  sampling_ratio,
                 aligned,       input.size(0), input.size(2), input.size(3)};
  at::Tensor rois_c = rois.contiguous();
  const bool cl =
      use_channels_last(rois_c, p, channels, input.is_contiguous(at::MemoryFormat::ChannelsLast));
  // For channels-last the [N, C, H, W] tensor with channels-last strides *is* [N, H, W, C].
  at::Tensor in =
      input.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_roi_align_forward_cpu",
      [&] { roi_align_forward_impl<scalar_t>(in, rois_c, output, p, cl); });
  return output;
}

// ---------------------------------------------------------------------------------------
// Backward: deterministic by construction. Work is split by (batch image, channel block);
// each task owns its slice of the gradient and visits RoIs in index order, so every
// gradient element is summed in the same order whatever the thread count.
// ---------------------------------------------------------------------------------------

// dst[i] += w * src[i]; src is a private buffer, never aliased by dst.
template <typename acc_t>
inline void add_scaled(acc_t* dst, const acc_t* __restrict src, acc_t w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += w * src[i];
}

template <typename scalar_t>
void roi_align_backward_impl(const at::Tensor& grad, const at::Tensor& rois, at::Tensor& grad_buf,
                             const Params& p, int64_t channels, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_rois = rois.size(0), batch = p.batch, H = p.height, W = p.width;
  const int64_t PH = p.pooled_height, PW = p.pooled_width;
  const scalar_t* g_data = grad.const_data_ptr<scalar_t>();
  const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2),
                gs3 = grad.stride(3);
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  acc_t* gbuf = grad_buf.mutable_data_ptr<acc_t>();

  // RoIs of each image, in index order.
  std::vector<std::vector<int64_t>> rois_of(batch);
  for (int64_t k = 0; k < num_rois; ++k) {
    const int64_t b = roi_batch_index(static_cast<acc_t>(roi_data[k * 5]), batch);
    if (b >= 0) rois_of[b].push_back(k);
  }
  // Enough channel blocks to keep every thread busy, each a multiple of 16 channels.
  const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads() + batch - 1) / batch);
  int64_t block = (channels + want - 1) / want;
  block = std::min(channels, std::max<int64_t>(16, (block + 15) / 16 * 16));
  const int64_t blocks = (channels + block - 1) / block;

  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    RoiTaps<acc_t> taps;
    std::vector<acc_t> g(block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks;
      const int64_t c0 = (task % blocks) * block;
      const int64_t nc = std::min(block, channels - c0);
      for (int64_t k : rois_of[n]) {
        taps.compute(roi_data + k * 5, p);
        const auto& geo = taps.geometry;
        if (!geo.valid) continue;
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            const scalar_t* gp = g_data + k * gs0 + c0 * gs1 + ph * gs2 + pw * gs3;
            for (int64_t i = 0; i < nc; ++i) g[i] = static_cast<acc_t>(gp[i * gs1]) / geo.count;
            const acc_t* __restrict gv = g.data();
            if (channels_last) {
              acc_t* base = gbuf + n * H * W * channels + c0;
              taps.for_each_sample(ph, pw, W, channels, [&](const BilinearCorners<acc_t>& c) {
                // Corners coincide at the map border, so each is its own update.
                add_scaled(base + c.o1, gv, c.w1, nc);
                add_scaled(base + c.o2, gv, c.w2, nc);
                add_scaled(base + c.o3, gv, c.w3, nc);
                add_scaled(base + c.o4, gv, c.w4, nc);
              });
            } else {
              acc_t* base = gbuf + (n * channels + c0) * H * W;
              taps.for_each_sample(ph, pw, W, 1, [&](const BilinearCorners<acc_t>& c) {
                for (int64_t i = 0; i < nc; ++i) {
                  acc_t* plane = base + i * H * W;
                  plane[c.o1] += c.w1 * gv[i];
                  plane[c.o2] += c.w2 * gv[i];
                  plane[c.o3] += c.w3 * gv[i];
                  plane[c.o4] += c.w4 * gv[i];
                }
              });
            }
          }
        }
      }
    }
  });
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward_args(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                                channels, height, width, sampling_ratio);
  check_roi_batch_indices("cvops._roi_align_backward", rois, batch_size);

  const Params p{spatial_scale, pooled_height, pooled_width, sampling_ratio,
                 aligned,       batch_size,    height,       width};
  at::Tensor rois_c = rois.contiguous();
  const bool cl = use_channels_last(rois_c, p, channels, false);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  // Accumulate in the op-math type (float for half/bfloat16).
  at::Tensor buf =
      cl ? at::zeros({batch_size, height, width, channels}, grad.options().dtype(acc_type))
         : at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && buf.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "cvops_roi_align_backward_cpu",
        [&] { roi_align_backward_impl<scalar_t>(grad, rois_c, buf, p, channels, cl); });
  }
  if (cl) buf = buf.permute({0, 3, 1, 2});
  return buf.to(grad.scalar_type(), /*non_blocking=*/false, /*copy=*/false,
                at::MemoryFormat::Contiguous);
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace cvops
