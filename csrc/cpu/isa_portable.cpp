// The portable kernels: plain C++, for any CPU.
#include "cpu/vec_portable.h"
#include "cpu/isa_kernels.h"

namespace fusedce::cpu {
const KernelTable& portable_kernels() {
  static const KernelTable table = make_table<portable::V32, portable::V64>("portable");
  return table;
}
}  // namespace fusedce::cpu
