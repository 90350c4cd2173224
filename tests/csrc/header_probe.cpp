// Runs the host/device headers' math on the CPU for tests/csrc/test_shared_headers.py.
//
// The test compiles this file with FMA enabled (-mfma) and GNU C++'s default
// -ffp-contract=fast: the compiler may then fuse a * b + c as nvcc does on the GPU, so what
// this program prints is what the CUDA kernels compute where rounding decides a count or an
// index. Each command prints one line of space-separated values.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/fixed_point_scale.h"
#include "common/roi_batch_index.h"
#include "ops/losses_launch.h"
#include "ops/roi_align.h"
#include "ops/roi_pool.h"

namespace {

double arg(char** argv, int i) { return std::strtod(argv[i], nullptr); }
long long iarg(char** argv, int i) { return std::strtoll(argv[i], nullptr, 10); }

}  // namespace

int main(int argc, char** argv) {
  using namespace cvops;
  if (argc < 2) return 2;
  const char* cmd = argv[1];
  // roi_geometry T batch x1 y1 x2 y2 scale aligned pooled sampling batch_size
  //   -> valid batch_index grid_h grid_w start_w bin_w (hex floats)
  if (!std::strcmp(cmd, "roi_geometry") && argc == 13) {
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const auto g = roi_align_math::roi_geometry<T>(
          T(arg(argv, 3)), T(arg(argv, 4)), T(arg(argv, 5)), T(arg(argv, 6)), T(arg(argv, 7)),
          T(arg(argv, 8)), iarg(argv, 9) != 0, iarg(argv, 10), iarg(argv, 10), iarg(argv, 11),
          iarg(argv, 12));
      std::printf("%d %lld %lld %lld %a %a\n", g.valid ? 1 : 0,
                  static_cast<long long>(g.batch_index), static_cast<long long>(g.grid_h),
                  static_cast<long long>(g.grid_w), static_cast<double>(g.start_w),
                  static_cast<double>(g.bin_w));
    };
    if (!std::strcmp(argv[2], "float")) run(0.0f);
    else run(0.0);
    return 0;
  }
  // sample_coord start p bin i grid (float) -> coord (hex float)
  if (!std::strcmp(cmd, "sample_coord") && argc == 7) {
    const float c = roi_align_math::sample_coord<float>(
        static_cast<float>(arg(argv, 2)), iarg(argv, 3), static_cast<float>(arg(argv, 4)),
        iarg(argv, 5), iarg(argv, 6));
    std::printf("%a\n", static_cast<double>(c));
    return 0;
  }
  // axis_tap coord size -> inside lo hi
  if (!std::strcmp(cmd, "axis_tap") && argc == 4) {
    const auto t = roi_align_math::axis_tap<float>(static_cast<float>(arg(argv, 2)), iarg(argv, 3));
    std::printf("%d %lld %lld\n", t.inside ? 1 : 0, static_cast<long long>(t.lo),
                static_cast<long long>(t.hi));
    return 0;
  }
  // roi_batch_index value batch_size -> index (float and double)
  if (!std::strcmp(cmd, "roi_batch_index") && argc == 4) {
    std::printf("%lld %lld\n",
                static_cast<long long>(roi_batch_index(static_cast<float>(arg(argv, 2)),
                                                       iarg(argv, 3))),
                static_cast<long long>(roi_batch_index(arg(argv, 2), iarg(argv, 3))));
    return 0;
  }
  // roi_pool_box batch x1 y1 x2 y2 scale batch_size -> valid batch_index
  if (!std::strcmp(cmd, "roi_pool_box") && argc == 9) {
    const auto b = roi_pool_math::roi_box(arg(argv, 2), arg(argv, 3), arg(argv, 4), arg(argv, 5),
                                          arg(argv, 6), arg(argv, 7), iarg(argv, 8));
    std::printf("%d %lld\n", b.valid ? 1 : 0, static_cast<long long>(b.batch_index));
    return 0;
  }
  // stats_launch rows len -> tiles blocks chunk_elems
  if (!std::strcmp(cmd, "stats_launch") && argc == 4) {
    const long long rows = iarg(argv, 2), len = iarg(argv, 3);
    std::printf("%lld %lld %lld\n", static_cast<long long>(loss_launch::stats_tiles(rows, len)),
                static_cast<long long>(loss_launch::stats_blocks(rows, len)),
                static_cast<long long>(loss_launch::kStatsChunk));
    return 0;
  }
  // stats_cover rows len blocks: walks the kernels' grid-stride loop over the tiles with
  // `blocks` blocks and checks every element of every row is covered exactly once.
  if (!std::strcmp(cmd, "stats_cover") && argc == 5) {
    const long long rows = iarg(argv, 2), len = iarg(argv, 3), blocks = iarg(argv, 4);
    const long long tiles = loss_launch::stats_tiles(rows, len);
    unsigned char* seen = static_cast<unsigned char*>(std::calloc(rows * len, 1));
    long long bad = 0;
    for (long long b = 0; b < blocks; ++b)
      for (long long tile = b; tile < tiles; tile += blocks) {
        const auto t = loss_launch::stats_tile(tile, len);
        if (t.row >= rows || t.begin >= t.end || t.end > len) ++bad;
        for (long long i = t.begin; i < t.end; ++i) ++seen[t.row * len + i];
      }
    for (long long i = 0; i < rows * len; ++i) bad += seen[i] != 1;
    std::free(seen);
    std::printf("%lld\n", bad);
    return 0;
  }
  // fixed_point max_abs bound -> exponent scale inv_scale (hex floats)
  if (!std::strcmp(cmd, "fixed_point") && argc == 4) {
    const int e = fixed_point_exponent(arg(argv, 2), arg(argv, 3));
    const double s = fixed_point_scale(arg(argv, 2), arg(argv, 3));
    std::printf("%d %a %a\n", e, s, 1.0 / s);
    return 0;
  }
  std::fprintf(stderr, "unknown command or wrong arguments: %s\n", cmd);
  return 2;
}
