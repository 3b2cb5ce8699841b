// When the CPU kernels write an output with streaming (non-temporal) stores: for outputs of
// at least streaming_threshold_bytes(row_bytes). Streaming skips reading each line before it
// is written, but sends every line to memory; plain stores leave the output in cache, where
// the caller, who reads it next, finds it. By default:
//   rows of at least kStreamedRowBytes (2 KiB): outputs from 16 MiB;
//   shorter rows: outputs from the size of the last-level cache (at least 16 MiB). On the
//   Intel VM below, streaming such rows cost more than it saved for outputs its cache
//   holds (plain stores there ask for their lines ahead: kWriteAheadRows, cross_entropy.h).
// Measured, float32 out=, one thread, time / a copy, outputs of 32-250 MiB (until
// 2026-12-03 the border was 4 KiB; the figures after it are for rows whose edge lines are
// asked for ahead, prefetch_edge_lines in rowwise.h):
//   Intel Xeon (Sapphire Rapids class VM, 2 MiB L2, 105 MiB L3), streamed vs plain stores:
//   65536x128 3.3x / 1.5x, 32768x256 2.1x / 1.3x, 16384x512 1.5x / 1.4x, 32768x600 2.1x /
//   2.0x, 8192x1024 1.26x / 1.42x, 4096x2048 1.14x / 1.95x, 16384x2000 1.5x / 2.0x,
//   2048x32000 1.4x / 2.0x.
//   AMD EPYC (Zen 5 VM, 1 MiB L2, 32 MiB L3): 65536x256 3.6x plain, 2.1x streamed (its
//   64 MiB output is beyond that cache).
//   Intel Xeon VM as above, streamed vs plain, medians of alternated processes, NumPy's
//   16-byte offset (aligned rows): 65536x256 2.02x / 1.80x, 32768x512 1.66x / 1.64x
//   (1.39x / 1.57x), 32768x600 1.55x / 1.68x (1.47x / 1.71x).
#pragma once
#include <cstdint>

namespace fusedce::cpu {

constexpr int64_t kStreamedRowBytes = 2048;

// The smallest output (bytes) streamed when its rows are row_bytes long.
int64_t streaming_threshold_bytes(int64_t row_bytes);
// Tests and benchmarks: stream every output of at least `bytes` (>= 1), whatever its rows,
// or with 0 go back to the default above.
void set_streaming_threshold_bytes(int64_t bytes);
// The default for rows shorter than kStreamedRowBytes: max(16 MiB, the last-level cache as the
// C library or Linux reports it).
int64_t short_row_streaming_threshold_bytes();

}  // namespace fusedce::cpu
