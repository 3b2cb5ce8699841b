// CUDA's device-side language for the execution model: function qualifiers, the built-in
// variables, barriers, warp shuffles and votes, atomics, and the device-only intrinsics.
//
// Each wait records its caller's file and line (GCC's and Clang's __builtin_FILE/LINE as
// default arguments), so a deadlock or fault report points into the kernel source.
#pragma once

// Qualifiers mean nothing on the host; defined before the toolkit headers, which keep them.
#define __host__
#define __device__
#define __global__
#define __shared__ static_assert(false, "write SIMT_SHARED(T, name) for a __shared__ variable (simt/simt.cuh)");
#define __constant__
#define __managed__
#define __grid_constant__

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simt/scheduler.h"

#undef __forceinline__
#define __forceinline__ inline
#undef __noinline__
#define __noinline__
#undef __launch_bounds__
#define __launch_bounds__(...)

#define SIMT_CALLER (::simt::Site::here())
#define SIMT_EMULATED_CUDA 1
#define SIMT_HAS_CLUSTERS 1

// ---- built-in variables (threadIdx, blockIdx, blockDim, gridDim: scheduler.h) --------------------
constexpr int warpSize = ::simt::kWarpSize;

// ---- shared memory -----------------------------------------------------------------------------
// One variable per block (all blocks of a cluster are alive together), found by the address of
// a tag that is unique to the declaration (and to each template instance of the kernel).
#define SIMT_SHARED(T, name)                                  \
  static char simt_shared_tag_##name;                          \
  std::add_lvalue_reference_t<T> name = *static_cast<std::add_pointer_t<T>>( \
      ::simt::static_shared(&simt_shared_tag_##name, sizeof(T), alignof(T)))
#define SIMT_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::simt::dynamic_shared())

// ---- barriers and fences -----------------------------------------------------------------------
inline void __syncthreads(::simt::Site site = SIMT_CALLER) { ::simt::sync_block(site); }
inline void __syncwarp(unsigned mask = 0xffffffffu, ::simt::Site site = SIMT_CALLER) {
  ::simt::warp_exchange(mask, nullptr, nullptr, 0, nullptr, nullptr, "__syncwarp", site);
}
// Between two waits a fiber runs alone: every fence is already satisfied (and proves nothing).
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

[[noreturn]] inline void __trap(::simt::Site site = SIMT_CALLER) { ::simt::fault("__trap()", site); }

// ---- warp shuffles -------------------------------------------------------------------------------
namespace simt {

// PTX's shfl.sync source-lane rule, with the c operand CUDA's intrinsics pass for `width`:
// out-of-segment sources fall back to the calling lane.
enum class ShuffleMode : int { Index, Up, Down, Xor };
struct ShuffleRule {
  ShuffleMode mode;
  unsigned b;
  unsigned c;
};
inline int shuffle_source(int lane, const void* ctx) {
  const auto& r = *static_cast<const ShuffleRule*>(ctx);
  const int bval = static_cast<int>(r.b & 31u), cval = static_cast<int>(r.c & 31u);
  const int segmask = static_cast<int>((r.c >> 8) & 31u);
  const int max_lane = (lane & segmask) | (cval & ~segmask), min_lane = lane & segmask;
  int j = lane;
  bool ok = false;
  switch (r.mode) {
    case ShuffleMode::Up: j = lane - bval; ok = j >= max_lane; break;
    case ShuffleMode::Down: j = lane + bval; ok = j <= max_lane; break;
    case ShuffleMode::Xor: j = lane ^ bval; ok = j <= max_lane; break;
    case ShuffleMode::Index: j = min_lane | (bval & ~segmask); ok = j <= max_lane; break;
  }
  return ok ? j : lane;
}

template <typename T>
T shuffle(unsigned mask, T v, ShuffleMode mode, unsigned b, int width, const char* what, Site site) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffled values are at most 16 bytes");
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0)
    fault(std::string(what) + ": width " + std::to_string(width) + " is not a power of two in [1, 32]", site);
  const unsigned seg = static_cast<unsigned>(kWarpSize - width) << 8;
  const ShuffleRule rule{mode, b, mode == ShuffleMode::Up ? seg : (seg | 0x1fu)};
  T out;
  warp_exchange(mask, &v, &out, sizeof(T), shuffle_source, &rule, what, site);
  return out;
}

}  // namespace simt

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize, ::simt::Site site = SIMT_CALLER) {
  return ::simt::shuffle(mask, v, ::simt::ShuffleMode::Index, static_cast<unsigned>(src_lane), width, "__shfl_sync",
                         site);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize, ::simt::Site site = SIMT_CALLER) {
  return ::simt::shuffle(mask, v, ::simt::ShuffleMode::Up, delta, width, "__shfl_up_sync", site);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize, ::simt::Site site = SIMT_CALLER) {
  return ::simt::shuffle(mask, v, ::simt::ShuffleMode::Down, delta, width, "__shfl_down_sync", site);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize, ::simt::Site site = SIMT_CALLER) {
  return ::simt::shuffle(mask, v, ::simt::ShuffleMode::Xor, static_cast<unsigned>(lane_mask), width,
                         "__shfl_xor_sync", site);
}

