// CUDA availability and build information. No kernel here; the device and stream a call
// runs on come with each op's Launch (see common.cuh: DeviceGuard, stream_of).

#include <cuda_runtime.h>

#include <string>

#include "core/ops.h"

#define FUSEDCE_STR2(...) #__VA_ARGS__
#define FUSEDCE_STR(...) FUSEDCE_STR2(__VA_ARGS__)

namespace fusedce {
namespace cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: not an error for the caller
    return 0;
  }
  return n;
}

bool available() { return device_count() > 0; }

const char* build_info() {
  static const std::string info = [] {
    std::string s = "CUDA " + std::to_string(CUDART_VERSION / 1000) + "." +
                    std::to_string((CUDART_VERSION % 1000) / 10);
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
      s += "; driver " + std::to_string(driver / 1000) + "." + std::to_string((driver % 1000) / 10);
    else
      (void)cudaGetLastError();
    return s;
  }();
  return info.c_str();
}

}  // namespace cuda
}  // namespace fusedce
