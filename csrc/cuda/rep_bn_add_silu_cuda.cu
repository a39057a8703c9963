// CUDA kernels of provg::rep_bn_add_silu_{forward,backward} (Sec. 4.3): y = SiLU(s), s = Σ_i BN_i(x_i) over
// K = 1..3 branches, for NCHW or channels-last inputs (indexed through (B, C, L = H·W)).
//
// Forward: (1, training only) a statistics kernel on a 2-D grid (channel tiles × chunks of the B·L
// positions) accumulates the shifted sums Σ(x_i − k_i), Σ(x_i − k_i)² (k_i = x_i[0, c, 0]) of each
// branch into per-chunk partials (no atomics, deterministic), which ATen's sum adds up (a thread per
// channel walking the chunks in order ran 0.1 ms longer at 120² on an H200); (2) a thread per channel
// writes the batch mean and variance and scale_i = γ_i·rsqrt(var_i + eps); (3) an elementwise kernel
// (grid-stride, 16-byte vectors when aligned) recomputes s and writes y = s·σ(s).
// Backward: (1) the same reduction recomputes s and ds = grad·σ(s)·(1 + s·(1 − σ(s))) to give Σ ds and
// Σ ds·(x_i − μ_i) per channel; (2) a thread per channel turns them into dγ, dβ and the terms of dx;
// (3) an elementwise kernel writes every dx_i in one pass.
// Four launches each way: the per-channel step is a kernel of its own rather than a dozen ATen
// operations, whose host time per call (several µs each) outweighed the kernels at the CFM shapes.
// Blocks walk positions fastest for NCHW (coalesced along H·W) and channels fastest for channels-last.
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../repconv.h"
#include "elementwise.cuh"

