// A C++ harness that calls the CPU cross-entropy kernels directly (no Python, no thread
// pool, no dispatch), next to copies and reads of the same buffers, so that an A/B of two
// builds of the kernels can be measured in alternated processes (bench/kernel_ab.sh). The
// "C++ harness" figures in docs/benchmarks.md come from it. Not built by the package or CI:
// it is a measuring tool for people changing the kernels.
//
//   bench/kernel_ab.sh build NAME [SRC_DIR]        # compiles SRC_DIR/csrc (default: this tree)
//   build/harness/NAME N C MODES [b]               # b: bfloat16 logits, else float32
//
// MODES is a string of digits, each a measurement printed on a line of its own, all in one
// process (so that their ratio is taken on the same machine state):
//   0 forward (loss only)         1 loss and gradient, out=      2 loss and gradient, in place
//   6 copy (std::copy: memcpy)    7 copy by streaming stores     8 read (a max over the logits)
// (7 needs OFF and DOFF multiples of 64; in place, every call after the first works on the gradient
// the last one left, which takes the same time.)
// Each line ends with "<time> ns/16": the time per 16 classes (per 64 bytes of float32).
// Environment: OFF=bytes puts the logits and the gradient that far past a page boundary
// (NumPy's large arrays start 16 bytes past a cache line), DOFF=bytes the gradient alone
// (default OFF: both at the same offset within a page, as NumPy's mmap'd arrays are); REPS=k calls each kernel k times
// per round (default: about 200 million values a measurement); STREAM_MIB=m streams every
// output of m MiB and more (0: the library's default). Built with -DHARNESS_AVX2 it uses the
// AVX2 kernels, which valgrind --tool=callgrind can run (it has no AVX-512).
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#ifdef HARNESS_AVX2
#include "cpu/vec_avx2.h"
#else
#include "cpu/vec_avx512.h"
#endif
#include "cpu/isa_kernels.h"

using namespace fusedce;
using namespace fusedce::cpu;
#ifdef HARNESS_AVX2
using V = avx2::V32;
#else
using V = avx512::V32;
#endif

namespace {

// A buffer of n values starting `offset` bytes past a page boundary.
template <class X>
struct PlacedBuffer {
  void* base = nullptr;
  X* data = nullptr;
  PlacedBuffer(int64_t n, int64_t offset) {
    const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(X) + offset + 4095) / 4096 * 4096;
    base = std::aligned_alloc(4096, bytes);
    if (!base) {
      std::fprintf(stderr, "out of memory\n");
      std::exit(1);
    }
    data = reinterpret_cast<X*>(static_cast<char*>(base) + offset);
  }
  ~PlacedBuffer() { std::free(base); }
};

// Copies by 64-byte streaming stores (the output's lines are not read first); needs the
// buffers on a cache line (OFF a multiple of 64).
void streamed_copy(const void* from, void* to, int64_t bytes) {
#ifdef HARNESS_AVX2
  for (int64_t i = 0; i + 32 <= bytes; i += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(static_cast<char*>(to) + i),
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(static_cast<const char*>(from) + i)));
#else
  for (int64_t i = 0; i + 64 <= bytes; i += 64)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(static_cast<char*>(to) + i),
                        _mm512_load_si512(static_cast<const char*>(from) + i));
#endif
  _mm_sfence();
}

float read_max(const float* x, int64_t n) {
  V m0 = V::set1(-1e30f), m1 = m0;
  int64_t i = 0;
  for (; i + 2 * V::width <= n; i += 2 * V::width) {
    m0 = V::max(m0, V::load(x + i));
    m1 = V::max(m1, V::load(x + i + V::width));
  }
  return V::max(m0, m1).hmax();
}

