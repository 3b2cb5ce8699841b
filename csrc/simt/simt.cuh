// The one header a CUDA source of fusedce includes for CUDA itself.
//
// Compiled by nvcc, it is the real thing: cuda_runtime.h, cooperative groups, the half types,
// and two thin launch helpers. Compiled by a host C++ compiler with SIMT_EMULATED defined
// (the fusedce._emulated module), it is csrc/simt's execution model of CUDA instead: the same
// kernel source and the same host-side launch code then run on the CPU, one fiber per CUDA
// thread (docs/emulated.md).
//
// What a kernel source writes differently from plain CUDA, and only here:
//   SIMT_SHARED(T, name)         for   __shared__ T name;      (T without commas: use an alias)
//   SIMT_DYNAMIC_SHARED(T, name) for   extern __shared__ T name[];
//   simt::launch<kernel>(grid, block, stream, args...)      for   kernel<<<grid, block, 0, stream>>>(args...)
//   simt::launch_ex<kernel>(config, args...)                 for   cudaLaunchKernelEx(&config, kernel, args...)
//   SIMT_HAS_CLUSTERS            1 where thread-block clusters exist in device code (sm_90+,
//                                and the model), else 0
// The launch helpers take the kernel as a template argument so that the model can name it in
// its launch log (which kernel paths a test reached).
#pragma once

#if defined(SIMT_EMULATED)

#include "simt/model.h"

#else  // nvcc

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cooperative_groups.h>

#include <utility>

#define SIMT_SHARED(T, name) __shared__ T name
#define SIMT_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SIMT_HAS_CLUSTERS 1
#else
#define SIMT_HAS_CLUSTERS 0
#endif

namespace simt {

template <auto Kernel, typename... Args>
inline void launch(dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  Kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
}

template <auto Kernel, typename... Args>
inline cudaError_t launch_ex(const cudaLaunchConfig_t& config, Args&&... args) {
  return cudaLaunchKernelEx(&config, Kernel, std::forward<Args>(args)...);
}

}  // namespace simt

#endif