namespace provg {
namespace {

using namespace cuda;

constexpr int kMaxBranches = 3;

template <typename scalar_t>
struct Branches {
  const scalar_t* x[kMaxBranches];
};

template <typename scalar_t>
struct BranchOutputs {
  scalar_t* x[kMaxBranches];
};

// s = Σ_k ((x_k − μ_k)·scale_k + β_k) for channel c; d[k] = x_k − μ_k.
template <typename acc_t, int K>
__device__ __forceinline__ acc_t pre_activation(const acc_t (&xv)[K], acc_t (&d)[K], int64_t c, int64_t C,
                                                const acc_t* __restrict__ mean, const acc_t* __restrict__ scale,
                                                const acc_t* __restrict__ bias) {
  acc_t s = acc_t(0);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    d[k] = xv[k] - mean[k * C + c];
    s += d[k] * scale[k * C + c] + bias[k * C + c];
  }
  return s;
}

template <typename acc_t>
__device__ __forceinline__ acc_t silu_grad(acc_t g, acc_t s) {
  const acc_t sig = sigmoid(s);
  return g * sig * (acc_t(1) + s * (acc_t(1) - sig));
}

// Per-channel sums over one chunk of the n = B·L positions. Block (TC channels × TP positions, TC·TP =
// kThreads), grid (⌈C / TC⌉ channel tiles, chunks); partial is (chunks, NA, C).
//   forward  (NA = 2K): acc[k] = Σ (x_k − k_k), acc[K + k] = Σ (x_k − k_k)²   (shift k_k = x_k[0, c, 0])
//   backward (NA = K + 1): acc[0] = Σ ds, acc[1 + k] = Σ ds·(x_k − μ_k)
// NCHW (TC = 1) advances (b, l) by TP = (step_b, step_l) per step, without divisions.
template <typename scalar_t, typename acc_t, int K, bool BACKWARD, bool CL>
__global__ void channel_sums_kernel(Branches<scalar_t> in, const scalar_t* __restrict__ grad,
                                    const acc_t* __restrict__ mean,    // (K, C), backward only
                                    const acc_t* __restrict__ var,     // (K, C), backward only
                                    const acc_t* __restrict__ weight,  // (K, C), backward only
                                    const acc_t* __restrict__ bias,    // (K, C), backward only
                                    acc_t eps, acc_t* __restrict__ partial, int64_t C, int64_t L, int64_t n,
                                    int64_t chunk_len, int64_t step_b, int64_t step_l) {
  constexpr int NA = BACKWARD ? K + 1 : 2 * K;
  __shared__ acc_t shared[NA][kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int TC = blockDim.x, TP = blockDim.y;
  const int tid = ty * TC + tx;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * TC + tx;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * chunk_len;
  const int64_t last = first + chunk_len < n ? first + chunk_len : n;

  acc_t acc[NA];
#pragma unroll
  for (int a = 0; a < NA; ++a) acc[a] = acc_t(0);

  if (c < C) {
    // The channel's centre (forward: the shift, backward: the mean), and for the backward its scale and bias.
    acc_t center[K], scale[K], beta[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if constexpr (BACKWARD) {
        center[k] = mean[k * C + c];
        scale[k] = weight[k * C + c] * rsqrt(var[k * C + c] + eps);
        beta[k] = bias[k * C + c];
      } else {
        center[k] = static_cast<acc_t>(in.x[k][CL ? c : c * L]);
      }
    }
    auto visit = [&](int64_t o) {
      acc_t d[K];
#pragma unroll
      for (int k = 0; k < K; ++k) d[k] = static_cast<acc_t>(in.x[k][o]) - center[k];
      if constexpr (BACKWARD) {
        acc_t s = acc_t(0);
#pragma unroll
        for (int k = 0; k < K; ++k) s += d[k] * scale[k] + beta[k];
        const acc_t ds = silu_grad(static_cast<acc_t>(grad[o]), s);
        acc[0] += ds;
#pragma unroll
        for (int k = 0; k < K; ++k) acc[1 + k] += ds * d[k];
      } else {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          acc[k] += d[k];
          acc[K + k] += d[k] * d[k];
        }
      }
    };
    // Unrolled so that several positions' loads are in flight per thread.
    if constexpr (CL) {
#pragma unroll 4
      for (int64_t p = first + ty; p < last; p += TP) visit(p * C + c);
    } else {
      int64_t p = first + ty;
      if (p < last) {
        int64_t b = p / L, l = p - b * L;
#pragma unroll 4
        for (; p < last; p += TP) {
          visit((b * C + c) * L + l);
          b += step_b;
          l += step_l;
          if (l >= L) {
            l -= L;
            ++b;
          }
        }
      }
    }
  }

  // Tree over the TP position rows of the block (every thread takes part: no early return above).
#pragma unroll
  for (int a = 0; a < NA; ++a) shared[a][tid] = acc[a];
  __syncthreads();
  for (int half = TP / 2; half > 0; half >>= 1) {
    if (ty < half) {
#pragma unroll
      for (int a = 0; a < NA; ++a) shared[a][tid] += shared[a][tid + half * TC];
    }
    __syncthreads();
  }
  if (ty == 0 && c < C) {
#pragma unroll
    for (int a = 0; a < NA; ++a) partial[(static_cast<int64_t>(blockIdx.y) * NA + a) * C + c] = shared[a][tx];
  }
}

// A thread per channel, given the forward's (2K, C) shifted sums (training; null in eval): writes the
// batch mean and the biased variance of each branch (sums over n values of the shifted x), and scale_k =
// γ_k·rsqrt(var_k + eps) with the batch variance or, in eval, the given one.
template <typename scalar_t, typename acc_t, int K, bool CL>
__global__ void forward_stats_kernel(Branches<scalar_t> in, const acc_t* __restrict__ sums,
                                     const acc_t* __restrict__ weight, const acc_t* __restrict__ given_var,
                                     acc_t* __restrict__ mean, acc_t* __restrict__ var, acc_t* __restrict__ scale,
                                     int64_t C, int64_t L, acc_t count, acc_t eps) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t i = k * C + c;
    acc_t variance;
    if (sums != nullptr) {
      const acc_t m1 = sums[i] / count, m2 = sums[(K + k) * C + c] / count;
      variance = m2 - m1 * m1;
      variance = variance > acc_t(0) ? variance : acc_t(0);
      mean[i] = static_cast<acc_t>(in.x[k][CL ? c : c * L]) + m1;
      var[i] = variance;
    } else {
      variance = given_var[i];
    }
    scale[i] = weight[i] * rsqrt(variance + eps);
  }
}

