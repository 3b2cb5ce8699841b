// The AVX-512 kernels once more, compiled with AVX512-BF16 as well (this file alone adds
// -mavx512bf16): bfloat16 results are rounded by VCVTNEPS2BF16 (see V32::bits in
// vec_avx512.h), the same bits with fewer instructions. The level is avx512_bf16.
#include "cpu/vec_avx512.h"
#include "cpu/isa_kernels.h"

namespace fusedce::cpu {
const KernelTable& avx512_bf16_kernels() {
  static const KernelTable table = make_table<avx512::V32, avx512::V64>("avx512_bf16");
  return table;
}
}  // namespace fusedce::cpu
