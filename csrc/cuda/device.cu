// CUDA availability and build information. No kernel here; the device and stream a call
// runs on come with each op's Launch (see common.cuh: DeviceGuard, stream_of).

#include <string>

#include "core/ops.h"
#include "simt/simt.cuh"

#define FUSEDCE_STR2(...) #__VA_ARGS__
#define FUSEDCE_STR(...) FUSEDCE_STR2(__VA_ARGS__)

namespace fusedce {
namespace cuda {

namespace {
std::string version_text(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }
}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: not an error for the caller
    return 0;
  }
  return n;
}

bool available() { return device_count() > 0; }

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  (void)cudaGetLastError();
  if (e == cudaSuccess && n > 0) return "";
  if (e == cudaSuccess || e == cudaErrorNoDevice)
    return "no CUDA GPU is visible to this process (check nvidia-smi and CUDA_VISIBLE_DEVICES)";
  if (e == cudaErrorInsufficientDriver) {
    int driver = 0;
    (void)cudaDriverGetVersion(&driver);
    if (driver == 0)  // the runtime reports a missing driver (no libcuda.so) this way too
      return "no NVIDIA driver is installed (libcuda.so was not found): the CUDA kernels need an NVIDIA GPU "
             "and its driver";
    return "the NVIDIA driver (CUDA " + version_text(driver) + ") is older than the CUDA runtime fusedce was built with (" +
           version_text(CUDART_VERSION) + "): update the driver, or build fusedce with an older CUDA toolkit";
  }
  return std::string("the CUDA runtime cannot use the GPU: ") + cudaGetErrorString(e);
}

const char* build_info() {
  static const std::string info = [] {
    std::string s = "CUDA " + version_text(CUDART_VERSION);
#if defined(SIMT_EMULATED)
    s += ", emulated on the CPU:";
    for (const auto& d : simt::devices()) s += " " + d.name + " (" + std::to_string(d.sm_count) + " SMs)";
#endif
#ifdef __CUDA_ARCH_LIST__
    // e.g. "800,900,900": real code for each, PTX for the newest
    const std::string list = FUSEDCE_STR(__CUDA_ARCH_LIST__);
    std::string archs, last;
    size_t i = 0;
    while (i <= list.size()) {
      size_t j = list.find(',', i);
      if (j == std::string::npos) j = list.size();
      std::string a = list.substr(i, j - i);
      if (!a.empty() && a != last) {
        archs += " sm_" + a.substr(0, a.size() - 1);
        last = a;
      }
      i = j + 1;
    }
    s += "," + archs;
#endif
    int driver = 0;
    if (cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0)
      s += "; driver " + version_text(driver);
    else
      (void)cudaGetLastError();
    return s;
  }();
  return info.c_str();
}

}  // namespace cuda
}  // namespace fusedce