// A thread per channel, given the backward's (K + 1, C) sums: dγ_k = rstd_k·Σ ds·(x_k − μ_k), dβ_k = Σ ds, the
// scale γ_k·rstd_k, and in training the terms of dx (mean_ds = Σ ds / n, proj_k = rstd_k²·Σ ds·(x_k − μ_k)
// / n; both null in eval).
template <typename acc_t, int K>
__global__ void backward_stats_kernel(const acc_t* __restrict__ sums, const acc_t* __restrict__ weight,
                                      const acc_t* __restrict__ var, acc_t* __restrict__ scale,
                                      acc_t* __restrict__ dweight, acc_t* __restrict__ dbias,
                                      acc_t* __restrict__ mean_ds, acc_t* __restrict__ proj, int64_t C, acc_t count,
                                      acc_t eps) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const acc_t sum_ds = sums[c];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t i = k * C + c;
    const acc_t rstd = rsqrt(var[i] + eps), sum_dsx = sums[(1 + k) * C + c];
    scale[i] = weight[i] * rstd;
    dweight[i] = rstd * sum_dsx;
    dbias[i] = sum_ds;
    if (proj != nullptr) proj[i] = rstd * rstd * sum_dsx / count;
  }
  if (mean_ds != nullptr) mean_ds[c] = sum_ds / count;
}

// y = SiLU(s) elementwise; VEC elements per step (16-byte packs), the total % VEC tail one at a time.
template <typename scalar_t, typename acc_t, int K, int VEC>
__global__ void forward_apply_kernel(Branches<scalar_t> in, const acc_t* __restrict__ mean,
                                     const acc_t* __restrict__ scale, const acc_t* __restrict__ bias,
                                     scalar_t* __restrict__ y, int64_t total, int64_t C, int64_t L, bool cl) {
  using P = Pack<scalar_t, VEC>;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t vectors = total / VEC;
  for (int64_t v = start; v < vectors; v += stride) {
    const int64_t base = v * VEC;
    P xs[K];
#pragma unroll
    for (int k = 0; k < K; ++k) xs[k] = *reinterpret_cast<const P*>(in.x[k] + base);
    P out;
    ChannelWalker w(base, C, L, cl);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t xv[K], d[K];
#pragma unroll
      for (int k = 0; k < K; ++k) xv[k] = static_cast<acc_t>(xs[k].v[j]);
      const acc_t s = pre_activation<acc_t, K>(xv, d, w.c, C, mean, scale, bias);
      out.v[j] = static_cast<scalar_t>(s / (acc_t(1) + exp(-s)));
      w.next(C, L, cl);
    }
    *reinterpret_cast<P*>(y + base) = out;
  }
  for (int64_t i = vectors * VEC + start; i < total; i += stride) {
    const ChannelWalker w(i, C, L, cl);
    acc_t xv[K], d[K];
#pragma unroll
    for (int k = 0; k < K; ++k) xv[k] = static_cast<acc_t>(in.x[k][i]);
    const acc_t s = pre_activation<acc_t, K>(xv, d, w.c, C, mean, scale, bias);
    y[i] = static_cast<scalar_t>(s / (acc_t(1) + exp(-s)));
  }
}

// dx_k = scale_k·(ds − mean_ds − (x_k − μ_k)·proj_k) in training (mean_ds = Σds / n, proj_k =
// rstd_k²·Σ ds·(x_k − μ_k) / n), scale_k·ds in eval (mean_ds, proj null).
template <typename scalar_t, typename acc_t, int K>
__device__ __forceinline__ void input_grads(const acc_t (&xv)[K], acc_t g, int64_t c, int64_t C,
                                            const acc_t* __restrict__ mean, const acc_t* __restrict__ scale,
                                            const acc_t* __restrict__ bias, const acc_t* __restrict__ mean_ds,
                                            const acc_t* __restrict__ proj, acc_t (&dx)[K]) {
  acc_t d[K];
  const acc_t s = pre_activation<acc_t, K>(xv, d, c, C, mean, scale, bias);
  const acc_t ds = silu_grad(g, s);
  if (mean_ds != nullptr) {
    const acc_t centered = ds - mean_ds[c];
#pragma unroll
    for (int k = 0; k < K; ++k) dx[k] = scale[k * C + c] * (centered - d[k] * proj[k * C + c]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) dx[k] = scale[k * C + c] * ds;
  }
}

