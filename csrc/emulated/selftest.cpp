// The model's self-check kernels (see selftest.h). Written like any CUDA source of the project:
// they include simt/simt.cuh and would compile under nvcc too.
#include "emulated/selftest.h"

#include <stdexcept>

#include "simt/simt.cuh"

namespace emulated {
namespace {

constexpr unsigned kFull = 0xffffffffu;

// ---- semantics ---------------------------------------------------------------------------------

// out[lane] = the lane each shuffle read (every lane offers its own lane number)
__global__ void shuffle_all(int mode, int b, int width, int* out) {
  const int lane = static_cast<int>(threadIdx.x);
  int r = -1;
  switch (mode) {
    case 0: r = __shfl_sync(kFull, lane, b, width); break;
    case 1: r = __shfl_up_sync(kFull, lane, static_cast<unsigned>(b), width); break;
    case 2: r = __shfl_down_sync(kFull, lane, static_cast<unsigned>(b), width); break;
    case 3: r = __shfl_xor_sync(kFull, lane, b, width); break;
  }
  out[lane] = r;
}

// Only the lanes of `mask` take part; the others record -1.
__global__ void shuffle_partial(unsigned mask, int* out) {
  const int lane = static_cast<int>(threadIdx.x);
  int r = -1;
  if ((mask >> lane) & 1u) r = __shfl_down_sync(mask, lane * 10, 1, 8);
  out[lane] = r;
}

__global__ void votes(unsigned* out) {
  const int lane = static_cast<int>(threadIdx.x);
  const unsigned b = __ballot_sync(kFull, lane % 3 == 0);
  const int any = __any_sync(kFull, lane == 7);
  const int all = __all_sync(kFull, lane < 40);
  unsigned part = 0;
  if (lane >= 8 && lane < 16) part = __ballot_sync(0x0000ff00u, lane & 1);
  if (lane == 0) {
    out[0] = b;
    out[1] = static_cast<unsigned>(any);
    out[2] = static_cast<unsigned>(all);
  }
  if (lane == 9) out[3] = part;
}

__global__ void atomics(int* count, int* top, float* sum) {
  const int id = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(count, 1);
  atomicMax(top, id);
  atomicAdd(sum, 0.5f);
}

// Each block of a cluster of 4 reads its neighbour's static shared memory.
__global__ void cluster_neighbours(int* out) {
  SIMT_SHARED(int[32], mine);
  auto cluster = cooperative_groups::this_cluster();
  const unsigned rank = cluster.block_rank();
  mine[threadIdx.x] = static_cast<int>(blockIdx.x * 100 + threadIdx.x);
  cluster.sync();
  const int* theirs = cluster.map_shared_rank(&mine[0], (rank + 1) % cluster.num_blocks());
  out[blockIdx.x * 32 + threadIdx.x] = theirs[threadIdx.x];
  cluster.sync();  // keep this block's shared memory alive until the neighbour has read it
}

// Block-wide reversal through dynamic shared memory.
__global__ void reverse_block(int* out) {
  SIMT_DYNAMIC_SHARED(int, buf);
  const unsigned n = blockDim.x;
  buf[threadIdx.x] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = buf[n - 1 - threadIdx.x];
}

// Max over tiles of 8 lanes.
__global__ void tile_max(const int* in, int* out) {
  auto tile = cooperative_groups::tiled_partition<8>(cooperative_groups::this_thread_block());
  int v = in[threadIdx.x];
  for (unsigned o = 4; o > 0; o >>= 1) {
    const int u = tile.shfl_xor(v, o);
    v = u > v ? u : v;
  }
  if (tile.thread_rank() == 0) out[tile.meta_group_rank()] = v;
}

// Relies on lock-step warps: lane L reads what lane L-1 wrote, with no __syncwarp between.
__global__ void lockstep_reliance(int* out) {
  SIMT_SHARED(int[32], slot);
  const int lane = static_cast<int>(threadIdx.x);
  slot[lane] = lane;
  out[lane] = lane == 0 ? 0 : slot[lane - 1];  // a race on a GPU, too
}

// ---- bugs the model must report ----------------------------------------------------------------

__global__ void divergent_shuffle(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_xor_sync(kFull, v, 1);
  out[threadIdx.x] = v;
}

__global__ void lane_outside_mask(int* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, static_cast<int>(threadIdx.x), 0);
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Warp 1's low half waits at a warp barrier for its high half, which waits at __syncthreads for
// warp 1's low half: nobody can go on.
__global__ void deadlock(int* out) {
  if (threadIdx.x >= 32 && threadIdx.x < 48) __syncwarp(kFull);
  else __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void mixed_warp_ops(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x < 16) __syncwarp(kFull);
  else v = __shfl_xor_sync(kFull, v, 1);
  out[threadIdx.x] = v;
}

__global__ void trap_kernel(int*) { __trap(); }

__global__ void read_past_end(const float* x, int n, float* out) {
  const int i = static_cast<int>(threadIdx.x);
  out[i] = x[i + 1];  // the last thread reads x[n]: one element past the end
  (void)n;
}

// ---- host side ----------------------------------------------------------------------------------

cudaLaunchConfig_t cluster_config(dim3 grid, dim3 block, unsigned k, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t c = {};
  c.gridDim = grid;
  c.blockDim = block;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = k;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  c.attrs = attr;
  c.numAttrs = 1;
  return c;
}

std::vector<int64_t> widen(const std::vector<int>& v) { return std::vector<int64_t>(v.begin(), v.end()); }

template <auto Kernel>
std::vector<int64_t> run_32x(unsigned threads) {
  std::vector<int> out(threads, -7);
  simt::launch<Kernel>(1, threads, nullptr, out.data());
  return widen(out);
}

}  // namespace

std::vector<int64_t> selftest(const std::string& name) {
  if (name == "shuffle") {  // mode, width, b, then 32 source lanes, for every combination
    std::vector<int64_t> all;
    for (int mode = 0; mode < 4; ++mode)
      for (int width = 1; width <= 32; width *= 2)
        for (int b : {0, 1, 3, 5, 17, 31, 40}) {
          std::vector<int> out(32);
          simt::launch<shuffle_all>(1, 32, nullptr, mode, b, width, out.data());
          all.insert(all.end(), {mode, width, b});
          all.insert(all.end(), out.begin(), out.end());
        }
    return all;
  }
  if (name == "shuffle_partial") {
    std::vector<int> out(32);
    simt::launch<shuffle_partial>(1, 32, nullptr, 0x00ff00ffu, out.data());
    return widen(out);
  }
  if (name == "votes") {
    std::vector<unsigned> out(4, 0);
    simt::launch<votes>(1, 32, nullptr, out.data());
    return std::vector<int64_t>(out.begin(), out.end());
  }
  if (name == "atomics") {
    int count = 0, top = -1;
    float sum = 0.f;
    simt::launch<atomics>(5, 96, nullptr, &count, &top, &sum);
    return {count, top, static_cast<int64_t>(sum * 2)};
  }
  if (name == "cluster_neighbours") {
    std::vector<int> out(8 * 32, -7);
    cudaLaunchAttribute attr;
    const cudaError_t e = simt::launch_ex<cluster_neighbours>(cluster_config(8, 32, 4, &attr), out.data());
    if (e != cudaSuccess) return {-static_cast<int64_t>(e)};
    return widen(out);
  }
  if (name == "reverse_block") {
    std::vector<int> out(96, -7);
    cudaLaunchConfig_t c = {};
    c.gridDim = dim3(1);
    c.blockDim = dim3(96);
    c.dynamicSmemBytes = 96 * sizeof(int);
    const cudaError_t e = simt::launch_ex<reverse_block>(c, out.data());
    if (e != cudaSuccess) return {-static_cast<int64_t>(e)};
    return widen(out);
  }
  if (name == "tile_max") {
    std::vector<int> in(64), out(8, -7);
    for (int i = 0; i < 64; ++i) in[i] = (i * 37) % 64;
    simt::launch<tile_max>(1, 64, nullptr, in.data(), out.data());
    return widen(out);
  }
  if (name == "launch_errors") {  // error codes of bad launches, as cudaGetLastError reports them
    std::vector<int64_t> codes;
    int dummy[2048];
    simt::launch<trap_kernel>(1, 2048, nullptr, dummy);  // too many threads: never runs
    codes.push_back(cudaGetLastError());
    cudaLaunchAttribute attr;
    codes.push_back(simt::launch_ex<cluster_neighbours>(cluster_config(16, 32, 16, &attr), dummy));  // 16 needs opting in
    codes.push_back(simt::launch_ex<cluster_neighbours>(cluster_config(6, 32, 4, &attr), dummy));    // 6 % 4 != 0
    codes.push_back(cudaGetLastError());
    codes.push_back(cudaGetLastError());  // reading it cleared it
    return codes;
  }
  if (name == "lockstep_reliance") return run_32x<lockstep_reliance>(32);
  if (name == "divergent_shuffle") return run_32x<divergent_shuffle>(32);
  if (name == "lane_outside_mask") return run_32x<lane_outside_mask>(32);
  if (name == "divergent_barrier") return run_32x<divergent_barrier>(64);
  if (name == "deadlock") return run_32x<deadlock>(64);
  if (name == "mixed_warp_ops") return run_32x<mixed_warp_ops>(32);
  if (name == "trap") return run_32x<trap_kernel>(32);
  if (name == "read_past_end") {
    std::vector<float> x(64, 1.f), out(64);
    simt::launch<read_past_end>(1, 64, nullptr, x.data(), 64, out.data());
    return {static_cast<int64_t>(out[0])};
  }
  throw std::invalid_argument("unknown self-test '" + name + "'");
}

}  // namespace emulated
