// The bfloat16 row kernels of cross_entropy.cuh (one dtype per file: they compile in parallel).
#include "cross_entropy.cuh"

namespace fusedce::cuda::detail {
template void run_row_op_typed<__nv_bfloat16>(RowMode, const Rows&, const Target&, const LossOptions&, const RowStats&,
                                              const Rows&, const Launch&, const ShardStats*);
}  // namespace fusedce::cuda::detail
