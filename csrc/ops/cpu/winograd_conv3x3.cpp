// Winograd F(2x2, 3x3) transforms for the detectors' CPU inference path
// (cvops/models/_winograd.py): a 3x3, stride-1, padding-1 convolution computed as 16 GEMMs on
// transformed 4x4 input tiles, 2.25x fewer multiply-adds than the direct convolution.
//
//   _winograd_f2x3_input(x, tile_begin, tile_count)   x: [N, C, H, W] float32
//       -> V [16, tile_count, C]: V[4i + j][t] = (B^T d B)[i][j] for tile d = tile_begin + t
//          of the N * ceil(H / 2) * ceil(W / 2) tiles (image-major, then rows, then columns;
//          4x4 pixels from row 2ty - 1 and column 2tx - 1, zero outside the image)
//   _winograd_f2x3_output_(out, M, tile_begin, bias, residual, relu)
//       M: 16 tensors [tile_count, K] (M[p] = V[p] @ U[p]^T, U the transformed weight);
//       writes relu(A^T m A + bias + residual) into those tiles' pixels of out
//       ([N, K, H, W] float32, channels-last memory)
// A convolution walks its tiles in chunks (cvops/models/_winograd.py), so that V and M stay
// small.
//
// B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] and
// A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] hold only 0 and +-1: the transforms are additions, so
// they round the same on every ISA and never contract into FMAs. Both walk one tile per
// iteration with channels innermost (contiguous in channels-last memory), which the compiler
// vectorises for the ISA dispatch_isa picks; out-of-image pixels read a zero row and the
// outputs past an odd H or W are written to a scratch row, so the loops have no branches.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/simd.h"

