// MSE loss on the GPU (the identity activation's regression loss), forward and backward.
//
// Per row (x = prediction row, t = target row, same shape):
//   each_c  = (x_c - t_c)^2                  loss = sum_c each_c   (per-row sum, compute dtype)
//   dx_c    = 2 (x_c - t_c) * f_c,  f_c = grad_each[row, c] when given, else the row's
//             upstream factor RowStats::grad (grad_stride 0: one factor, 1: per row), else 1.
// target, `each` and `grad_each` may come in the input dtype or the compute dtype (each is
// read / written by its own Rows::dtype); dx is in the prediction's dtype.
// A team per row (4 lanes for C <= 16, a warp for C <= 4096, a 256-thread block beyond);
// one pass, coalesced; NaN propagates.

#include "common.cuh"
#include "core/ops.h"

namespace fusedce {
namespace cuda {
namespace detail {
namespace {

struct MseArgs {
  std::uintptr_t tgt;
  DType tgt_dt;
  int64_t tgt_stride;
  std::uintptr_t aux;  // forward: `each` (out); backward: `grad_each` (in); 0 if absent
  DType aux_dt;
  int64_t aux_stride;
  std::uintptr_t rowval;  // forward: per-row loss (out); backward: per-row factor (in)
  int64_t row_stride_g;   // backward: 0 or 1
  int64_t n;
  int c;
};

template <typename T, typename Team>
__global__ void __launch_bounds__(Team::kBlock) mse_forward_kernel(const T* x, int64_t x_stride, MseArgs a) {
  using S = compute_t<T>;
  SIMT_SHARED(typename Team::Storage, storage);
  Team team(storage);
  const int rank = team.rank();
  for (int64_t base = team.begin(); base < a.n; base += team.step()) {
    const int64_t row = base + team.sub_row();
    const bool active = row < a.n;
    S acc = S(0);
    if (active) {
      const T* xr = x + row * x_stride;
      for (int col = rank; col < a.c; col += Team::kThreads) {
        const S d = to_compute(xr[col]) - load_dyn<S>(a.tgt, a.tgt_dt, row * a.tgt_stride + col);
        const S sq = d * d;
        if (a.aux) store_dyn<S>(a.aux, a.aux_dt, row * a.aux_stride + col, sq);
        acc += sq;
      }
    }
    acc = team.reduce(acc, SumOp{});
    if (active && rank == 0 && a.rowval) reinterpret_cast<S*>(a.rowval)[row] = acc;
  }
  team.finish();
}

template <typename T, typename Team>
__global__ void __launch_bounds__(Team::kBlock)
    mse_backward_kernel(const T* x, int64_t x_stride, T* dx, int64_t dx_stride, MseArgs a) {
  using S = compute_t<T>;
  SIMT_SHARED(typename Team::Storage, storage);
  Team team(storage);
  const int rank = team.rank();
  for (int64_t base = team.begin(); base < a.n; base += team.step()) {
    const int64_t row = base + team.sub_row();
    if (row >= a.n) continue;  // no reductions here
    const S factor = a.rowval ? reinterpret_cast<const S*>(a.rowval)[a.row_stride_g * row] : S(1);
    const T* xr = x + row * x_stride;
    T* dr = dx + row * dx_stride;
    for (int col = rank; col < a.c; col += Team::kThreads) {
      const S d = to_compute(xr[col]) - load_dyn<S>(a.tgt, a.tgt_dt, row * a.tgt_stride + col);
      const S f = a.aux ? load_dyn<S>(a.aux, a.aux_dt, row * a.aux_stride + col) : factor;
      dr[col] = from_compute<T>(S(2) * d * f);
    }
  }
  team.finish();
}

template <typename T, typename Team>
void mse_launch(bool backward, const T* xp, int64_t xs, T* dp, int64_t ds, const MseArgs& a, const DeviceProps& props,
                cudaStream_t s) {
  const unsigned grid = team_grid<Team>(a.n, props.sm_count);
  if (backward)
    simt::launch<mse_backward_kernel<T, Team>>(grid, Team::kBlock, s, xp, xs, dp, ds, a);
  else
    simt::launch<mse_forward_kernel<T, Team>>(grid, Team::kBlock, s, xp, xs, a);
}

template <typename T>
void mse_typed(bool backward, const Rows& pred, const Rows& target, const Rows& aux, const RowStats& stats,
               const Rows& dx, const Launch& launch) {
  MseArgs a;
  a.tgt = target.data;
  a.tgt_dt = target.dtype;
  a.tgt_stride = target.row_stride;
  a.aux = aux.data;
  a.aux_dt = aux.dtype;
  a.aux_stride = aux.row_stride;
  a.rowval = backward ? stats.grad : stats.loss;
  a.row_stride_g = stats.grad_stride != 0 ? 1 : 0;
  a.n = pred.rows;
  // elementwise: rows of zero length are fine (each row's sum is 0)
  a.c = pred.cols == 0 ? 0 : checked_cols(pred.cols, backward ? "mse_backward" : "mse_forward");
  if (a.n <= 0) return;
  if (!backward && a.aux == 0 && a.rowval == 0) return;
  DeviceGuard guard(launch.device);
  const DeviceProps props = device_props(launch.device);
  const cudaStream_t s = stream_of(launch);
  const T* xp = reinterpret_cast<const T*>(pred.data);
  T* dp = reinterpret_cast<T*>(dx.data);
  if (a.c <= 16)
    mse_launch<T, SubWarpTeam<4, 256>>(backward, xp, pred.row_stride, dp, dx.row_stride, a, props, s);
  else if (a.c <= 4096)
    mse_launch<T, SubWarpTeam<32, 256>>(backward, xp, pred.row_stride, dp, dx.row_stride, a, props, s);
  else
    mse_launch<T, BlockTeam<256>>(backward, xp, pred.row_stride, dp, dx.row_stride, a, props, s);
  check_launch(backward ? "mse_backward" : "mse_forward");
}

template <typename... A>
void mse_dispatch(DType dt, bool backward, const A&... args) {
  switch (dt) {
    case DType::Float32: return mse_typed<float>(backward, args...);
    case DType::Float64: return mse_typed<double>(backward, args...);
    case DType::Float16: return mse_typed<__half>(backward, args...);
    case DType::BFloat16: return mse_typed<__nv_bfloat16>(backward, args...);
    default: throw std::invalid_argument("fusedce CUDA mse: unsupported dtype");
  }
}

}  // namespace
}  // namespace detail

void mse_forward(const Rows& pred, const Rows& target, const RowStats& stats, const Rows& each, const Launch& launch) {
  detail::mse_dispatch(pred.dtype, false, pred, target, each, stats, Rows{}, launch);
}

void mse_backward(const Rows& pred, const Rows& target, const Rows& grad_each, const RowStats& stats, const Rows& dx,
                  const Launch& launch) {
  detail::mse_dispatch(pred.dtype, true, pred, target, grad_each, stats, dx, launch);
}

}  // namespace cuda
}  // namespace fusedce
