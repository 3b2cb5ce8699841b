// The streaming-store thresholds (streaming.h): the last-level cache's size, read once.
#include "cpu/streaming.h"

#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

#include <atomic>
#include <cstdio>

namespace fusedce::cpu {
namespace {

constexpr int64_t kMinimum = int64_t(16) << 20;

// The largest cache of CPU 0 that Linux lists (bytes), or 0.
int64_t largest_listed_cache() {
  int64_t largest = 0;
  for (int index = 0; index < 8; ++index) {
    char path[96];
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
    std::FILE* f = std::fopen(path, "r");
    if (!f) break;
    long long size = 0;
    char unit = 0;
    const int read = std::fscanf(f, "%lld%c", &size, &unit);
    std::fclose(f);
    if (read < 1 || size <= 0) continue;
    if (read == 2 && (unit == 'K' || unit == 'k')) size <<= 10;
    if (read == 2 && (unit == 'M' || unit == 'm')) size <<= 20;
    if (size > largest) largest = size;
  }
  return largest;
}

// What Linux lists first: glibc's sysconf derives the L3 from CPUID and can be far off (an
// AMD EPYC VM with a 32 MiB L3 in /sys and lscpu: sysconf said 320 MiB).
int64_t last_level_cache_bytes() {
  const int64_t listed = largest_listed_cache();
  if (listed > 0) return listed;
  long size = -1;
#if defined(_SC_LEVEL3_CACHE_SIZE)
  size = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  return size > 0 ? size : 0;
}

std::atomic<int64_t>& chosen() {  // 0: the default
  static std::atomic<int64_t> bytes{0};
  return bytes;
}

}  // namespace

int64_t short_row_streaming_threshold_bytes() {
  static const int64_t bytes = [] {
    const int64_t llc = last_level_cache_bytes();
    return llc > kMinimum ? llc : kMinimum;
  }();
  return bytes;
}

int64_t streaming_threshold_bytes(int64_t row_bytes) {
  const int64_t set = chosen().load(std::memory_order_relaxed);
  if (set > 0) return set;
  return row_bytes >= kStreamedRowBytes ? kMinimum : short_row_streaming_threshold_bytes();
}

void set_streaming_threshold_bytes(int64_t bytes) {
  chosen().store(bytes > 0 ? bytes : 0, std::memory_order_relaxed);
}

}  // namespace fusedce::cpu
