// Shared pieces of the CUDA kernels: dtype loads and stores, 16-byte packs, the "team" of
// threads that owns one row (a few lanes of a warp, a block, or a cluster of blocks on
// sm_90), its reductions, and the host-side launch helpers (device guard, error check,
// grid sizing).
//
// Conventions used by every kernel file:
//   T   the storage type of the logits (float, double, __half, __nv_bfloat16)
//   S   the compute type, compute_t<T>: double for double, float otherwise
//   N   rows (int64), C cols (int, checked < 2^31 on the host), row offsets always int64:
//       row * row_stride is computed in 64 bits, so N x C beyond 2^31 elements is fine.
//   Rows are visited with grid-stride loops, so N is never limited by grid dimensions.
#pragma once

#include "simt/simt.cuh"  // CUDA itself under nvcc; the CPU execution model for fusedce.emulated

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "core/types.h"

namespace fusedce {
namespace cuda {
namespace detail {

// ---------------------------------------------------------------------------------------------
// dtypes
// ---------------------------------------------------------------------------------------------

template <typename T>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};
template <typename T>
using compute_t = typename ComputeOf<T>::type;

__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }
__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_compute(compute_t<T> x);
template <>
__device__ __forceinline__ float from_compute<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_compute<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_compute<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename S>
__device__ __forceinline__ S neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}
template <typename S>
__device__ __forceinline__ S quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fffffff); }
template <>
__device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7fffffffffffffffLL);
}

// exp(x - m), with m2 = m * log2(e) precomputed: one FMA and one ex2 in float (max error a
// few ulp, far below the tolerances of a float32 loss); the accurate exp in double.
__device__ __forceinline__ float exp_shifted(float x, float m, float m2) {
  (void)m;
  return exp2f(fmaf(x, 1.4426950408889634f, -m2));
}
__device__ __forceinline__ double exp_shifted(double x, double m, double) { return exp(x - m); }
__device__ __forceinline__ float scaled_max(float m) { return m * 1.4426950408889634f; }
__device__ __forceinline__ double scaled_max(double m) { return m; }

__device__ __forceinline__ float log_c(float x) { return logf(x); }
__device__ __forceinline__ double log_c(double x) { return log(x); }
__device__ __forceinline__ float max_c(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_c(double a, double b) { return fmax(a, b); }

// A class index from an int32 or int64 target array (64-bit offset).
__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

// Load/store of one element of a runtime dtype (used by the small elementwise kernels where a
// second array may come in the input or the compute dtype).
template <typename S>
__device__ __forceinline__ S load_dyn(std::uintptr_t base, DType dt, int64_t i) {
  switch (dt) {
    case DType::Float64: return static_cast<S>(reinterpret_cast<const double*>(base)[i]);
    case DType::Float16: return static_cast<S>(__half2float(reinterpret_cast<const __half*>(base)[i]));
    case DType::BFloat16:
      return static_cast<S>(__bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]));
    default: return static_cast<S>(reinterpret_cast<const float*>(base)[i]);
  }
}
template <typename S>
__device__ __forceinline__ void store_dyn(std::uintptr_t base, DType dt, int64_t i, S v) {
  switch (dt) {
    case DType::Float64: reinterpret_cast<double*>(base)[i] = static_cast<double>(v); break;
    case DType::Float16: reinterpret_cast<__half*>(base)[i] = __float2half_rn(static_cast<float>(v)); break;
    case DType::BFloat16:
      reinterpret_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(static_cast<float>(v));
      break;
    default: reinterpret_cast<float*>(base)[i] = static_cast<float>(v); break;
  }
}

// ---------------------------------------------------------------------------------------------
// 16-byte packs: VEC consecutive elements of one row, loaded and stored with one 128-bit access
// when `vec` says the row pointers allow it, element by element otherwise.
// ---------------------------------------------------------------------------------------------

template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / static_cast<int>(sizeof(T));
  T v[N];
};

// Loads the elements [0, valid) of p; the others are filled with `pad`.
// streaming: the data is read once (ld.global.cs, evict-first); otherwise a plain load.
template <typename T>
__device__ __forceinline__ void load_pack(Pack<T>& out, const T* p, int valid, bool vec, T pad,
                                          bool streaming) {
  constexpr int N = Pack<T>::N;
  if (vec && valid >= N) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
    uint4 u = streaming ? __ldcs(q) : *q;
    std::memcpy(&out, &u, sizeof(u));
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out.v[k] = k < valid ? p[k] : pad;
  }
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& in, int valid, bool vec,
                                           bool streaming) {
  constexpr int N = Pack<T>::N;
  if (vec && valid >= N) {
    uint4 u;
    std::memcpy(&u, &in, sizeof(u));
    if (streaming)
      __stcs(reinterpret_cast<uint4*>(p), u);
    else
      *reinterpret_cast<uint4*>(p) = u;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k)
      if (k < valid) p[k] = in.v[k];
  }
}

