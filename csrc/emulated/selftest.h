// Self-check kernels of the execution model: each exercises one piece of CUDA semantics (or
// one bug the model must catch) and returns what it computed, for tests/test_emulated_model.py.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace emulated {
// Throws std::invalid_argument for an unknown name and simt::KernelFault where the kernel is
// meant to fault.
std::vector<int64_t> selftest(const std::string& name);
}