// ---- votes ---------------------------------------------------------------------------------------
namespace simt {
inline unsigned vote(unsigned mask, int predicate, const char* what, Site site) {
  const int mine = predicate != 0;
  int all[kWarpSize];
  warp_gather(mask, &mine, all, sizeof(int), what, site);
  unsigned bits = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if (all[l]) bits |= 1u << l;
  return bits & mask;
}
}  // namespace simt

inline unsigned __ballot_sync(unsigned mask, int predicate, ::simt::Site site = SIMT_CALLER) {
  return ::simt::vote(mask, predicate, "__ballot_sync", site);
}
inline int __any_sync(unsigned mask, int predicate, ::simt::Site site = SIMT_CALLER) {
  return ::simt::vote(mask, predicate, "__any_sync", site) != 0;
}
inline int __all_sync(unsigned mask, int predicate, ::simt::Site site = SIMT_CALLER) {
  return ::simt::vote(mask, predicate, "__all_sync", site) == mask;
}
// The lanes of the warp that have not exited (there is no divergence to report: a fiber runs
// its own path, so "active" can only mean "still running").
inline unsigned __activemask() { return ::simt::active_lanes(); }

// ---- atomics: a fiber is never preempted, so a plain read-modify-write is atomic -----------------
namespace simt {
template <typename T, typename F>
T read_modify_write(T* p, F new_value) {
  const T old = *p;
  *p = new_value(old);
  return old;
}
}  // namespace simt

template <typename T> T atomicAdd(T* p, T v) { return ::simt::read_modify_write(p, [v](T o) { return o + v; }); }
template <typename T> T atomicSub(T* p, T v) { return ::simt::read_modify_write(p, [v](T o) { return o - v; }); }
template <typename T> T atomicMax(T* p, T v) { return ::simt::read_modify_write(p, [v](T o) { return o < v ? v : o; }); }
template <typename T> T atomicMin(T* p, T v) { return ::simt::read_modify_write(p, [v](T o) { return v < o ? v : o; }); }
template <typename T> T atomicExch(T* p, T v) { return ::simt::read_modify_write(p, [v](T) { return v; }); }
template <typename T> T atomicAnd(T* p, T v) { return ::simt::read_modify_write(p, [v](T o) { return o & v; }); }
template <typename T> T atomicOr(T* p, T v) { return ::simt::read_modify_write(p, [v](T o) { return o | v; }); }
template <typename T> T atomicXor(T* p, T v) { return ::simt::read_modify_write(p, [v](T o) { return o ^ v; }); }
template <typename T>
T atomicCAS(T* p, T compare, T v) {
  return ::simt::read_modify_write(p, [=](T o) { return o == compare ? v : o; });
}
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return ::simt::read_modify_write(p, [=](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return ::simt::read_modify_write(p, [=](unsigned o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}

// ---- bit casts, cache-hinted loads and stores (hints mean nothing here), bit intrinsics -----------
namespace simt {
template <typename To, typename From>
inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast of different sizes");
  To r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}
}  // namespace simt
inline float __int_as_float(int v) { return ::simt::bit_cast<float>(v); }
inline int __float_as_int(float v) { return ::simt::bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return ::simt::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return ::simt::bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return ::simt::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return ::simt::bit_cast<long long>(v); }

template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline T __ldcv(const T* p) { return *p; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }
template <typename T> inline void __stwt(T* p, T v) { *p = v; }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}

// CUDA's math library puts these in the global namespace, for float and double alike.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// Fast-math intrinsics: the accurate host functions (a GPU's differ by a few ulp).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
