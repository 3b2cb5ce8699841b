// fusedce._emulated: the CUDA kernels of csrc/cuda, compiled by the host C++ compiler against
// the execution model of csrc/simt, running on the CPU on host memory. The same op functions,
// taking the same structs, as fusedce._core; Launch.device picks an emulated GPU. Plus the
// model's controls (GPUs, launch log, thread-order shuffling) and its self-check kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/op_list.h"
#include "core/ops.h"
#include "emulated/selftest.h"
#include "simt/runtime.h"

namespace py = pybind11;
using namespace fusedce;

namespace {

template <class Device>
void run(const Launch& launch, Device&& device) {
  if (launch.device < 0) throw std::invalid_argument("fusedce._emulated runs on an emulated GPU: Launch.device >= 0");
  if (!cuda::available()) throw std::runtime_error("the emulated GPU is unavailable: " + cuda::unavailable_reason());
  py::gil_scoped_release no_gil;
  device();
}

#define FUSEDCE_BIND_OP(name, params, args) \
  m.def(#name, [] params { run(launch, [&] { cuda::name args; }); });

py::tuple xyz(dim3 d) { return py::make_tuple(d.x, d.y, d.z); }

}  // namespace

PYBIND11_MODULE(_emulated, m) {
  m.doc() = "fusedce's CUDA kernels run on the CPU by an execution model of CUDA (internal: use fusedce.emulated)";
  py::module_::import("fusedce._core");  // Rows, Target, LossOptions, RowStats, Launch live there
  py::register_exception<simt::KernelFault>(m, "KernelFault", PyExc_RuntimeError);

  FUSEDCE_FOR_EACH_OP(FUSEDCE_BIND_OP)

  m.def("cuda_available", &cuda::available);
  m.def("cuda_device_count", &cuda::device_count);
  m.def("device_count", &cuda::device_count);
  m.def("cuda_build_info", [] { return std::string(cuda::build_info()); });
  m.def("cuda_unavailable_reason", &cuda::unavailable_reason);
  m.def("devices", [] {
    py::list out;
    int i = 0;
    for (const simt::DeviceSpec& d : simt::devices()) {
      py::dict e;
      e["index"] = i++;
      e["name"] = d.name;
      e["major"] = d.major;
      e["minor"] = d.minor;
      e["sm_count"] = d.sm_count;
      e["clusters"] = d.clusters();
      out.append(e);
    }
    return out;
  }, "The emulated GPUs (FUSEDCE_EMULATED_GPUS), as dicts");
  m.def("launch_log", [] {
    py::list out;
    for (const simt::LaunchRecord& r : simt::launch_log())
      out.append(py::make_tuple(r.kernel, xyz(r.grid), xyz(r.block), xyz(r.cluster), r.device));
    return out;
  }, "(kernel, grid, block, cluster, device) of every launch since the last clear_launch_log()");
  m.def("clear_launch_log", &simt::clear_launch_log);
  m.def("set_shuffle_seed", &simt::set_shuffle_seed, py::arg("seed"),
        "0: threads run in a fixed order between waits; otherwise an order shuffled from this seed");
  m.def("shuffle_seed", &simt::shuffle_seed);
  m.def("set_driver_error", [](const std::string& name) {
    if (name.empty()) simt::set_driver_error(cudaSuccess, 0);
    else if (name == "old_driver") simt::set_driver_error(cudaErrorInsufficientDriver, CUDART_VERSION - 1000);
    else if (name == "no_driver") simt::set_driver_error(cudaErrorInsufficientDriver, 0);
    else if (name == "no_device") simt::set_driver_error(cudaErrorNoDevice, CUDART_VERSION);
    else throw std::invalid_argument("name must be '', 'old_driver', 'no_driver' or 'no_device'");
  }, py::arg("name"),
     "Make the emulated driver fail as an old driver, a machine without driver or one without GPU would ('' undoes it)");
  m.def("selftest", &emulated::selftest, py::arg("name"),
        "Runs one of the model's self-check kernels (tests/test_emulated_model.py): returns what it computed");
#if defined(__SANITIZE_ADDRESS__)
  m.attr("with_asan") = true;
#else
  m.attr("with_asan") = false;
#endif
}
