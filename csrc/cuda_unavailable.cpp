// Built instead of csrc/cuda/*.cu when no CUDA compiler was found: the CUDA ops exist but
// report that they are unavailable (the Python layer checks cuda_available() first).
#include <stdexcept>

#include "core/ops.h"

namespace fusedce::cuda {
namespace {
[[noreturn]] void unavailable() { throw std::runtime_error("fusedce was built without CUDA support"); }
}  // namespace

void softmax_forward(const Rows&, const Rows&, bool, const Launch&) { unavailable(); }
void softmax_backward(const Rows&, const Rows&, const Rows&, bool, const Launch&) { unavailable(); }
void cross_entropy_forward(const Rows&, const Target&, const LossOptions&, const RowStats&, const Launch&) {
  unavailable();
}
void cross_entropy_with_grad(const Rows&, const Target&, const LossOptions&, const RowStats&, const Rows&,
                             const Launch&) {
  unavailable();
}
void cross_entropy_shard_stats(const Rows&, const Target&, const LossOptions&, const ShardStats&, const Launch&) {
  unavailable();
}
void nll_forward(const Rows&, const Target&, const LossOptions&, const RowStats&, const Launch&) { unavailable(); }
void nll_backward(const Rows&, const Target&, const LossOptions&, const RowStats&, const Rows&, const Launch&) {
  unavailable();
}
void mse_forward(const Rows&, const Rows&, const RowStats&, const Rows&, const Launch&) { unavailable(); }
void mse_backward(const Rows&, const Rows&, const Rows&, const RowStats&, const Rows&, const Launch&) {
  unavailable();
}
bool available() { return false; }
int device_count() { return 0; }
std::string unavailable_reason() {
  return "fusedce was built without its CUDA kernels (no CUDA compiler was found, or FUSEDCE_CUDA=OFF)";
}
const char* build_info() { return "not built"; }
}  // namespace fusedce::cuda
