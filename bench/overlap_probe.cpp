// Does one core of this machine overlap arithmetic with streaming memory? A row-wise loop
// shaped like the fused kernels (read a row, compute on it in registers, write a row of the
// same size with streaming stores, rows one after another) is timed with more and more
// arithmetic per value, once on rows that stay in L2 and once on rows from memory, next to
// a copy (memcpy) of the same buffers. Where memory and arithmetic overlap, the time from
// memory is about max(copy, arithmetic); where the core does them in turn, their sum. Not a
// kernel of the library: a measuring tool for reading the benchmark's ratios on a machine
// (docs/benchmarks.md, "Memory and arithmetic on one core").
//
//   g++ -O2 -mavx2 -mfma -o build/overlap_probe bench/overlap_probe.cpp
//   build/overlap_probe [N C]        # default 32768 x 600 float32, 16-byte offset as NumPy
//
// Each output line: FMAs per value, ms in L2 (plain stores, scaled to N rows), ms of the
// copy, and ms from memory (streamed) without and with software prefetch, each followed by
// (memory - copy) / in L2: 0 means the arithmetic was hidden, 1 that it was added to the
// copy's time.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Rows of C floats at x, each computed on (fmas dependent FMAs per 8 values), written to y:
// with Stream, streaming stores for its whole lines and plain ones for the lines it shares
// with its neighbours (asked for 8 rows ahead, as the library does); otherwise plain stores.
// With Prefetch, the logits 4 KiB ahead are asked for (into L2) a line at a time, as the
// library's exp loop asks for the next chunk.
template <bool Stream, bool Prefetch = false>
void sweep(const float* x, float* y, int64_t rows, int64_t C, int fmas, float* row) {
  const __m256 half = _mm256_set1_ps(0.5f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    if (Stream && r + 8 < rows) {
      _mm_prefetch(reinterpret_cast<const char*>(yr + 8 * C), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(yr + 9 * C - 1), _MM_HINT_T0);
    }
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      if (Prefetch && c % 16 == 0) _mm_prefetch(reinterpret_cast<const char*>(xr + c) + 4096, _MM_HINT_T1);
      const __m256 v = _mm256_loadu_ps(xr + c);
      __m256 w = v;
      for (int k = 0; k < fmas; ++k) w = _mm256_fmadd_ps(w, v, half);
      _mm256_storeu_ps(row + c, w);
    }
    for (; c < C; ++c) row[c] = xr[c];
    if (!Stream) {
      std::memcpy(yr, row, static_cast<std::size_t>(C) * 4);
      continue;
    }
    // the row's first and last lines may be shared with its neighbours: plain stores
    const int64_t head = std::min<int64_t>(C, ((64 - reinterpret_cast<std::uintptr_t>(yr) % 64) % 64) / 4);
    const int64_t whole = (C - head) / 16 * 16;
    std::memcpy(yr, row, static_cast<std::size_t>(head) * 4);
    for (int64_t i = head; i < head + whole; i += 8) _mm256_stream_ps(yr + i, _mm256_loadu_ps(row + i));
    std::memcpy(yr + head + whole, row + head + whole, static_cast<std::size_t>(C - head - whole) * 4);
  }
  _mm_sfence();
}

template <class F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const double t0 = seconds();
    f();
    best = std::min(best, seconds() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t N = argc > 2 ? std::atoll(argv[1]) : 32768, C = argc > 2 ? std::atoll(argv[2]) : 600;
  const int64_t small_rows = std::max<int64_t>(1, (256 << 10) / (C * 4));  // 256 KiB: in L2
  const std::size_t bytes = static_cast<std::size_t>(N * C) * 4;
  char* a = static_cast<char*>(std::aligned_alloc(4096, bytes + 4096));
  char* b = static_cast<char*>(std::aligned_alloc(4096, bytes + 4096));
  float* x = reinterpret_cast<float*>(a + 16);  // NumPy's large arrays start 16 bytes past a line
  float* y = reinterpret_cast<float*>(b + 16);
  for (int64_t i = 0; i < N * C; ++i) x[i] = static_cast<float>(i % 97) * 0.01f;
  std::memset(y, 0, bytes);
  std::vector<float> row(static_cast<std::size_t>(C) + 16);
  std::printf("%lld x %lld float32, ms (and (memory - copy) / in L2)\n", static_cast<long long>(N),
              static_cast<long long>(C));
  std::printf("fmas/value    in L2   copy   memory, hardware prefetch   memory, + software prefetch\n");
  for (int fmas : {0, 2, 4, 8, 16}) {
    const double cached = best_of(200, [&] { sweep<false>(x, y, small_rows, C, fmas, row.data()); }) *
                          static_cast<double>(N) / static_cast<double>(small_rows);
    const double memory = best_of(7, [&] { sweep<true>(x, y, N, C, fmas, row.data()); });
    const double fetched = best_of(7, [&] { sweep<true, true>(x, y, N, C, fmas, row.data()); });
    const double copy = best_of(7, [&] { std::memcpy(y, x, bytes); });
    std::printf("%10d %8.2f %6.2f %13.2f (%4.2f) %22.2f (%4.2f)\n", fmas, cached * 1e3, copy * 1e3,
                memory * 1e3, (memory - copy) / cached, fetched * 1e3, (fetched - copy) / cached);
  }
  std::free(a);
  std::free(b);
  return 0;
}