__device__ __forceinline__ int clamp_valid(int64_t remaining, int n) {
  return remaining <= 0 ? 0 : (remaining >= n ? n : static_cast<int>(remaining));
}

// ---------------------------------------------------------------------------------------------
// Reduction payloads and their warp shuffles
// ---------------------------------------------------------------------------------------------

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor_sync(kFullMask, v, o); }
__device__ __forceinline__ double shfl_xor(double v, int o) { return __shfl_xor_sync(kFullMask, v, o); }
__device__ __forceinline__ int shfl_xor(int v, int o) { return __shfl_xor_sync(kFullMask, v, o); }

// Largest value and the first index holding it; NaN counts as the largest (numpy's argmax).
template <typename S>
struct ArgMax {
  S v;
  int i;
};
template <typename S>
__device__ __forceinline__ ArgMax<S> shfl_xor(ArgMax<S> a, int o) {
  return {shfl_xor(a.v, o), shfl_xor(a.i, o)};
}
struct ArgMaxOp {
  template <typename S>
  __device__ __forceinline__ ArgMax<S> operator()(ArgMax<S> a, ArgMax<S> b) const {
    const bool an = isnan(a.v), bn = isnan(b.v);
    if (an != bn) return an ? a : b;
    if (!an && a.v != b.v) return a.v > b.v ? a : b;
    return a.i <= b.i ? a : b;
  }
};
// The value in position i of a row, folded into a running ArgMax (i increasing).
template <typename S>
__device__ __forceinline__ void argmax_update(ArgMax<S>& a, S x, int i) {
  const bool xn = isnan(x);
  if (xn ? !isnan(a.v) : (x > a.v || (x == a.v && i < a.i))) {
    a.v = x;
    a.i = i;
  }
}

struct MaxOp {
  template <typename S>
  __device__ __forceinline__ S operator()(S a, S b) const { return max_c(a, b); }
};

// Four sums reduced together (one barrier instead of four).
template <typename S>
struct Sum4 {
  S s, a, b, t;
};
template <typename S>
__device__ __forceinline__ Sum4<S> shfl_xor(Sum4<S> x, int o) {
  return {shfl_xor(x.s, o), shfl_xor(x.a, o), shfl_xor(x.b, o), shfl_xor(x.t, o)};
}
struct Sum4Op {
  template <typename S>
  __device__ __forceinline__ Sum4<S> operator()(Sum4<S> x, Sum4<S> y) const {
    return {x.s + y.s, x.a + y.a, x.b + y.b, x.t + y.t};
  }
};
struct SumOp {
  template <typename S>
  __device__ __forceinline__ S operator()(S a, S b) const { return a + b; }
};