template <class X>
void measure(int64_t N, int64_t C, const char* modes) {
  const int64_t offset = std::getenv("OFF") ? std::atoll(std::getenv("OFF")) : 0;
  // DOFF: the gradient's offset past a page, when it should differ from the logits'
  const int64_t d_offset = std::getenv("DOFF") ? std::atoll(std::getenv("DOFF")) : offset;
  if (std::strchr(modes, '7') && (offset % 64 != 0 || d_offset % 64 != 0)) {  // (it used to crash)
    std::fprintf(stderr, "mode 7 needs OFF and DOFF multiples of 64 (OFF=%lld, DOFF=%lld)\n",
                 static_cast<long long>(offset), static_cast<long long>(d_offset));
    std::exit(2);
  }
  PlacedBuffer<X> x(N * C, offset), d(N * C, d_offset);
  std::vector<float> loss(N);
  std::vector<int64_t> target(N);
  std::mt19937 gen(0);
  std::normal_distribution<float> normal(0, 3);
  std::uniform_int_distribution<int64_t> cls(0, C - 1);
  for (int64_t i = 0; i < N * C; ++i) x.data[i] = narrow<X>(normal(gen));
  for (auto& t : target) t = cls(gen);
  std::memcpy(d.data, x.data, N * C * sizeof(X));  // touched
  const DType dtype = std::is_same_v<X, float> ? DType::Float32 : DType::BFloat16;
  const Rows logits{reinterpret_cast<std::uintptr_t>(x.data), N, C, C, dtype};
  const Rows grad{reinterpret_cast<std::uintptr_t>(d.data), N, C, C, dtype};
  const Target tg{TargetKind::ClassIndex, reinterpret_cast<std::uintptr_t>(target.data()), DType::Int64, 1};
  const LossOptions options;
  RowStats stats;
  stats.loss = reinterpret_cast<std::uintptr_t>(loss.data());
  const int per_round = std::getenv("REPS") ? std::atoi(std::getenv("REPS"))
                                            : static_cast<int>(std::max<int64_t>(1, 30000000 / (N * C)));
  const int64_t bytes = N * C * static_cast<int64_t>(sizeof(X));
  volatile float sink = 0;
  for (const char* m = modes; *m; ++m) {
    const int mode = *m - '0';
    const auto once = [&] {
      switch (mode) {
        case 0: cross_entropy_forward_rows<V, X>(logits, tg, options, stats, 0, N); break;
        case 1: cross_entropy_with_grad_rows<V, X>(logits, tg, options, stats, grad, 0, N); break;
        case 2: cross_entropy_with_grad_rows<V, X>(logits, tg, options, stats, logits, 0, N); break;
        case 6: std::copy(x.data, x.data + N * C, d.data); break;
        case 7: streamed_copy(x.data, d.data, bytes); break;
        case 8: sink = read_max(reinterpret_cast<const float*>(x.data), bytes / 4); break;
        default: std::fprintf(stderr, "unknown mode %d\n", mode); std::exit(2);
      }
    };
    once();  // warm-up
    double best = 1e300;
    for (int round = 0; round < 7; ++round) {  // the fastest round: other work only adds time
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < per_round; ++k) once();
      const auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / per_round);
    }
    static const char* names[] = {"forward", "out=", "inplace", "", "", "", "copy", "streamed_copy", "read"};
    std::printf("%s %lldx%lld %-14s %10.3f ms %8.2f ns/16\n", std::is_same_v<X, float> ? "float32" : "bfloat16",
                static_cast<long long>(N), static_cast<long long>(C), names[mode], best / 1e6,
                16 * best / static_cast<double>(N * C));
  }
  (void)sink;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s N C MODES [b]   (see the top of bench/kernel_harness.cpp)\n", argv[0]);
    return 2;
  }
  const int64_t N = std::atoll(argv[1]), C = std::atoll(argv[2]);
  if (std::getenv("STREAM_MIB")) set_streaming_threshold_bytes(std::atoll(std::getenv("STREAM_MIB")) << 20);
  if (argc > 4 && argv[4][0] == 'b') measure<BFloat16>(N, C, argv[3]);
  else measure<float>(N, C, argv[3]);
  return 0;
}
