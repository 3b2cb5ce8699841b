// The emulated GPUs and the runtime calls (see runtime.h).
#include "simt/runtime.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>

namespace simt {
namespace {

DeviceSpec spec_for(const std::string& item) {
  // "sm_XY[:SMS]"
  DeviceSpec d;
  const std::size_t colon = item.find(':');
  const std::string arch = item.substr(0, colon);
  if (arch.size() < 5 || arch.compare(0, 3, "sm_") != 0)
    throw std::invalid_argument("FUSEDCE_EMULATED_GPUS: expected items like sm_90:132, got '" + item + "'");
  const int cc = std::atoi(arch.c_str() + 3);
  d.name = arch;
  d.major = cc / 10;
  d.minor = cc % 10;
  if (d.major >= 9) {
    d.sm_count = 132, d.gpcs = 8, d.smem_per_sm = 228 * 1024, d.smem_per_block_optin = 227 * 1024;
  } else {
    d.sm_count = 108, d.gpcs = 7, d.smem_per_sm = 164 * 1024, d.smem_per_block_optin = 163 * 1024;
  }
  if (colon != std::string::npos) d.sm_count = std::max(1, std::atoi(item.c_str() + colon + 1));
  d.gpcs = std::min(d.gpcs, d.sm_count);
  return d;
}

std::vector<DeviceSpec> parse_devices() {
  const char* e = std::getenv("FUSEDCE_EMULATED_GPUS");
  const std::string list = (e != nullptr && *e != '\0') ? e : "sm_90:132,sm_80:108,sm_90:1";
  std::vector<DeviceSpec> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(spec_for(item));
  if (out.empty()) throw std::invalid_argument("FUSEDCE_EMULATED_GPUS names no GPU");
  return out;
}

struct FunctionAttributes {
  int max_dynamic_smem = -1;  // -1: the device's default per-block limit
  bool non_portable_cluster = false;
};

std::mutex state_mutex;  // the log and the attribute table may be touched from several threads
std::map<const void*, FunctionAttributes> attributes;
std::vector<LaunchRecord> log;
cudaError_t driver_error = cudaSuccess;
int driver_version = CUDART_VERSION;

thread_local int current = 0;
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t device_ok(int device) {
  if (driver_error != cudaSuccess) return driver_error;
  if (device < 0 || device >= static_cast<int>(devices().size())) return cudaErrorInvalidDevice;
  return cudaSuccess;
}

int blocks_per_sm(const DeviceSpec& d, int threads, std::size_t smem) {
  if (threads < 1 || threads > 1024) return 0;
  const int warps = (threads + kWarpSize - 1) / kWarpSize;
  int n = std::min(d.max_threads_per_sm / (warps * kWarpSize), d.max_blocks_per_sm);
  if (smem > 0) n = std::min<int>(n, static_cast<int>(d.smem_per_sm / smem));
  return n;
}

unsigned cluster_size_of(const cudaLaunchConfig_t& config, dim3& cluster) {
  cluster = dim3(1, 1, 1);
  for (unsigned i = 0; i < config.numAttrs; ++i)
    if (config.attrs[i].id == cudaLaunchAttributeClusterDimension)
      cluster = dim3(config.attrs[i].val.clusterDim.x, config.attrs[i].val.clusterDim.y,
                     config.attrs[i].val.clusterDim.z);
  return cluster.x * cluster.y * cluster.z;
}

FunctionAttributes attributes_of(const void* kernel) {
  std::lock_guard<std::mutex> lock(state_mutex);
  auto it = attributes.find(kernel);
  return it == attributes.end() ? FunctionAttributes{} : it->second;
}

// Clusters of k blocks that fit at once in one GPC, times the GPCs.
int clusters_that_fit(const DeviceSpec& d, int per_sm, unsigned k) {
  const int sms_per_gpc = d.sm_count / d.gpcs;
  return d.gpcs * (sms_per_gpc * per_sm / static_cast<int>(k));
}

}  // namespace

const std::vector<DeviceSpec>& devices() {
  static const std::vector<DeviceSpec> list = parse_devices();
  return list;
}

std::vector<LaunchRecord> launch_log() {
  std::lock_guard<std::mutex> lock(state_mutex);
  return log;
}

void clear_launch_log() {
  std::lock_guard<std::mutex> lock(state_mutex);
  log.clear();
}

void set_driver_error(cudaError_t e, int version) {
  driver_error = e;
  driver_version = e == cudaSuccess ? CUDART_VERSION : version;
}

cudaError_t set_last_error(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

std::string tidy_kernel_name(const char* pretty) {
  // GCC: "... [with auto Kernel = ns::{anonymous}::rows_resident<float, ns::Team<4, 256>, 1>]"
  std::string s = pretty;
  const std::size_t at = s.find("Kernel = ");
  if (at != std::string::npos) s = s.substr(at + 9);
  const std::size_t end = s.find_first_of(";]");
  if (end != std::string::npos) s = s.substr(0, end);
  if (!s.empty() && s[0] == '&') s = s.substr(1);
  // drop namespace qualifiers: "a::b::name" -> "name"
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ':' && i + 1 < s.size() && s[i + 1] == ':') {
      while (!out.empty() && (std::isalnum(static_cast<unsigned char>(out.back())) || out.back() == '_' ||
                              out.back() == '{' || out.back() == '}'))
        out.pop_back();
      ++i;
      continue;
    }
    out += s[i];
  }
  // "Team<32, 256> >" -> "Team<32, 256>>"
  for (std::size_t at = out.find("> >"); at != std::string::npos; at = out.find("> >", at)) out.erase(at + 1, 1);
  return out;
}