template <typename scalar_t, typename acc_t, int K, int VEC>
__global__ void backward_apply_kernel(const scalar_t* __restrict__ grad, Branches<scalar_t> in,
                                      BranchOutputs<scalar_t> dinputs, const acc_t* __restrict__ mean,
                                      const acc_t* __restrict__ scale, const acc_t* __restrict__ bias,
                                      const acc_t* __restrict__ mean_ds, const acc_t* __restrict__ proj,
                                      int64_t total, int64_t C, int64_t L, bool cl) {
  using P = Pack<scalar_t, VEC>;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t vectors = total / VEC;
  for (int64_t v = start; v < vectors; v += stride) {
    const int64_t base = v * VEC;
    const P gs = *reinterpret_cast<const P*>(grad + base);
    P xs[K], outs[K];
#pragma unroll
    for (int k = 0; k < K; ++k) xs[k] = *reinterpret_cast<const P*>(in.x[k] + base);
    ChannelWalker w(base, C, L, cl);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t xv[K], dx[K];
#pragma unroll
      for (int k = 0; k < K; ++k) xv[k] = static_cast<acc_t>(xs[k].v[j]);
      input_grads<scalar_t, acc_t, K>(xv, static_cast<acc_t>(gs.v[j]), w.c, C, mean, scale, bias, mean_ds, proj, dx);
#pragma unroll
      for (int k = 0; k < K; ++k) outs[k].v[j] = static_cast<scalar_t>(dx[k]);
      w.next(C, L, cl);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) *reinterpret_cast<P*>(dinputs.x[k] + base) = outs[k];
  }
  for (int64_t i = vectors * VEC + start; i < total; i += stride) {
    const ChannelWalker w(i, C, L, cl);
    acc_t xv[K], dx[K];
#pragma unroll
    for (int k = 0; k < K; ++k) xv[k] = static_cast<acc_t>(in.x[k][i]);
    input_grads<scalar_t, acc_t, K>(xv, static_cast<acc_t>(grad[i]), w.c, C, mean, scale, bias, mean_ds, proj, dx);
#pragma unroll
    for (int k = 0; k < K; ++k) dinputs.x[k][i] = static_cast<scalar_t>(dx[k]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

struct Shape {
  int64_t K, B, C, L, n, total;
  bool cl;  // channels-last (and not plainly contiguous)
  at::ScalarType acc;
};

void check_param(const char* op, const char* name, const at::Tensor& t, const Shape& s, const at::Device& device) {
  TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == s.acc, op, ": ", name, " must be ", s.acc, " for the inputs' accumulation, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.K && t.size(1) == s.C, op, ": ", name, " must be (", s.K, ", ", s.C,
              "), got ", t.sizes());
}

Shape check_inputs(const char* op, at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias) {
  Shape s{};
  s.K = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(s.K >= 1 && s.K <= kMaxBranches, op, ": 1 to ", kMaxBranches, " branch inputs expected, got ", s.K);
  const at::Tensor& x0 = inputs[0];
  TORCH_CHECK(x0.is_cuda(), op, ": inputs must be CUDA tensors, got one on ", x0.device());
  TORCH_CHECK(x0.dim() == 4, op, ": inputs must be (B, C, H, W), got ", x0.sizes());
  const auto dtype = x0.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, op,
              ": inputs must be float16, bfloat16, float32 or float64, got ", dtype);
  s.cl = !x0.is_contiguous() && x0.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto format = s.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (int64_t i = 0; i < s.K; ++i) {
    const at::Tensor& x = inputs[i];
    TORCH_CHECK(x.device() == x0.device(), op, ": input ", i, " is on ", x.device(), ", input 0 on ", x0.device());
    TORCH_CHECK(x.scalar_type() == dtype, op, ": input ", i, " is ", x.scalar_type(), ", input 0 is ", dtype);
    TORCH_CHECK(x.sizes() == x0.sizes(), op, ": input ", i, " has size ", x.sizes(), ", input 0 ", x0.sizes());
    TORCH_CHECK(x.is_contiguous(format), op, ": input ", i, " must be ", s.cl ? "channels-last" : "NCHW",
                " contiguous like input 0 (strides ", x.strides(), ")");
  }
  s.B = x0.size(0);
  s.C = x0.size(1);
  s.L = x0.size(2) * x0.size(3);
  s.n = s.B * s.L;
  s.total = x0.numel();
  s.acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  check_param(op, "weight", weight, s, x0.device());
  check_param(op, "bias", bias, s, x0.device());
  return s;
}

template <typename scalar_t>
Branches<scalar_t> branch_pointers(at::TensorList xs) {
  Branches<scalar_t> b{};
  for (size_t i = 0; i < xs.size(); ++i) b.x[i] = xs[i].const_data_ptr<scalar_t>();
  return b;
}

template <typename scalar_t>
bool all_aligned(at::TensorList xs, const void* a, const void* b) {
  bool ok = aligned(a) && aligned(b);
  for (const auto& x : xs) ok = ok && aligned(x.const_data_ptr<scalar_t>());
  return ok;
}

// The (NA, C) sums of channel_sums_kernel (see there), its per-chunk partials added by ATen; the backward
// passes the normalization's parameters (K, C) and eps, the forward none of them.
template <typename scalar_t, int K, bool BACKWARD>
at::Tensor channel_sums(const Shape& s, at::TensorList inputs, const at::Tensor* grad, const at::Tensor* mean,
                        const at::Tensor* var, const at::Tensor* weight, const at::Tensor* bias, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int NA = BACKWARD ? K + 1 : 2 * K;
  int tc = 1;
  if (s.cl) {
    while (tc < kWarp && tc < s.C) tc *= 2;
  }
  const int tp = kThreads / tc;
  const int64_t tiles = ceil_div(s.C, tc);
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max(), "rep_bn_add_silu_cuda: too many channels, ", s.C);
  // About two waves of 8 resident blocks per multiprocessor, at least 16 positions per thread.
  const int64_t target = multiprocessors() * 16;
  int64_t chunks = std::min(ceil_div(target, tiles), ceil_div(s.n, static_cast<int64_t>(tp) * 16));
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, 65535));
  const int64_t chunk_len = ceil_div(s.n, chunks);
  chunks = ceil_div(s.n, chunk_len);
  at::Tensor partial = at::empty({chunks, NA, s.C}, inputs[0].options().dtype(s.acc));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks));
  const dim3 block(tc, tp);
  const int64_t step_b = tp / s.L, step_l = tp % s.L;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Branches<scalar_t> in = branch_pointers<scalar_t>(inputs);
  const scalar_t* g = grad ? grad->const_data_ptr<scalar_t>() : nullptr;
  auto pointer = [](const at::Tensor* t) { return t ? t->const_data_ptr<acc_t>() : nullptr; };
  const auto kernel = s.cl ? channel_sums_kernel<scalar_t, acc_t, K, BACKWARD, true>
                           : channel_sums_kernel<scalar_t, acc_t, K, BACKWARD, false>;
  kernel<<<grid, block, 0, stream>>>(in, g, pointer(mean), pointer(var), pointer(weight), pointer(bias),
                                     static_cast<acc_t>(eps), partial.data_ptr<acc_t>(), s.C, s.L, s.n, chunk_len,
                                     step_b, step_l);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial.sum(0);
}

