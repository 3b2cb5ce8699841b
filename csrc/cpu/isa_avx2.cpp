// The AVX2 + FMA kernels (this file alone is compiled with -mavx2 -mfma).
#include "cpu/vec_avx2.h"
#include "cpu/isa_kernels.h"

namespace fusedce::cpu {
const KernelTable& avx2_kernels() {
  static const KernelTable table = make_table<avx2::V32, avx2::V64>("avx2");
  return table;
}
}  // namespace fusedce::cpu
