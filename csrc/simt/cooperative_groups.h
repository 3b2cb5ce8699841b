// The pieces of CUDA's cooperative groups the execution model provides: the thread block, its
// tiled partitions (1 to 32 lanes), and the thread-block cluster with distributed shared memory.
#pragma once

#include "simt/device.h"

namespace cooperative_groups {

class thread_block {
 public:
  static void sync(::simt::Site site = SIMT_CALLER) { ::simt::sync_block(site); }
  static unsigned thread_rank() { return ::simt::linear_thread(); }
  static unsigned num_threads() { return blockDim.x * blockDim.y * blockDim.z; }
  static unsigned size() { return num_threads(); }
  static dim3 group_dim() { return blockDim; }
  static dim3 dim_threads() { return blockDim; }
  static uint3 thread_index() { return threadIdx; }
  static uint3 group_index() { return blockIdx; }
};
inline thread_block this_thread_block() { return {}; }

// N consecutive lanes of a warp (N a power of two, at most 32).
template <unsigned N>
class thread_block_tile {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "tile size must be a power of two <= 32");

 public:
  static unsigned thread_rank() { return ::simt::lane() % N; }
  static unsigned meta_group_rank() { return ::simt::linear_thread() / N; }
  static unsigned meta_group_size() { return (thread_block::num_threads() + N - 1) / N; }
  static constexpr unsigned num_threads() { return N; }
  static constexpr unsigned size() { return N; }
  static unsigned mask() {
    return N == 32 ? 0xffffffffu : ((1u << N) - 1u) << (::simt::lane() / N * N);
  }
  static void sync(::simt::Site site = SIMT_CALLER) { __syncwarp(mask(), site); }
  template <typename T>
  static T shfl(T v, int src, ::simt::Site site = SIMT_CALLER) {
    return __shfl_sync(mask(), v, src, static_cast<int>(N), site);
  }
  template <typename T>
  static T shfl_up(T v, unsigned delta, ::simt::Site site = SIMT_CALLER) {
    return __shfl_up_sync(mask(), v, delta, static_cast<int>(N), site);
  }
  template <typename T>
  static T shfl_down(T v, unsigned delta, ::simt::Site site = SIMT_CALLER) {
    return __shfl_down_sync(mask(), v, delta, static_cast<int>(N), site);
  }
  template <typename T>
  static T shfl_xor(T v, unsigned lane_mask, ::simt::Site site = SIMT_CALLER) {
    return __shfl_xor_sync(mask(), v, static_cast<int>(lane_mask), static_cast<int>(N), site);
  }
  static int any(int p, ::simt::Site site = SIMT_CALLER) { return __any_sync(mask(), p, site); }
  static int all(int p, ::simt::Site site = SIMT_CALLER) { return __all_sync(mask(), p, site); }
  static unsigned ballot(int p, ::simt::Site site = SIMT_CALLER) {
    return __ballot_sync(mask(), p, site) >> (::simt::lane() / N * N);
  }
};

template <unsigned N, typename Parent>
thread_block_tile<N> tiled_partition(const Parent&) {
  return {};
}

// The blocks of one cluster: all alive together; each can reach the others' shared memory.
class cluster_group {
 public:
  static void sync(::simt::Site site = SIMT_CALLER) { ::simt::sync_cluster(site); }
  static unsigned block_rank() { return ::simt::cluster_rank(); }
  static unsigned num_blocks() {
    const dim3 d = ::simt::cluster_dim();
    return d.x * d.y * d.z;
  }
  static dim3 dim_blocks() { return ::simt::cluster_dim(); }
  static uint3 block_index() { return ::simt::cluster_index(); }
  static unsigned thread_rank() { return block_rank() * thread_block::num_threads() + ::simt::linear_thread(); }
  static unsigned num_threads() { return num_blocks() * thread_block::num_threads(); }
  template <typename T>
  static T* map_shared_rank(T* p, unsigned rank, ::simt::Site site = SIMT_CALLER) {
    return static_cast<T*>(::simt::map_shared_rank(p, rank, site));
  }
  template <typename T>
  static T& map_shared_rank(T& r, unsigned rank, ::simt::Site site = SIMT_CALLER) {
    return *map_shared_rank(&r, rank, site);
  }
};
inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups
