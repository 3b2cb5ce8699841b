// softmax / log_softmax on the GPU, forward and backward.
//
// Per row (x = input row, C classes, m = max_c x_c, s = sum_c exp(x_c - m)):
//   softmax      y_c  = exp(x_c - m) / s
//   log_softmax  y_c  = (x_c - m) - log s
//   softmax bwd      dx_c = y_c (g_c - sum_k g_k y_k)         (y = softmax(x), g = dL/dy)
//   log_softmax bwd  dx_c = g_c - exp(y_c) sum_k g_k          (y = log_softmax(x))
//
// Forward: the cross-entropy row kernel (cross_entropy.cu) in its softmax mode: the row is
// loaded once into registers, max and sum are reduced on chip, y is written from the
// registers (one read and one write per element; -inf inputs give 0 / -inf; a row that is
// all -inf gives NaN, as PyTorch).
// Backward: a team per row (a warp for C <= 1024, a 256-thread block beyond), pass 1 reduces
// the dot product (or sum g), pass 2 reads g and y again (from L1/L2 for moderate rows) and
// writes dx. dx may alias g or y: each element is read by the thread that writes it.

#include "common.cuh"
#include "core/ops.h"
#include "rows.cuh"

namespace fusedce {
namespace cuda {
namespace detail {
namespace {

template <typename T, typename Team>
__global__ void __launch_bounds__(Team::kBlock)
    softmax_backward_kernel(const T* g, int64_t g_stride, const T* y,
                            int64_t y_stride, T* dx, int64_t dx_stride, int64_t n, int c, bool log) {
  using S = compute_t<T>;
  SIMT_SHARED(typename Team::Storage, storage);
  Team team(storage);
  const int rank = team.rank();
  for (int64_t base = team.begin(); base < n; base += team.step()) {
    const int64_t row = base + team.sub_row();
    const bool active = row < n;
    const T* gr = g + (active ? row : 0) * g_stride;
    const T* yr = y + (active ? row : 0) * y_stride;
    S acc = S(0);
    if (active)
      for (int col = rank; col < c; col += Team::kThreads) {
        const S gv = to_compute(gr[col]);
        acc += log ? gv : gv * to_compute(yr[col]);
      }
    acc = team.reduce(acc, SumOp{});
    if (active) {
      T* dr = dx + row * dx_stride;
      for (int col = rank; col < c; col += Team::kThreads) {
        const S gv = to_compute(gr[col]);
        const S yv = to_compute(yr[col]);
        const S d = log ? gv - exp_shifted(yv, S(0), S(0)) * acc : yv * (gv - acc);
        dr[col] = from_compute<T>(d);
      }
    }
  }
  team.finish();
}

template <typename T>
void softmax_backward_typed(const Rows& grad, const Rows& y, const Rows& dx, bool log, const Launch& launch) {
  const int c = checked_cols(y.cols, "softmax_backward");
  const int64_t n = y.rows;
  if (n <= 0) return;
  DeviceGuard guard(launch.device);
  const DeviceProps props = device_props(launch.device);
  const cudaStream_t s = stream_of(launch);
  const T* gp = reinterpret_cast<const T*>(grad.data);
  const T* yp = reinterpret_cast<const T*>(y.data);
  T* dp = reinterpret_cast<T*>(dx.data);
  if (c <= 16) {
    using Team = SubWarpTeam<4, 256>;
    simt::launch<softmax_backward_kernel<T, Team>>(team_grid<Team>(n, props.sm_count), Team::kBlock, s, gp, grad.row_stride,
                                                   yp, y.row_stride, dp, dx.row_stride, n, c, log);
  } else if (c <= 1024) {
    using Team = SubWarpTeam<32, 256>;
    simt::launch<softmax_backward_kernel<T, Team>>(team_grid<Team>(n, props.sm_count), Team::kBlock, s, gp, grad.row_stride,
                                                   yp, y.row_stride, dp, dx.row_stride, n, c, log);
  } else {
    using Team = BlockTeam<256>;
    simt::launch<softmax_backward_kernel<T, Team>>(team_grid<Team>(n, props.sm_count), Team::kBlock, s, gp, grad.row_stride,
                                                   yp, y.row_stride, dp, dx.row_stride, n, c, log);
  }
  check_launch("softmax_backward");
}

}  // namespace
}  // namespace detail

void softmax_forward(const Rows& x, const Rows& y, bool log, const Launch& launch) {
  detail::run_row_op(log ? detail::kLogSoftmax : detail::kSoftmax, x, Target{}, LossOptions{}, RowStats{}, y,
                     launch);
}

void softmax_backward(const Rows& grad, const Rows& y, const Rows& dx, bool log, const Launch& launch) {
  switch (y.dtype) {
    case DType::Float32: return detail::softmax_backward_typed<float>(grad, y, dx, log, launch);
    case DType::Float64: return detail::softmax_backward_typed<double>(grad, y, dx, log, launch);
    case DType::Float16: return detail::softmax_backward_typed<__half>(grad, y, dx, log, launch);
    case DType::BFloat16: return detail::softmax_backward_typed<__nv_bfloat16>(grad, y, dx, log, launch);
    default: throw std::invalid_argument("fusedce CUDA softmax_backward: unsupported dtype");
  }
}

}  // namespace cuda
}  // namespace fusedce
