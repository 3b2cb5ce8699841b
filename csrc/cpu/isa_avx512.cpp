// The AVX-512 kernels (this file alone is compiled with -mavx512f -mavx512dq ...).
#include "cpu/vec_avx512.h"
#include "cpu/isa_kernels.h"

namespace fusedce::cpu {
const KernelTable& avx512_kernels() {
  static const KernelTable table = make_table<avx512::V32, avx512::V64>("avx512");
  return table;
}
}  // namespace fusedce::cpu
