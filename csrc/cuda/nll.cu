// NLL loss on the GPU, forward and backward, on log-probabilities y (one row per sample).
//
// Per row (t = class index, w = class weights or 1, g = the row's upstream factor):
//   loss  = -w_t y_t
//   dy_c  = -g w_t [c == t]
// Rows with t == ignore_index: loss 0, gradient row 0.
// Rows with t outside [0, C) (and not ignore_index): y is not read; the loss is NaN and the
// gradient row is NaN (the Python layer may validate targets first and raise IndexError).
//
// Forward: one thread per row (a gather of one element per row).
// Backward: a team per row writes the row (zeros and one value) with 128-bit stores when the
// rows are 16-byte aligned: a memset-speed write of N x C.

#include "common.cuh"
#include "core/ops.h"

namespace fusedce {
namespace cuda {
namespace detail {
namespace {

template <typename S>
struct NllArgs {
  const void* idx;
  bool idx64;
  int64_t idx_stride;
  const S* w;
  int64_t ignore;
  int64_t n;
  int c;
};

enum : int { kUse = 0, kIgnore = 1, kBad = 2 };

template <typename S>
__device__ __forceinline__ int nll_state(const NllArgs<S>& a, int64_t row, int64_t& t) {
  t = load_index(a.idx, a.idx64, row * a.idx_stride);
  if (t == a.ignore) return kIgnore;
  if (t < 0 || t >= a.c) return kBad;
  return kUse;
}

template <typename T>
__global__ void nll_forward_kernel(const T* y, int64_t y_stride, NllArgs<compute_t<T>> a, compute_t<T>* loss) {
  using S = compute_t<T>;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < a.n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t;
    const int st = nll_state(a, row, t);
    S l = S(0);
    if (st == kBad) {
      l = quiet_nan<S>();
    } else if (st == kUse) {
      const S wt = a.w ? a.w[t] : S(1);
      l = -wt * to_compute(y[row * y_stride + t]);
    }
    loss[row] = l;
  }
}

template <typename T, typename Team>
__global__ void __launch_bounds__(Team::kBlock)
    nll_backward_kernel(T* dx, int64_t dx_stride, NllArgs<compute_t<T>> a, const compute_t<T>* g,
                        int64_t g_stride, bool vec) {
  using S = compute_t<T>;
  constexpr int VEC = Pack<T>::N;
  SIMT_SHARED(typename Team::Storage, storage);
  Team team(storage);
  const int rank = team.rank();
  const int packs = (a.c + VEC - 1) / VEC;
  for (int64_t base = team.begin(); base < a.n; base += team.step()) {
    const int64_t row = base + team.sub_row();
    if (row >= a.n) continue;  // no reductions in this kernel: lanes may leave freely
    int64_t t;
    const int st = nll_state(a, row, t);
    S value = S(0);  // written at t
    if (st == kUse) value = -(g ? g[g_stride * row] : S(1)) * (a.w ? a.w[t] : S(1));
    const T fill = from_compute<T>(st == kBad ? quiet_nan<S>() : S(0));
    const T at_t = from_compute<T>(value);
    T* dr = dx + row * dx_stride;
    for (int v = rank; v < packs; v += Team::kThreads) {
      const int c0 = v * VEC;
      Pack<T> o;
#pragma unroll
      for (int k = 0; k < VEC; ++k) o.v[k] = (st == kUse && c0 + k == t) ? at_t : fill;
      store_pack(dr + c0, o, clamp_valid(int64_t{a.c} - c0, VEC), vec, true);
    }
  }
  team.finish();
}

template <typename T>
NllArgs<compute_t<T>> nll_args(const Rows& y, const Target& target, const LossOptions& opt, const char* op) {
  if (target.kind != TargetKind::ClassIndex)
    throw std::invalid_argument(std::string("fusedce CUDA ") + op + ": needs class-index targets");
  NllArgs<compute_t<T>> a;
  a.idx = reinterpret_cast<const void*>(target.data);
  a.idx64 = target.dtype == DType::Int64;
  a.idx_stride = target.stride;
  a.w = reinterpret_cast<const compute_t<T>*>(opt.weight);
  a.ignore = opt.ignore_index;
  a.n = y.rows;
  a.c = checked_cols(y.cols, op);
  return a;
}

template <typename T>
void nll_forward_typed(const Rows& y, const Target& target, const LossOptions& opt, const RowStats& stats,
                       const Launch& launch) {
  const auto a = nll_args<T>(y, target, opt, "nll_forward");
  if (a.n <= 0 || stats.loss == 0) return;
  DeviceGuard guard(launch.device);
  const DeviceProps props = device_props(launch.device);
  const unsigned grid = grid_for((a.n + 255) / 256, props.sm_count, 8);
  simt::launch<nll_forward_kernel<T>>(grid, 256, stream_of(launch), reinterpret_cast<const T*>(y.data), y.row_stride,
                                      a, reinterpret_cast<compute_t<T>*>(stats.loss));
  check_launch("nll_forward");
}

template <typename T>
void nll_backward_typed(const Rows& y, const Target& target, const LossOptions& opt, const RowStats& stats,
                        const Rows& dx, const Launch& launch) {
  const auto a = nll_args<T>(y, target, opt, "nll_backward");
  if (a.n <= 0) return;
  DeviceGuard guard(launch.device);
  const DeviceProps props = device_props(launch.device);
  const cudaStream_t s = stream_of(launch);
  T* dp = reinterpret_cast<T*>(dx.data);
  const auto* g = reinterpret_cast<const compute_t<T>*>(stats.grad);
  const int64_t gs = stats.grad_stride != 0 ? 1 : 0;
  const bool vec = rows_vectorizable<T>(dx.data, a.n, dx.row_stride);
  const int packs = (a.c + Pack<T>::N - 1) / Pack<T>::N;
  if (packs <= 4) {
    using Team = SubWarpTeam<4, 256>;
    simt::launch<nll_backward_kernel<T, Team>>(team_grid<Team>(a.n, props.sm_count), Team::kBlock, s, dp, dx.row_stride,
                                               a, g, gs, vec);
  } else if (packs <= 1024) {
    using Team = SubWarpTeam<32, 256>;
    simt::launch<nll_backward_kernel<T, Team>>(team_grid<Team>(a.n, props.sm_count), Team::kBlock, s, dp, dx.row_stride,
                                               a, g, gs, vec);
  } else {
    using Team = BlockTeam<256>;
    simt::launch<nll_backward_kernel<T, Team>>(team_grid<Team>(a.n, props.sm_count), Team::kBlock, s, dp, dx.row_stride,
                                               a, g, gs, vec);
  }
  check_launch("nll_backward");
}

}  // namespace
}  // namespace detail

void nll_forward(const Rows& logp, const Target& target, const LossOptions& opt, const RowStats& stats,
                 const Launch& launch) {
  switch (logp.dtype) {
    case DType::Float32: return detail::nll_forward_typed<float>(logp, target, opt, stats, launch);
    case DType::Float64: return detail::nll_forward_typed<double>(logp, target, opt, stats, launch);
    case DType::Float16: return detail::nll_forward_typed<__half>(logp, target, opt, stats, launch);
    case DType::BFloat16: return detail::nll_forward_typed<__nv_bfloat16>(logp, target, opt, stats, launch);
    default: throw std::invalid_argument("fusedce CUDA nll_forward: unsupported dtype");
  }
}

void nll_backward(const Rows& logp, const Target& target, const LossOptions& opt, const RowStats& stats,
                  const Rows& dx, const Launch& launch) {
  switch (logp.dtype) {
    case DType::Float32: return detail::nll_backward_typed<float>(logp, target, opt, stats, dx, launch);
    case DType::Float64: return detail::nll_backward_typed<double>(logp, target, opt, stats, dx, launch);
    case DType::Float16: return detail::nll_backward_typed<__half>(logp, target, opt, stats, dx, launch);
    case DType::BFloat16: return detail::nll_backward_typed<__nv_bfloat16>(logp, target, opt, stats, dx, launch);
    default: throw std::invalid_argument("fusedce CUDA nll_backward: unsupported dtype");
  }
}

}  // namespace cuda
}  // namespace fusedce
