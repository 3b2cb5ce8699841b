// The compiled module fusedce._core: the plain-data structs of core/types.h and one function
// per op of core/ops.h. Each op runs on the host or on a CUDA device as its Launch says,
// with the GIL released. Python (fusedce/_arrays.py) has checked every pointer, shape and
// dtype before calling: nothing here should be called directly.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/op_list.h"
#include "core/ops.h"
#include "cpu/kernel_table.h"
#include "cpu/streaming.h"
#include "cpu/thread_pool.h"

namespace py = pybind11;
using namespace fusedce;

namespace {

// Runs the host or the CUDA version of an op without the GIL.
template <class Host, class Device>
void run(const Launch& launch, Host&& host, Device&& device) {
  if (launch.device >= 0 && !cuda::available())
    throw std::runtime_error("fusedce cannot run on the GPU: " + cuda::unavailable_reason());
  py::gil_scoped_release no_gil;
  if (launch.device < 0) host();
  else device();
}

#define FUSEDCE_BIND_OP(name, params, args) \
  m.def(#name, [] params { run(launch, [&] { cpu::name args; }, [&] { cuda::name args; }); });

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedce's compiled kernels (internal: use the functions of the fusedce package)";

  py::enum_<DType>(m, "DType")
      .value("float32", DType::Float32)
      .value("float64", DType::Float64)
      .value("float16", DType::Float16)
      .value("bfloat16", DType::BFloat16)
      .value("int32", DType::Int32)
      .value("int64", DType::Int64);
  py::enum_<TargetKind>(m, "TargetKind")
      .value("none", TargetKind::None)
      .value("class_index", TargetKind::ClassIndex)
      .value("probabilities", TargetKind::Probabilities);

  py::class_<Rows>(m, "Rows")
      .def(py::init([](std::uintptr_t data, int64_t rows, int64_t cols, int64_t row_stride, DType dtype) {
             return Rows{data, rows, cols, row_stride, dtype};
           }),
           py::arg("data") = 0, py::arg("rows") = 0, py::arg("cols") = 0, py::arg("row_stride") = 0,
           py::arg("dtype") = DType::Float32)
      .def_readwrite("data", &Rows::data)
      .def_readwrite("rows", &Rows::rows)
      .def_readwrite("cols", &Rows::cols)
      .def_readwrite("row_stride", &Rows::row_stride)
      .def_readwrite("dtype", &Rows::dtype);
  py::class_<Target>(m, "Target")
      .def(py::init([](TargetKind kind, std::uintptr_t data, DType dtype, int64_t stride) {
             return Target{kind, data, dtype, stride};
           }),
           py::arg("kind") = TargetKind::None, py::arg("data") = 0, py::arg("dtype") = DType::Int64,
           py::arg("stride") = 1)
      .def_readwrite("kind", &Target::kind)
      .def_readwrite("data", &Target::data)
      .def_readwrite("dtype", &Target::dtype)
      .def_readwrite("stride", &Target::stride);
  py::class_<LossOptions>(m, "LossOptions")
      .def(py::init([](std::uintptr_t weight, int64_t ignore_index, double label_smoothing, double z_loss,
                       double softcap, int64_t class_offset, int64_t total_classes) {
             return LossOptions{weight, ignore_index, label_smoothing, z_loss, softcap, class_offset, total_classes};
           }),
           py::arg("weight") = 0, py::arg("ignore_index") = -100, py::arg("label_smoothing") = 0.0,
           py::arg("z_loss") = 0.0, py::arg("softcap") = 0.0, py::arg("class_offset") = 0,
           py::arg("total_classes") = 0)
      .def_readwrite("weight", &LossOptions::weight)
      .def_readwrite("ignore_index", &LossOptions::ignore_index)
      .def_readwrite("label_smoothing", &LossOptions::label_smoothing)
      .def_readwrite("z_loss", &LossOptions::z_loss)
      .def_readwrite("softcap", &LossOptions::softcap)
      .def_readwrite("class_offset", &LossOptions::class_offset)
      .def_readwrite("total_classes", &LossOptions::total_classes);
  py::class_<ShardStats>(m, "ShardStats")
      .def(py::init([](std::uintptr_t max, std::uintptr_t sum, std::uintptr_t target, std::uintptr_t dot) {
             return ShardStats{max, sum, target, dot};
           }),
           py::arg("max") = 0, py::arg("sum") = 0, py::arg("target") = 0, py::arg("dot") = 0)
      .def_readwrite("max", &ShardStats::max)
      .def_readwrite("sum", &ShardStats::sum)
      .def_readwrite("target", &ShardStats::target)
      .def_readwrite("dot", &ShardStats::dot);
  py::class_<RowStats>(m, "RowStats")
      .def(py::init([](std::uintptr_t loss, std::uintptr_t lse, bool lse_is_input, std::uintptr_t argmax,
                       std::uintptr_t grad, int64_t grad_stride) {
             return RowStats{loss, lse, lse_is_input, argmax, grad, grad_stride};
           }),
           py::arg("loss") = 0, py::arg("lse") = 0, py::arg("lse_is_input") = false, py::arg("argmax") = 0,
           py::arg("grad") = 0, py::arg("grad_stride") = 0)
      .def_readwrite("loss", &RowStats::loss)
      .def_readwrite("lse", &RowStats::lse)
      .def_readwrite("lse_is_input", &RowStats::lse_is_input)
      .def_readwrite("argmax", &RowStats::argmax)
      .def_readwrite("grad", &RowStats::grad)
      .def_readwrite("grad_stride", &RowStats::grad_stride);
  py::class_<Launch>(m, "Launch")
      .def(py::init([](int device, std::uintptr_t stream) { return Launch{device, stream}; }),
           py::arg("device") = -1, py::arg("stream") = 0)
      .def_readwrite("device", &Launch::device)
      .def_readwrite("stream", &Launch::stream);

  FUSEDCE_FOR_EACH_OP(FUSEDCE_BIND_OP)

  // Host-side helpers for the Python layer: cheaper than the NumPy equivalents (a float32 to
  // float64 sum, a min and a max) on the per-row arrays of small-class problems.
  m.def("sum_as_double", [](std::uintptr_t data, int64_t n, DType dtype) {
    py::gil_scoped_release no_gil;
    return cpu::sum_as_double(data, n, dtype);
  }, "The sum of n contiguous float32/float64 values, accumulated in float64 in a fixed order");
  m.def("index_range", [](std::uintptr_t data, int64_t n, DType dtype) {
    py::gil_scoped_release no_gil;
    int64_t lo = 0, hi = -1;
    cpu::index_range(data, n, dtype, lo, hi);
    return std::make_pair(lo, hi);
  }, "(min, max) of n contiguous int32/int64 values, (0, -1) when n == 0");
  m.def("simd_level", [] { return std::string(cpu::simd_level()); });
  m.def("available_simd_levels", [] {
    int n = 0;
    const char* const* names = cpu::available_simd_levels(&n);
    return std::vector<std::string>(names, names + n);
  });
  m.def("set_simd_level", [](const std::string& name) { return cpu::set_simd_level(name.c_str()); });
  m.def("num_threads", &cpu::num_threads);
  m.def("set_num_threads", [](int n) { cpu::set_num_threads(n); });
  m.def("default_num_threads", &cpu::default_num_threads);
  m.def("streaming_threshold_bytes", &cpu::streaming_threshold_bytes, py::arg("row_bytes"),
        "The smallest output (bytes) with rows of row_bytes that the CPU kernels stream");
  m.def("set_streaming_threshold_bytes", [](int64_t bytes) {
    if (bytes < 0) throw py::value_error("set_streaming_threshold_bytes: bytes must be >= 0 (0: the default)");
    cpu::set_streaming_threshold_bytes(bytes);
  }, "Stream every output of at least this many bytes (tests, benchmarks); 0 restores the default");
  m.def("short_row_streaming_threshold_bytes", &cpu::short_row_streaming_threshold_bytes);
  m.def("cuda_available", &cuda::available);
  m.def("cuda_device_count", &cuda::device_count);
  m.def("cuda_build_info", [] { return std::string(cuda::build_info()); });
  m.def("cuda_unavailable_reason", &cuda::unavailable_reason);
  m.def("vexp", [](std::uintptr_t x, std::uintptr_t y, int64_t n, DType dtype, bool nonpositive) {
    py::gil_scoped_release no_gil;
    const auto& k = cpu::active_kernels();
    if (dtype == DType::Float64) {
      const auto exp = nonpositive ? k.f64.exp_nonpositive : k.f64.exp;
      exp(reinterpret_cast<const double*>(x), reinterpret_cast<double*>(y), n);
    } else {
      const auto exp = nonpositive ? k.f32.exp_nonpositive : k.f32.exp;
      exp(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), n);
    }
  }, py::arg("x"), py::arg("y"), py::arg("n"), py::arg("dtype"), py::arg("nonpositive") = false,
     "The kernels' vectorised exp over n contiguous values (for tests); nonpositive: the "
     "variant for x <= 0 that the softmax sweeps use");
#ifdef FUSEDCE_VERSION
  m.attr("__version__") = FUSEDCE_VERSION;
#endif
}