namespace cvops {
namespace {

constexpr int64_t kPositions = 16;  // 4x4 transformed tile
// Tiles per parallel task: enough work (16 x C loads and stores each) to amortise the task.
constexpr int64_t kTileGrain = 16;

struct TileGrid {
  int64_t n, h, w, th, tw;
  int64_t tiles() const { return n * th * tw; }
  // Tile t's image and the row and column of its top-left output pixel.
  struct Tile {
    int64_t img, row, col;
  };
  Tile tile(int64_t t) const { return {t / (th * tw), 2 * (t / tw % th), 2 * (t % tw)}; }
  bool inside(int64_t y, int64_t x) const { return y >= 0 && y < h && x >= 0 && x < w; }
  // Offset of pixel (y, x) of image img in channels-last memory, in units of its C channels.
  int64_t pixel(int64_t img, int64_t y, int64_t x) const { return (img * h + y) * w + x; }
};

TileGrid grid_of(int64_t n, int64_t h, int64_t w) { return {n, h, w, (h + 1) / 2, (w + 1) / 2}; }

void check_input(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": input must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, op, ": input must be float32, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": input must be a CPU tensor");
}

// d: the tile's 16 pixel rows (C channels each); v: the 16 destination rows.
template <int L>
CVOPS_ALWAYS_INLINE inline void input_tile(const float* const (&d)[16], float* const (&v)[16],
                                           int64_t channels) {
#pragma GCC ivdep
  for (int64_t c = 0; c < channels; ++c) {
    float t[4][4];
    for (int j = 0; j < 4; ++j) {  // B^T d: combine the rows
      const float d0 = d[j][c], d1 = d[4 + j][c], d2 = d[8 + j][c], d3 = d[12 + j][c];
      t[0][j] = d0 - d2;
      t[1][j] = d1 + d2;
      t[2][j] = d2 - d1;
      t[3][j] = d1 - d3;
    }
    for (int i = 0; i < 4; ++i) {  // (.) B: combine the columns
      v[4 * i + 0][c] = t[i][0] - t[i][2];
      v[4 * i + 1][c] = t[i][1] + t[i][2];
      v[4 * i + 2][c] = t[i][2] - t[i][1];
      v[4 * i + 3][c] = t[i][1] - t[i][3];
    }
  }
}

void check_tile_range(const char* op, int64_t begin, int64_t count, int64_t tiles) {
  TORCH_CHECK_VALUE(begin >= 0 && count >= 0 && begin + count <= tiles, op,
                    ": tiles [tile_begin, tile_begin + tile_count) = [", begin, ", ", begin + count,
                    ") must lie in [0, ", tiles, ")");
}

at::Tensor winograd_input_cpu(const at::Tensor& input, int64_t tile_begin, int64_t tile_count) {
  constexpr const char* op = "cvops._winograd_f2x3_input";
  check_input(op, input);
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t channels = x.size(1);
  const TileGrid g = grid_of(x.size(0), x.size(2), x.size(3));
  check_tile_range(op, tile_begin, tile_count, g.tiles());
  const int64_t tiles = tile_count;
  at::Tensor v = at::empty({kPositions, tiles, channels}, x.options());
  if (tiles == 0 || channels == 0) return v;
  const std::vector<float> zeros(channels, 0.f);
  const float* src = x.const_data_ptr<float>();
  float* dst = v.mutable_data_ptr<float>();
  at::parallel_for(0, tiles, kTileGrain, [&](int64_t begin, int64_t end) {
    simd::dispatch_isa([&](auto lanes) CVOPS_ALWAYS_INLINE {
      for (int64_t t = begin; t < end; ++t) {
        const TileGrid::Tile tile = g.tile(tile_begin + t);
        const float* d[16];
        float* out[16];
        for (int i = 0; i < 4; ++i) {
          for (int j = 0; j < 4; ++j) {
            const int64_t y = tile.row - 1 + i, x = tile.col - 1 + j;
            d[4 * i + j] = g.inside(y, x) ? src + g.pixel(tile.img, y, x) * channels : zeros.data();
            out[4 * i + j] = dst + ((4 * i + j) * tiles + t) * channels;
          }
        }
        input_tile<decltype(lanes)::value>(d, out, channels);
      }
    });
  });
  return v;
}

// m: the tile's 16 rows of K sums; y: its 4 output pixels (row-major 2x2), r: their residual
// rows (a zero row when there is none).
template <int L, bool kRelu>
CVOPS_ALWAYS_INLINE inline void output_tile(const float* const (&m)[16], const float* bias,
                                            const float* const (&r)[4], float* const (&y)[4],
                                            int64_t channels) {
#pragma GCC ivdep
  for (int64_t k = 0; k < channels; ++k) {
    float a[2][4];
    for (int j = 0; j < 4; ++j) {  // A^T m
      const float m0 = m[j][k], m1 = m[4 + j][k], m2 = m[8 + j][k], m3 = m[12 + j][k];
      a[0][j] = m0 + m1 + m2;
      a[1][j] = m1 - m2 - m3;
    }
    for (int i = 0; i < 2; ++i) {  // (.) A, then bias, residual and ReLU
      float o0 = a[i][0] + a[i][1] + a[i][2] + bias[k] + r[2 * i][k];
      float o1 = a[i][1] - a[i][2] - a[i][3] + bias[k] + r[2 * i + 1][k];
      if (kRelu) {
        o0 = o0 < 0.f ? 0.f : o0;  // NaN stays NaN, as in relu
        o1 = o1 < 0.f ? 0.f : o1;
      }
      y[2 * i][k] = o0;
      y[2 * i + 1][k] = o1;
    }
  }
}

void winograd_output_cpu(at::Tensor& out, at::TensorList m, int64_t tile_begin,
                         const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& residual, bool relu) {
  constexpr const char* op = "cvops._winograd_f2x3_output_";
  TORCH_CHECK_VALUE(out.dim() == 4 && out.scalar_type() == at::kFloat && out.device().is_cpu() &&
                        out.is_contiguous(at::MemoryFormat::ChannelsLast),
                    op, ": out must be a 4-D float32 CPU tensor in channels-last memory");
  TORCH_CHECK_VALUE(static_cast<int64_t>(m.size()) == kPositions, op,
                    ": m must hold 16 tensors (one per transformed position), got ", m.size());
  const int64_t channels = out.size(1);
  const TileGrid g = grid_of(out.size(0), out.size(2), out.size(3));
  TORCH_CHECK_VALUE(m[0].dim() == 2 && m[0].size(1) == channels, op, ": m[0] must be [tiles, ",
                    channels, "] for out ", out.sizes(), ", got ", m[0].sizes());
  const int64_t tiles = m[0].size(0);
  check_tile_range(op, tile_begin, tiles, g.tiles());
  std::vector<at::Tensor> mc;
  for (const at::Tensor& t : m) {
    TORCH_CHECK_VALUE(
        t.sizes() == m[0].sizes() && t.scalar_type() == at::kFloat && t.device().is_cpu(), op,
        ": every tensor of m must be a CPU float32 [", tiles, ", ", channels, "] tensor, got ",
        t.scalar_type(), " ", t.sizes());
    mc.push_back(t.contiguous());
  }
  if (tiles == 0 || channels == 0) return;
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->numel() == channels && bias->scalar_type() == at::kFloat, op,
                      ": bias must be float32 with ", channels, " elements");
    b = bias->contiguous();
  }
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK_VALUE(residual->sizes() == out.sizes() && residual->scalar_type() == at::kFloat, op,
                      ": residual must be float32 ", out.sizes(), ", got ", residual->scalar_type(),
                      " ", residual->sizes());
    res = residual->contiguous(at::MemoryFormat::ChannelsLast);
  }
  const std::vector<float> zeros(channels, 0.f);  // the absent bias and residual
  const float* bp = b.defined() ? b.const_data_ptr<float>() : zeros.data();
  const float* rp = res.defined() ? res.const_data_ptr<float>() : nullptr;
  float* dst = out.mutable_data_ptr<float>();
  const float* mp[16];
  for (int p = 0; p < 16; ++p) mp[p] = mc[p].const_data_ptr<float>();
  at::parallel_for(0, tiles, kTileGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(channels);  // the outputs past an odd h or w
    simd::dispatch_isa([&](auto lanes) CVOPS_ALWAYS_INLINE {
      simd::dispatch_bool(relu, [&](auto kRelu) CVOPS_ALWAYS_INLINE {
        for (int64_t t = begin; t < end; ++t) {
          const TileGrid::Tile tile = g.tile(tile_begin + t);
          const float* mt[16];
          for (int p = 0; p < 16; ++p) mt[p] = mp[p] + t * channels;
          const float* r[4];
          float* y[4];
          for (int i = 0; i < 2; ++i) {
            for (int j = 0; j < 2; ++j) {
              const int64_t yy = tile.row + i, xx = tile.col + j;
              const bool inside = g.inside(yy, xx);
              const int64_t at = g.pixel(tile.img, yy, xx) * channels;
              y[2 * i + j] = inside ? dst + at : scratch.data();
              r[2 * i + j] = inside && rp != nullptr ? rp + at : zeros.data();
            }
          }
          output_tile<decltype(lanes)::value, decltype(kRelu)::value>(mt, bp, r, y, channels);
        }
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cvops, m) {
  m.def("_winograd_f2x3_input(Tensor input, int tile_begin, int tile_count) -> Tensor");
  m.def(
      "_winograd_f2x3_output_(Tensor(a!) out, Tensor[] m, int tile_begin, Tensor? bias, "
      "Tensor? residual, bool relu) -> ()");
}

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("_winograd_f2x3_input", &winograd_input_cpu);
  m.impl("_winograd_f2x3_output_", &winograd_output_cpu);
}

}  // namespace cvops