// Butterfly over `width` lanes (a power of two <= 32): every lane ends with the same value,
// because each step combines the same two operands on both partner lanes (+ and the ops above
// are commutative). All 32 lanes of the warp must call it together.
template <int width, typename V, typename Op>
__device__ __forceinline__ V warp_allreduce(V v, Op op) {
#pragma unroll
  for (int o = width / 2; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  return v;
}

// ---------------------------------------------------------------------------------------------
// Teams: the threads that own one row. Every kernel walks rows as
//     for (base = team.begin(); base < N; base += team.step()) { row = base + team.sub_row(); ... }
// with `base` uniform over the whole warp (and block), so all lanes reach every reduction:
// lanes whose row is past the end run with dummy data and store nothing.
// ---------------------------------------------------------------------------------------------

// G lanes per row (G divides 32), 32/G rows per warp, blocks of BLOCK threads.
template <int G, int BLOCK>
struct SubWarpTeam {
  static_assert(G >= 1 && G <= 32 && (32 % G) == 0, "G must divide 32");
  static constexpr int kThreads = G;  // threads per row
  static constexpr int kBlock = BLOCK;
  static constexpr bool kClustered = false;
  struct Storage {
    int unused;
  };
  __device__ explicit SubWarpTeam(Storage&) {}
  __device__ static constexpr int threads() { return kThreads; }
  __device__ int rank() const { return static_cast<int>(threadIdx.x) & (G - 1); }
  __device__ int64_t begin() const {
    const int64_t warp = (static_cast<int64_t>(blockIdx.x) * BLOCK + threadIdx.x) / 32;
    return warp * (32 / G);
  }
  __device__ int64_t step() const { return static_cast<int64_t>(gridDim.x) * (BLOCK / 32) * (32 / G); }
  __device__ int sub_row() const { return static_cast<int>(threadIdx.x & 31) / G; }
  template <typename V, typename Op>
  __device__ V reduce(V v, Op op) {
    return warp_allreduce<G>(v, op);
  }
  __device__ void finish() {}
};

// A whole block per row. Reductions: butterfly in each warp, then every thread combines the
// warp results from shared memory in warp order (same result everywhere, one barrier). Two
// slots alternate, so the barrier of reduction k+1 also protects the slot of reduction k.
struct BlockStorage {
  alignas(16) unsigned char slot[2][32][32];  // [ring][warp][payload <= 32 bytes]
};

template <int BLOCK>
struct BlockTeam {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "bad block size");
  static constexpr int kThreads = BLOCK;
  static constexpr int kBlock = BLOCK;
  static constexpr bool kClustered = false;
  static constexpr int kWarps = BLOCK / 32;
  using Storage = BlockStorage;
  Storage& st;
  int ring = 0;
  __device__ explicit BlockTeam(Storage& s) : st(s) {}
  __device__ static constexpr int threads() { return kThreads; }
  __device__ int rank() const { return static_cast<int>(threadIdx.x); }
  __device__ int64_t begin() const { return blockIdx.x; }
  __device__ int64_t step() const { return gridDim.x; }
  __device__ int sub_row() const { return 0; }
  template <typename V, typename Op>
  __device__ V reduce(V v, Op op) {
    static_assert(sizeof(V) <= 32, "payload too large");
    v = warp_allreduce<32>(v, op);
    V* slot = reinterpret_cast<V*>(&st.slot[ring][0][0]);
    const int warp = static_cast<int>(threadIdx.x) / 32;
    if ((threadIdx.x & 31) == 0) *reinterpret_cast<V*>(&st.slot[ring][warp][0]) = v;
    __syncthreads();
    V r = *slot;
#pragma unroll
    for (int w = 1; w < kWarps; ++w) r = op(r, *reinterpret_cast<const V*>(&st.slot[ring][w][0]));
    ring ^= 1;
    return r;
  }
  __device__ void finish() {}
};

// sm_90: a cluster of K blocks per row (thread-block cluster, distributed shared memory), so a
// row of up to K * BLOCK * NV * VEC elements stays in registers. K (2..16) is the launch's
// cluster size, read at run time: one kernel per block size serves every K (the launcher picks
// K by row length; compiling one kernel per K would only lengthen the build). Each reduction:
// block reduce, thread 0 publishes the block's value in its shared memory, cluster barrier,
// then every thread combines the K published values in rank order (identical result in every
// block). Two slots alternate, as for blocks. finish() keeps every block's shared memory alive
// until the others are done reading it. Compiled for older GPUs too, where it is never launched.
template <int BLOCK>
struct ClusterTeam {
  static constexpr int kBlock = BLOCK;
  static constexpr bool kClustered = true;
  struct Storage {
    BlockStorage block;
    alignas(16) unsigned char slot[2][32];
  };
  Storage& st;
  BlockTeam<BLOCK> inner;
  int k;  // blocks in the cluster
  int ring = 0;
  __device__ explicit ClusterTeam(Storage& s) : st(s), inner(s.block), k(blocks_in_cluster()) {}
  __device__ static int blocks_in_cluster() {
#if SIMT_HAS_CLUSTERS
    return static_cast<int>(cooperative_groups::this_cluster().num_blocks());
#else
    return 1;
#endif
  }
  __device__ int block_rank() const {
#if SIMT_HAS_CLUSTERS
    return static_cast<int>(cooperative_groups::this_cluster().block_rank());
#else
    return 0;
#endif
  }
  __device__ int threads() const { return BLOCK * k; }
  __device__ int rank() const { return block_rank() * BLOCK + static_cast<int>(threadIdx.x); }
  __device__ int64_t begin() const { return blockIdx.x / k; }
  __device__ int64_t step() const { return gridDim.x / k; }
  __device__ int sub_row() const { return 0; }
  template <typename V, typename Op>
  __device__ V reduce(V v, Op op) {
    static_assert(sizeof(V) <= 32, "payload too large");
    V r = inner.reduce(v, op);
#if SIMT_HAS_CLUSTERS
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    V* mine = reinterpret_cast<V*>(&st.slot[ring][0]);
    if (threadIdx.x == 0) *mine = r;
    cluster.sync();
    r = *cluster.map_shared_rank(mine, 0);
    for (int q = 1; q < k; ++q) r = op(r, *cluster.map_shared_rank(mine, q));
#else
    __trap();
#endif
    ring ^= 1;
    return r;
  }
  __device__ void finish() {
#if SIMT_HAS_CLUSTERS
    cooperative_groups::this_cluster().sync();
#endif
  }
};

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    throw std::runtime_error(std::string("fusedce CUDA error in ") + what + ": " +
                             cudaGetErrorString(e));
  }
}