// Threads of the per-channel kernels: one per channel.
inline unsigned channel_blocks(int64_t C) { return static_cast<unsigned>(ceil_div(C, static_cast<int64_t>(kThreads))); }

template <typename scalar_t, int K>
void forward_apply(const Shape& s, at::TensorList inputs, const at::Tensor& mean, const at::Tensor& scale,
                   const at::Tensor& bias, at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int VEC = kVectorBytes / sizeof(scalar_t);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Branches<scalar_t> in = branch_pointers<scalar_t>(inputs);
  scalar_t* out = y.data_ptr<scalar_t>();
  if (all_aligned<scalar_t>(inputs, out, out)) {
    forward_apply_kernel<scalar_t, acc_t, K, VEC><<<elementwise_blocks(ceil_div(s.total, VEC)), kThreads, 0, stream>>>(
        in, mean.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(), bias.const_data_ptr<acc_t>(), out, s.total,
        s.C, s.L, s.cl);
  } else {
    forward_apply_kernel<scalar_t, acc_t, K, 1><<<elementwise_blocks(s.total), kThreads, 0, stream>>>(
        in, mean.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(), bias.const_data_ptr<acc_t>(), out, s.total,
        s.C, s.L, s.cl);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int K>
void backward_apply(const Shape& s, const at::Tensor& grad, at::TensorList inputs, std::vector<at::Tensor>& dinputs,
                    const at::Tensor& mean, const at::Tensor& scale, const at::Tensor& bias, const at::Tensor* mean_ds,
                    const at::Tensor* proj) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int VEC = kVectorBytes / sizeof(scalar_t);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Branches<scalar_t> in = branch_pointers<scalar_t>(inputs);
  BranchOutputs<scalar_t> out{};
  bool ok = all_aligned<scalar_t>(inputs, grad.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>());
  for (int64_t k = 0; k < s.K; ++k) {
    out.x[k] = dinputs[k].data_ptr<scalar_t>();
    ok = ok && aligned(out.x[k]);
  }
  const acc_t* mds = mean_ds ? mean_ds->const_data_ptr<acc_t>() : nullptr;
  const acc_t* pj = proj ? proj->const_data_ptr<acc_t>() : nullptr;
  if (ok) {
    backward_apply_kernel<scalar_t, acc_t, K, VEC><<<elementwise_blocks(ceil_div(s.total, VEC)), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), in, out, mean.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(),
        bias.const_data_ptr<acc_t>(), mds, pj, s.total, s.C, s.L, s.cl);
  } else {
    backward_apply_kernel<scalar_t, acc_t, K, 1><<<elementwise_blocks(s.total), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), in, out, mean.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(),
        bias.const_data_ptr<acc_t>(), mds, pj, s.total, s.C, s.L, s.cl);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs the lambda with `constexpr int NAME` = K_VALUE (1..3, checked before).
