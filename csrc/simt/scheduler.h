// The heart of the execution model: CUDA threads as fibers, and the points where they wait.
//
// A launch runs its grid one cluster at a time (a plain launch: clusters of one block). All
// threads of all blocks of the cluster are alive together, each a fiber with its own stack,
// all on the calling OS thread. A fiber runs until it must wait (a block, cluster or warp
// barrier, a shuffle, a vote) or ends; the scheduler then runs the next fiber whose wait is
// over. When every remaining fiber waits and none can go on, the kernel is reported as a
// deadlock, naming who waits where. Faults (a warp operation with a wrong mask, a lane that
// leaves while others wait for it, __trap) end the launch at once with a KernelFault.
//
// Between two waits a fiber runs alone, so memory is sequentially consistent and atomics are
// trivially atomic: missing fences and races on global memory cannot show here (docs/emulated.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <vector_types.h>

namespace simt {

// A kernel did something that is undefined (or a deadlock) on a real GPU.
class KernelFault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where in the kernel source a wait or a fault happened.
struct Site {
  const char* file;
  int line;
  // As a default argument, the place of the call (GCC and Clang evaluate these builtins there).
  static Site here(const char* file = __builtin_FILE(), int line = __builtin_LINE()) { return Site{file, line}; }
};
#define SIMT_SITE (::simt::Site{__FILE__, __LINE__})

constexpr int kWarpSize = 32;

struct GridShape {
  dim3 grid, block, cluster;
  std::size_t dynamic_smem = 0;
};

// Runs body(arg) once per CUDA thread of the grid. Throws KernelFault.
void run_grid(const char* kernel_name, const GridShape& shape, void (*body)(void*), void* arg);

// 0: threads run in a fixed order (block by block, thread by thread) between waits; any other
// value shuffles that order, differently at every round, from this seed. Initially the
// environment variable FUSEDCE_EMULATED_SHUFFLE, else 0.
void set_shuffle_seed(unsigned seed);
unsigned shuffle_seed();

// ---- called from inside a kernel (a fiber) ---------------------------------------------------

unsigned linear_thread();  // threadIdx in the block, linearised (x fastest)
unsigned lane();           // linear_thread() % 32

void sync_block(Site site);
void sync_cluster(Site site);

// A warp-level meeting of the lanes in `mask`: every lane named must arrive at the same
// operation; the calling lane must be one of them. Each lane deposits `size` bytes of `in`;
// after the meeting `out` receives the `size` bytes deposited by lane `source_of(lane)` (when
// `out` is not null). `what` names the operation for reports.
using SourceLane = int (*)(int lane, const void* ctx);
void warp_exchange(unsigned mask, const void* in, void* out, std::size_t size, SourceLane source_of,
                   const void* ctx, const char* what, Site site);
// The deposits of all 32 lanes at the meeting (slots of lanes outside `mask` are zero).
void warp_gather(unsigned mask, const void* in, void* all32, std::size_t size, const char* what, Site site);
unsigned active_lanes();  // lanes of this warp that have not exited

[[noreturn]] void fault(const std::string& what, Site site);

// Shared memory of the running block.
void* static_shared(const void* tag, std::size_t size, std::size_t align);
void* dynamic_shared();
void* map_shared_rank(const void* p, unsigned rank, Site site);  // DSMEM: the same variable in another block of the cluster
unsigned cluster_rank();        // the block's rank in its cluster
dim3 cluster_dim();
uint3 cluster_index();          // the block's position within its cluster

}  // namespace simt

// CUDA's built-in variables for the running thread, refreshed by the scheduler before each switch.
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;