// Makes `device` current for the lifetime of the guard and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (device >= 0 && device != prev_) {
      check(cudaSetDevice(device), "cudaSetDevice");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

struct DeviceProps {
  int sm_count = 1;
  int major = 0;
};
// Cached per device (a few attribute queries, once).
inline DeviceProps device_props(int device) {
  constexpr int kMax = 64;
  if (device < 0) check(cudaGetDevice(&device), "cudaGetDevice");
  static DeviceProps cache[kMax];
  static bool known[kMax] = {};
  if (device >= 0 && device < kMax && known[device]) return cache[device];
  DeviceProps p;
  check(cudaDeviceGetAttribute(&p.sm_count, cudaDevAttrMultiProcessorCount, device), "attribute");
  check(cudaDeviceGetAttribute(&p.major, cudaDevAttrComputeCapabilityMajor, device), "attribute");
  if (device >= 0 && device < kMax) {
    cache[device] = p;
    known[device] = true;
  }
  return p;
}

// FUSEDCE_CUDA_SIMPLE=1 makes the row ops use the simple streaming kernels everywhere (for
// validating the fast ones against them); read once.
inline bool simple_kernels_forced() {
  static const bool forced = [] {
    const char* e = std::getenv("FUSEDCE_CUDA_SIMPLE");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  return forced;
}

// FUSEDCE_CUDA_TRACE=1 prints the kernel launches of the row ops to stderr (which kernel, its
// team, grid and occupancy; a line repeated launch after launch is printed once): to see on a
// GPU which path a shape takes. Read once.
inline bool launch_trace_on() {
  static const bool on = [] {
    const char* e = std::getenv("FUSEDCE_CUDA_TRACE");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  return on;
}

template <typename... Args>
inline void trace_launch(const char* format, Args... args) {
  if (!launch_trace_on()) return;
  static char last[256];
  char line[256];
  std::snprintf(line, sizeof(line), format, args...);
  if (std::strcmp(line, last) == 0) return;
  std::memcpy(last, line, sizeof(line));
  std::fprintf(stderr, "fusedce: %s\n", line);
}

inline cudaStream_t stream_of(const Launch& l) { return reinterpret_cast<cudaStream_t>(l.stream); }

inline bool aligned16(std::uintptr_t p) { return (p & 15u) == 0; }
// 128-bit accesses are allowed on every row of `r` when its base and row pitch are 16-aligned.
template <typename T>
inline bool rows_vectorizable(std::uintptr_t data, int64_t rows, int64_t row_stride) {
  if (data == 0) return true;
  if (!aligned16(data)) return false;
  return rows <= 1 || ((row_stride * static_cast<int64_t>(sizeof(T))) % 16) == 0;
}

inline int checked_cols(int64_t cols, const char* op) {
  if (cols < 1 || cols > (int64_t{1} << 30))
    throw std::invalid_argument(std::string("fusedce CUDA ") + op +
                                ": the class axis must have between 1 and 2^30 entries");
  return static_cast<int>(cols);
}

// Blocks for a grid-stride launch: enough to fill the GPU `occupancy` times, never more than
// there is work for, at least 1.
inline unsigned grid_for(int64_t work_items_per_block_units, int sm_count, int per_sm) {
  int64_t cap = static_cast<int64_t>(sm_count) * (per_sm > 0 ? per_sm : 1);
  int64_t g = work_items_per_block_units < cap ? work_items_per_block_units : cap;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

template <typename Kernel>
inline int blocks_per_sm(Kernel k, int block, size_t smem = 0) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, block, smem) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 1;
  }
  return n > 0 ? n : 1;
}

inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// Grid for a kernel whose Team owns one row at a time (no clusters), grid-stride over rows.
template <typename Team>
inline unsigned team_grid(int64_t rows, int sm_count) {
  constexpr int rows_per_block = Team::kBlock / Team::kThreads;
  return grid_for((rows + rows_per_block - 1) / rows_per_block, sm_count, 2048 / Team::kBlock);
}

}  // namespace detail
}  // namespace cuda
}  // namespace fusedce
