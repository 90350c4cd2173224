// Launch shape of the CUDA loss-statistics reductions, as plain functions (compiled for the
// host too, so tests/csrc can check them at sizes no CPU test could allocate).
//
// Each (row, chunk) tile of a [rows, len] reduction is reduced by one block: row r is a
// (sample, class) pair, chunk k covers elements [k * kStatsChunk, (k + 1) * kStatsChunk).
// The tiles are numbered row-major and flattened into gridDim.x, walked with a grid-stride
// loop: gridDim.y (at most 65,535) would cap the rows, e.g. a multilabel [1024, 80, 8, 8]
// Dice has 81,920 of them.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace cvops {
namespace loss_launch {

constexpr int kStatsThreads = 256;
constexpr int64_t kStatsChunk = kStatsThreads * 16;  // elements per tile
constexpr int64_t kMaxGridX = 2147483647;            // CUDA's limit on gridDim.x

CVOPS_HOST_DEVICE inline int64_t stats_chunks(int64_t len) {
  return (len + kStatsChunk - 1) / kStatsChunk;
}

CVOPS_HOST_DEVICE inline int64_t stats_tiles(int64_t rows, int64_t len) {
  return rows * stats_chunks(len);
}

// Blocks to launch: one per tile up to CUDA's limit (the grid-stride loop does the rest).
CVOPS_HOST_DEVICE inline int64_t stats_blocks(int64_t rows, int64_t len) {
  const int64_t tiles = stats_tiles(rows, len);
  return tiles < kMaxGridX ? tiles : kMaxGridX;
}

struct StatsTile {
  int64_t row, chunk;
  int64_t begin, end;  // element range of the chunk within the row
};

CVOPS_HOST_DEVICE inline StatsTile stats_tile(int64_t tile, int64_t len) {
  const int64_t chunks = stats_chunks(len);
  StatsTile t;
  t.row = tile / chunks;
  t.chunk = tile % chunks;
  t.begin = t.chunk * kStatsChunk;
  t.end = t.begin + kStatsChunk < len ? t.begin + kStatsChunk : len;
  return t;
}

}  // namespace loss_launch
}  // namespace cvops
