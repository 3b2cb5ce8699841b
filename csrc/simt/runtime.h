// Stand-ins for the CUDA runtime calls that host code makes, describing emulated GPUs.
//
// The declarations, types and error codes are the toolkit's own (cuda_runtime_api.h and
// driver_types.h are plain C); the model defines the functions, so host code compiles and
// links unchanged, without libcudart.
//
// The GPUs: FUSEDCE_EMULATED_GPUS="sm_90:132,sm_80:108,sm_90:1" by default: device 0 an
// H100-like sm_90 with 132 SMs in 8 GPCs, device 1 an A100-like sm_80 with 108 SMs (the
// pre-Hopper paths), device 2 an sm_90 with a single SM (small grids: every team of a grid-stride
// loop handles many rows, and large clusters do not fit). Launches run at
// once on the calling thread, whatever the stream; a kernel fault throws simt::KernelFault
// (a GPU reports it later, as a sticky error). Launch-configuration errors come back as the
// runtime's error codes, as on a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "simt/scheduler.h"

namespace simt {

struct DeviceSpec {
  std::string name;  // "sm_90"
  int major = 9, minor = 0;
  int sm_count = 132;
  int gpcs = 8;  // clusters are placed within one GPC
  int max_threads_per_sm = 2048;
  int max_blocks_per_sm = 32;
  std::size_t smem_per_sm = 228 * 1024;
  std::size_t smem_per_block = 48 * 1024;        // without opting in
  std::size_t smem_per_block_optin = 227 * 1024;
  bool clusters() const { return major >= 9; }
};
const std::vector<DeviceSpec>& devices();

// What every successful launch leaves in the log (for tests that check which kernels ran).
struct LaunchRecord {
  std::string kernel;
  dim3 grid, block, cluster;
  std::size_t dynamic_smem;
  int device;
};
std::vector<LaunchRecord> launch_log();
void clear_launch_log();

// Pretend the installed driver fails the way `e` says (cudaErrorInsufficientDriver,
// cudaErrorNoDevice, ...) in every runtime call, and reports `driver_version` (0: no driver
// at all, which the runtime also reports as an insufficient driver); cudaSuccess restores
// the emulated GPUs.
void set_driver_error(cudaError_t e, int driver_version);

// The name of a kernel, from the compiler's spelling of the template argument.
std::string tidy_kernel_name(const char* pretty_function);
template <auto Kernel>
const char* kernel_name() {
  static const std::string name = tidy_kernel_name(__PRETTY_FUNCTION__);
  return name.c_str();
}

// Checks a launch against the current device and the kernel's attributes; fills `shape`.
cudaError_t prepare_launch(const void* kernel, const cudaLaunchConfig_t& config, GridShape& shape);
void record_launch(const char* name, const GridShape& shape);
cudaError_t set_last_error(cudaError_t e);

template <typename... P, typename... A>
cudaError_t launch_kernel(const char* name, void (*kernel)(P...), const cudaLaunchConfig_t& config,
                          A&&... args) {
  GridShape shape;
  const cudaError_t e = prepare_launch(reinterpret_cast<const void*>(kernel), config, shape);
  if (e != cudaSuccess) return set_last_error(e);
  // the kernel's parameters, converted once as a call would; each thread then gets a copy
  struct Call {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  } call{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  run_grid(
      name, shape, [](void* p) { std::apply(static_cast<Call*>(p)->kernel, static_cast<Call*>(p)->params); }, &call);
  record_launch(name, shape);
  return cudaSuccess;
}

// kernel<<<grid, block, 0, stream>>>(args...): errors only through cudaGetLastError, as on a GPU
template <auto Kernel, typename... Args>
inline void launch(dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.stream = stream;
  (void)launch_kernel(kernel_name<Kernel>(), Kernel, config, std::forward<Args>(args)...);
}

template <auto Kernel, typename... Args>
inline cudaError_t launch_ex(const cudaLaunchConfig_t& config, Args&&... args) {
  return launch_kernel(kernel_name<Kernel>(), Kernel, config, std::forward<Args>(args)...);
}

// Per-kernel attributes set with cudaFuncSetAttribute.
cudaError_t set_function_attribute(const void* kernel, cudaFuncAttribute attr, int value);
cudaError_t occupancy_blocks(int* blocks, const void* kernel, int block_threads, std::size_t dynamic_smem);
cudaError_t occupancy_clusters(int* clusters, const void* kernel, const cudaLaunchConfig_t& config);

}  // namespace simt

// ---- the runtime API, as host code calls it --------------------------------------------------------
// The C functions are declared by the toolkit's cuda_runtime_api.h (runtime.cpp defines those the
// model provides: device count and attributes, current device, errors, versions, streams); the
// templates below are the C++ overloads that cuda_runtime.h would add.
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return simt::set_function_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}
template <typename... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*kernel)(P...), int block_threads,
                                                          std::size_t dynamic_smem) {
  return simt::occupancy_blocks(blocks, reinterpret_cast<const void*>(kernel), block_threads, dynamic_smem);
}
template <typename... P>
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, void (*kernel)(P...), const cudaLaunchConfig_t* config) {
  return simt::occupancy_clusters(clusters, reinterpret_cast<const void*>(kernel), *config);
}
// Without a template argument the model cannot name the kernel: prefer simt::launch_ex.
template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...), A&&... args) {
  return simt::launch_kernel("(unnamed kernel)", kernel, *config, std::forward<A>(args)...);
}
