// A small pool of worker threads that splits a range of rows into tasks. The calling thread
// works too; one parallel_for runs at a time (others wait), so it is safe to call from
// several Python threads.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace fusedce::cpu {

// Runs body(begin, end) over [0, n) in pieces of at least `grain` items, on up to
// num_threads() threads. Returns when all pieces are done.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

// A buffer of at least `bytes` bytes, 64-byte aligned, private to the calling thread and
// kept for its next call (the kernels' scratch row), or nullptr if it cannot be allocated.
void* thread_scratch(std::size_t bytes);

int num_threads();
void set_num_threads(int n);  // n >= 1
int default_num_threads();    // the cores this process may run on, or FUSEDCE_NUM_THREADS

}  // namespace fusedce::cpu
