// When the CPU kernels write an output with streaming (non-temporal) stores: for outputs of
// at least streaming_threshold_bytes(). Below that size the output is likely to stay in the
// last-level cache, where plain stores are cheaper than sending every line to memory (and
// the caller, who reads the result next, finds it there). The threshold is the size of the
// last-level cache, and at least 16 MiB. Measured, float32 out=, one thread, against a copy:
//   Intel Xeon (Sapphire Rapids class VM, 105 MiB L3): 65536x128 (32 MiB) 3.5x streamed,
//   2.0x not; 65536x256 (64 MiB) 3.1x and 2.5x; 32768x600 (75 MiB) the same either way.
//   AMD EPYC (Zen 5 VM, 32 MiB L3): 65536x256 3.6x not streamed, 2.1x streamed.
#pragma once
#include <cstdint>

namespace fusedce::cpu {

int64_t streaming_threshold_bytes();
// Tests and benchmarks: set the threshold (bytes >= 1), or with 0 go back to the default.
void set_streaming_threshold_bytes(int64_t bytes);
// The default: max(16 MiB, the last-level cache as the C library or Linux reports it).
int64_t default_streaming_threshold_bytes();

}  // namespace fusedce::cpu
