// The AVX-512 kernels once more, compiled with AVX512-BF16 and AVX512-VBMI as well (this
// file alone adds -mavx512bf16 -mavx512vbmi): bfloat16 results are rounded by VCVTNEPS2BF16
// (see V32::bits in vec_avx512.h) and bfloat16 values widened by VPERMB (V32::from_bits),
// the same bits with fewer instructions. The level is avx512_bf16.
#include "cpu/vec_avx512.h"
#include "cpu/isa_kernels.h"

namespace fusedce::cpu {
const KernelTable& avx512_bf16_kernels() {
  static const KernelTable table = make_table<avx512::V32, avx512::V64>("avx512_bf16");
  return table;
}
}  // namespace fusedce::cpu