cudaError_t prepare_launch(const void* kernel, const cudaLaunchConfig_t& config, GridShape& shape) {
  if (const cudaError_t e = device_ok(current)) return e;
  const DeviceSpec& d = devices()[static_cast<std::size_t>(current)];
  const dim3 g = config.gridDim, b = config.blockDim;
  const unsigned long threads = static_cast<unsigned long>(b.x) * b.y * b.z;
  if (threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64) return cudaErrorInvalidConfiguration;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    return cudaErrorInvalidConfiguration;
  const FunctionAttributes attr = attributes_of(kernel);
  const std::size_t smem_limit =
      attr.max_dynamic_smem >= 0 ? static_cast<std::size_t>(attr.max_dynamic_smem) : d.smem_per_block;
  if (config.dynamicSmemBytes > smem_limit) return cudaErrorInvalidValue;
  dim3 cluster;
  const unsigned k = cluster_size_of(config, cluster);
  if (k == 0) return cudaErrorInvalidClusterSize;
  if (k > 1) {
    if (!d.clusters()) return cudaErrorInvalidClusterSize;
    if (k > 16 || (k > 8 && !attr.non_portable_cluster)) return cudaErrorInvalidClusterSize;
    if (g.x % cluster.x || g.y % cluster.y || g.z % cluster.z) return cudaErrorInvalidClusterSize;
    const int per_sm = blocks_per_sm(d, static_cast<int>(threads), config.dynamicSmemBytes);
    if (clusters_that_fit(d, per_sm, k) < 1) return cudaErrorLaunchOutOfResources;
  }
  shape.grid = g;
  shape.block = b;
  shape.cluster = cluster;
  shape.dynamic_smem = config.dynamicSmemBytes;
  return cudaSuccess;
}

void record_launch(const char* name, const GridShape& shape) {
  std::lock_guard<std::mutex> lock(state_mutex);
  if (log.size() < 1000000) log.push_back(LaunchRecord{name, shape.grid, shape.block, shape.cluster, shape.dynamic_smem, current});
}

cudaError_t set_function_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (const cudaError_t e = device_ok(current)) return set_last_error(e);
  const DeviceSpec& d = devices()[static_cast<std::size_t>(current)];
  std::lock_guard<std::mutex> lock(state_mutex);
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      if (value < 0 || static_cast<std::size_t>(value) > d.smem_per_block_optin) return set_last_error(cudaErrorInvalidValue);
      attributes[kernel].max_dynamic_smem = value;
      return cudaSuccess;
    case cudaFuncAttributeNonPortableClusterSizeAllowed:
      if (!d.clusters()) return set_last_error(cudaErrorNotSupported);
      attributes[kernel].non_portable_cluster = value != 0;
      return cudaSuccess;
    default:
      return set_last_error(cudaErrorInvalidValue);
  }
}

cudaError_t occupancy_blocks(int* blocks, const void*, int block_threads, std::size_t dynamic_smem) {
  if (const cudaError_t e = device_ok(current)) return set_last_error(e);
  if (block_threads < 1 || block_threads > 1024) return set_last_error(cudaErrorInvalidValue);
  *blocks = blocks_per_sm(devices()[static_cast<std::size_t>(current)], block_threads, dynamic_smem);
  return cudaSuccess;
}

cudaError_t occupancy_clusters(int* clusters, const void* kernel, const cudaLaunchConfig_t& config) {
  if (const cudaError_t e = device_ok(current)) return set_last_error(e);
  const DeviceSpec& d = devices()[static_cast<std::size_t>(current)];
  dim3 cluster;
  const unsigned k = cluster_size_of(config, cluster);
  if (!d.clusters() || k == 0) return set_last_error(cudaErrorInvalidClusterSize);
  if (k > 16 || (k > 8 && !attributes_of(kernel).non_portable_cluster)) return set_last_error(cudaErrorInvalidClusterSize);
  const dim3 b = config.blockDim;
  const int per_sm = blocks_per_sm(d, static_cast<int>(b.x * b.y * b.z), config.dynamicSmemBytes);
  *clusters = clusters_that_fit(d, per_sm, k);
  return cudaSuccess;
}

}  // namespace simt

// ---- the runtime API ---------------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 0;
  if (simt::driver_error != cudaSuccess) return simt::set_last_error(simt::driver_error);
  *count = static_cast<int>(simt::devices().size());
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (simt::driver_error != cudaSuccess) return simt::set_last_error(simt::driver_error);
  *device = simt::current;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (const cudaError_t e = simt::device_ok(device)) return simt::set_last_error(e);
  simt::current = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (const cudaError_t e = simt::device_ok(device)) return simt::set_last_error(e);
  const simt::DeviceSpec& d = simt::devices()[static_cast<std::size_t>(device)];
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = d.sm_count; break;
    case cudaDevAttrComputeCapabilityMajor: *value = d.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = d.minor; break;
    case cudaDevAttrWarpSize: *value = simt::kWarpSize; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = d.max_threads_per_sm; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = d.max_blocks_per_sm; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(d.smem_per_block); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(d.smem_per_block_optin); break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = static_cast<int>(d.smem_per_sm); break;
    case cudaDevAttrClusterLaunch: *value = d.clusters() ? 1 : 0; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    default: return simt::set_last_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = simt::last_error;
  simt::last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return simt::last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorInvalidClusterSize: return "cudaErrorInvalidClusterSize";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorInvalidClusterSize: return "invalid cluster size";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
  }
}

cudaError_t cudaDriverGetVersion(int* version) {
  *version = simt::driver_version;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return simt::device_ok(simt::current); }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return simt::device_ok(simt::current); }

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  // streams only order work, and every launch here completes before it returns
  *stream = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<char*>(stream);
  return cudaSuccess;
}