#define PROVG_DISPATCH_BRANCHES(K_VALUE, NAME, ...) \
  switch (K_VALUE) {                                \
    case 1: {                                       \
      constexpr int NAME = 1;                       \
      __VA_ARGS__();                                \
      break;                                        \
    }                                               \
    case 2: {                                       \
      constexpr int NAME = 2;                       \
      __VA_ARGS__();                                \
      break;                                        \
    }                                               \
    default: {                                      \
      constexpr int NAME = 3;                       \
      __VA_ARGS__();                                \
      break;                                        \
    }                                               \
  }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rep_bn_add_silu_forward_cuda(
    at::TensorList inputs, const at::Tensor& weight_, const at::Tensor& bias_, const at::Tensor& mean_,
    const at::Tensor& var_, bool training, double eps) {
  constexpr const char* op = "rep_bn_add_silu_forward_cuda";
  const Shape s = check_inputs(op, inputs, weight_, bias_);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  if (!training) {
    check_param(op, "mean", mean_, s, inputs[0].device());
    check_param(op, "var", var_, s, inputs[0].device());
  }
  at::Tensor y = at::empty_like(inputs[0]);
  const at::Tensor weight = weight_.contiguous(), bias = bias_.contiguous();
  if (training) {
    TORCH_CHECK(s.n > 1, op, ": batch statistics need more than 1 value per channel, got input size ",
                inputs[0].sizes());
    if (s.C == 0) return {y, at::empty({s.K, 0}, weight.options()), at::empty({s.K, 0}, weight.options())};
  }
  at::Tensor mean = training ? at::empty({s.K, s.C}, weight.options()) : mean_.contiguous();
  at::Tensor var = training ? at::empty({s.K, s.C}, weight.options()) : var_.contiguous();
  if (training || s.total > 0) {
    const at::Tensor scale = at::empty({s.K, s.C}, weight.options());
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "rep_bn_add_silu_forward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      PROVG_DISPATCH_BRANCHES(s.K, K, [&] {
        at::Tensor sums;
        if (training)
          sums = channel_sums<scalar_t, K, false>(s, inputs, nullptr, nullptr, nullptr, nullptr, nullptr, eps);
        const auto stats = s.cl ? forward_stats_kernel<scalar_t, acc_t, K, true>
                                : forward_stats_kernel<scalar_t, acc_t, K, false>;
        stats<<<channel_blocks(s.C), kThreads, 0, stream>>>(
            branch_pointers<scalar_t>(inputs), training ? sums.const_data_ptr<acc_t>() : nullptr,
            weight.const_data_ptr<acc_t>(), training ? nullptr : var.const_data_ptr<acc_t>(),
            training ? mean.data_ptr<acc_t>() : nullptr, training ? var.data_ptr<acc_t>() : nullptr,
            scale.data_ptr<acc_t>(), s.C, s.L, static_cast<acc_t>(s.n), static_cast<acc_t>(eps));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (s.total > 0) forward_apply<scalar_t, K>(s, inputs, mean, scale, bias, y);
      });
    });
  }
  if (training) return {y, mean, var};
  return {y, mean_.clone(), var_.clone()};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> rep_bn_add_silu_backward_cuda(
    const at::Tensor& grad, at::TensorList inputs, const at::Tensor& weight_, const at::Tensor& bias_,
    const at::Tensor& mean_, const at::Tensor& var_, bool training, double eps) {
  constexpr const char* op = "rep_bn_add_silu_backward_cuda";
  const Shape s = check_inputs(op, inputs, weight_, bias_);
  const at::Tensor& x0 = inputs[0];
  check_param(op, "mean", mean_, s, x0.device());
  check_param(op, "var", var_, s, x0.device());
  TORCH_CHECK(grad.device() == x0.device(), op, ": grad is on ", grad.device(), ", the inputs on ", x0.device());
  TORCH_CHECK(grad.scalar_type() == x0.scalar_type(), op, ": grad is ", grad.scalar_type(), ", the inputs ",
              x0.scalar_type());
  TORCH_CHECK(grad.sizes() == x0.sizes(), op, ": grad has size ", grad.sizes(), ", the inputs ", x0.sizes());
  TORCH_CHECK(grad.is_contiguous(s.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous), op,
              ": grad must be ", s.cl ? "channels-last" : "NCHW", " contiguous like the inputs (strides ",
              grad.strides(), ")");
  const c10::cuda::CUDAGuard guard(x0.device());
  std::vector<at::Tensor> dinputs;
  for (const auto& x : inputs) dinputs.push_back(at::empty_like(x));
  const at::Tensor weight = weight_.contiguous(), bias = bias_.contiguous();
  if (s.total == 0) return {dinputs, at::zeros_like(weight), at::zeros_like(bias)};
  const at::Tensor mean = mean_.contiguous(), var = var_.contiguous();
  const at::Tensor scale = at::empty({s.K, s.C}, weight.options());
  at::Tensor dweight = at::empty({s.K, s.C}, weight.options()), dbias = at::empty({s.K, s.C}, weight.options());
  at::Tensor mean_ds, proj;
  if (training) {
    mean_ds = at::empty({s.C}, weight.options());
    proj = at::empty({s.K, s.C}, weight.options());
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "rep_bn_add_silu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    PROVG_DISPATCH_BRANCHES(s.K, K, [&] {
      const at::Tensor sums = channel_sums<scalar_t, K, true>(s, inputs, &grad, &mean, &var, &weight, &bias, eps);
      backward_stats_kernel<acc_t, K><<<channel_blocks(s.C), kThreads, 0, stream>>>(
          sums.const_data_ptr<acc_t>(), weight.const_data_ptr<acc_t>(), var.const_data_ptr<acc_t>(),
          scale.data_ptr<acc_t>(), dweight.data_ptr<acc_t>(), dbias.data_ptr<acc_t>(),
          training ? mean_ds.data_ptr<acc_t>() : nullptr, training ? proj.data_ptr<acc_t>() : nullptr, s.C,
          static_cast<acc_t>(s.n), static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      backward_apply<scalar_t, K>(s, grad, inputs, dinputs, mean, scale, bias, training ? &mean_ds : nullptr,
                                  training ? &proj : nullptr);
    });
  });
  return {dinputs, dweight, dbias};
}

TORCH_LIBRARY_IMPL(provg, CUDA, m) {
  m.impl("rep_bn_add_silu_forward", &rep_bn_add_silu_forward_cuda);
  m.impl("rep_bn_add_silu_backward", &rep_bn_add_silu_backward_cuda);
}

}  // namespace provg
