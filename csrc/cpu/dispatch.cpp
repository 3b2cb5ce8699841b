// Which instruction set's kernels run: the best this CPU supports, chosen once, unless the
// environment variable FUSEDCE_SIMD or set_simd_level() (tests, benchmarks) names another.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu/kernel_table.h"

namespace fusedce::cpu {
namespace {

struct Level {
  const char* name;
  const KernelTable& (*table)();
  bool (*supported)();
};

bool always() { return true; }
#if defined(FUSEDCE_X86)
// (F16C converts float16; every AVX2 processor has it, but it is a flag of its own)
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
}
#if defined(FUSEDCE_AVX512_BF16)  // (CMake leaves the level out when the compiler lacks it)
// (VBMI widens bfloat16 in one operation, vec_avx512.h; every CPU with AVX512-BF16 has it
// but Cooper Lake, which takes the avx512 level)
bool has_avx512_bf16() {
  return has_avx512() && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi");
}
#endif
const Level kLevels[] = {
#if defined(FUSEDCE_AVX512_BF16)
                         {"avx512_bf16", avx512_bf16_kernels, has_avx512_bf16},
#endif
                         {"avx512", avx512_kernels, has_avx512},
                         {"avx2", avx2_kernels, has_avx2},
                         {"portable", portable_kernels, always}};
#else
const Level kLevels[] = {{"portable", portable_kernels, always}};
#endif
constexpr int kLevelCount = sizeof(kLevels) / sizeof(kLevels[0]);

const Level* find_level(const char* name) {
  for (const Level& level : kLevels)
    if (std::strcmp(level.name, name) == 0 && level.supported()) return &level;
  return nullptr;
}

const KernelTable* initial_table() {
  if (const char* wanted = std::getenv("FUSEDCE_SIMD"))
    if (const Level* level = find_level(wanted)) return &level->table();
  for (const Level& level : kLevels)
    if (level.supported()) return &level.table();
  return &portable_kernels();
}

std::atomic<const KernelTable*>& active() {
  static std::atomic<const KernelTable*> table{initial_table()};
  return table;
}

}  // namespace

const KernelTable& active_kernels() { return *active().load(std::memory_order_acquire); }
const char* simd_level() { return active_kernels().name; }

const char* const* available_simd_levels(int* count) {
  static const char* names[kLevelCount];
  static int n = [] {
    int k = 0;
    for (const Level& level : kLevels)
      if (level.supported()) names[k++] = level.name;
    return k;
  }();
  *count = n;
  return names;
}

bool set_simd_level(const char* name) {
  const Level* level = find_level(name);
  if (!level) return false;
  active().store(&level->table(), std::memory_order_release);
  return true;
}

}  // namespace fusedce::cpu
