// CUDA kernels of provg::survey_gate_{forward,backward} (Eq. 1–2).
//
// Forward: one warp per (position, head); lanes split the head's channels, the scores over the N ≤ 64
// context tokens are warp sums kept in registers, and each lane writes its channels of y. x and q are
// read once, y written once.
// Backward: (1) a warp per (position, head) recomputes the attention, writes dx and dq, and stores the
// attention weights W and score gradients dS (P × N, small); (2) a thread per channel walks blocks of
// positions to accumulate the dk and dv partial sums (no atomics), which are then summed in order.
#include <torch/library.h>

#include "../gates.h"
#include "gate_common.cuh"

namespace provg {
namespace {

using namespace cuda;

template <typename scalar_t, typename acc_t, int MAX_N>
__global__ void survey_forward_kernel(const scalar_t* __restrict__ x,  // (B, P, C)
                                      const scalar_t* __restrict__ q,  // (B, P, C)
                                      const scalar_t* __restrict__ k,  // (B, N, C)
                                      const scalar_t* __restrict__ v,  // (B, N, C)
                                      const bool* __restrict__ mask,   // (B, N)
                                      scalar_t* __restrict__ y,        // (B, P, C)
                                      int64_t B, int64_t P, int64_t C, int N, int H, int D, acc_t scale) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= B * H * P) return;
  const int64_t p = warp % P, bh = warp / P, b = bh / H;
  const int h = static_cast<int>(bh % H);
  const int64_t row = (b * P + p) * C + static_cast<int64_t>(h) * D;
  const scalar_t* keys = k + b * N * C + static_cast<int64_t>(h) * D;
  const scalar_t* values = v + b * N * C + static_cast<int64_t>(h) * D;
  const bool* valid = mask + b * N;
  acc_t w[MAX_N];
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    acc_t partial = acc_t(0);
    if (n < N)
      for (int c = lane; c < D; c += kWarp)
        partial += static_cast<acc_t>(q[row + c]) * static_cast<acc_t>(keys[static_cast<int64_t>(n) * C + c]);
    w[n] = warp_sum(partial) * scale;
  }
  masked_softmax<acc_t, MAX_N>(w, valid, N);
  for (int c = lane; c < D; c += kWarp) {
    acc_t attention = acc_t(0);
#pragma unroll
    for (int n = 0; n < MAX_N; ++n)
      if (n < N) attention += w[n] * static_cast<acc_t>(values[static_cast<int64_t>(n) * C + c]);
    y[row + c] = static_cast<scalar_t>(static_cast<acc_t>(x[row + c]) * sigmoid(attention));
  }
}

template <typename scalar_t, typename acc_t, int MAX_N>
__global__ void survey_backward_rows_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                            const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                            const scalar_t* __restrict__ v, const bool* __restrict__ mask,
                                            scalar_t* __restrict__ dx, scalar_t* __restrict__ dq,
                                            acc_t* __restrict__ weights,   // (B, H, P, N) out
                                            acc_t* __restrict__ dscores,   // (B, H, P, N) out, scaled
                                            int64_t B, int64_t P, int64_t C, int N, int H, int D, acc_t scale) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= B * H * P) return;
  const int64_t p = warp % P, bh = warp / P, b = bh / H;
  const int h = static_cast<int>(bh % H);
  const int64_t row = (b * P + p) * C + static_cast<int64_t>(h) * D;
  const scalar_t* keys = k + b * N * C + static_cast<int64_t>(h) * D;
  const scalar_t* values = v + b * N * C + static_cast<int64_t>(h) * D;
  const bool* valid = mask + b * N;
  acc_t w[MAX_N], dw[MAX_N];
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    acc_t partial = acc_t(0);
    if (n < N)
      for (int c = lane; c < D; c += kWarp)
        partial += static_cast<acc_t>(q[row + c]) * static_cast<acc_t>(keys[static_cast<int64_t>(n) * C + c]);
    w[n] = warp_sum(partial) * scale;
    dw[n] = acc_t(0);
  }
  masked_softmax<acc_t, MAX_N>(w, valid, N);
  for (int c = lane; c < D; c += kWarp) {
    acc_t attention = acc_t(0);
#pragma unroll
    for (int n = 0; n < MAX_N; ++n)
      if (n < N) attention += w[n] * static_cast<acc_t>(values[static_cast<int64_t>(n) * C + c]);
    const acc_t g = sigmoid(attention);
    const acc_t upstream = static_cast<acc_t>(grad[row + c]);
    dx[row + c] = static_cast<scalar_t>(upstream * g);
    const acc_t dattention = upstream * static_cast<acc_t>(x[row + c]) * g * (acc_t(1) - g);
#pragma unroll
    for (int n = 0; n < MAX_N; ++n)
      if (n < N) dw[n] += dattention * static_cast<acc_t>(values[static_cast<int64_t>(n) * C + c]);
  }
  acc_t dot = acc_t(0);
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    dw[n] = warp_sum(dw[n]);
    dot += w[n] * dw[n];
  }
  const int64_t small = warp * N;  // (b, h, p) row of the (B, H, P, N) buffers
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    dw[n] = w[n] * (dw[n] - dot) * scale;  // now the scaled score gradient
    if (n < N && lane == 0) {
      weights[small + n] = w[n];
      dscores[small + n] = dw[n];
    }
  }
  for (int c = lane; c < D; c += kWarp) {
    acc_t total = acc_t(0);
#pragma unroll
    for (int n = 0; n < MAX_N; ++n)
      if (n < N) total += dw[n] * static_cast<acc_t>(keys[static_cast<int64_t>(n) * C + c]);
    dq[row + c] = static_cast<scalar_t>(total);
  }
}

// dv[n, c] = Σ_p W[p, n] · dA[p, c] and dk[n, c] = Σ_p dS[p, n] · q[p, c] over one chunk of positions.
template <typename scalar_t, typename acc_t, int MAX_N>
__global__ void survey_backward_columns_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                               const scalar_t* __restrict__ q, const scalar_t* __restrict__ v,
                                               const acc_t* __restrict__ weights, const acc_t* __restrict__ dscores,
                                               acc_t* __restrict__ dk_part,  // (B, chunks, N, C)
                                               acc_t* __restrict__ dv_part,  // (B, chunks, N, C)
                                               int64_t P, int64_t C, int N, int H, int D, int64_t chunks) {
  const int64_t cc = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // channel in head
  const int64_t chunk = blockIdx.y;
  const int64_t bh = blockIdx.z, b = bh / H;
  const int h = static_cast<int>(bh % H);
  if (cc >= D) return;
  const int64_t c = static_cast<int64_t>(h) * D + cc;
  acc_t values[MAX_N], dk[MAX_N], dv[MAX_N];
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    values[n] = n < N ? static_cast<acc_t>(v[(b * N + n) * C + c]) : acc_t(0);
    dk[n] = dv[n] = acc_t(0);
  }
  const int64_t first = chunk * kChunk, last = min(P, first + kChunk);
  for (int64_t p = first; p < last; ++p) {
    const acc_t* w = weights + (bh * P + p) * N;
    const acc_t* ds = dscores + (bh * P + p) * N;
    acc_t attention = acc_t(0);
#pragma unroll
    for (int n = 0; n < MAX_N; ++n)
      if (n < N) attention += w[n] * values[n];
    const int64_t i = (b * P + p) * C + c;
    const acc_t g = sigmoid(attention);
    const acc_t dattention = static_cast<acc_t>(grad[i]) * static_cast<acc_t>(x[i]) * g * (acc_t(1) - g);
    const acc_t query = static_cast<acc_t>(q[i]);
#pragma unroll
    for (int n = 0; n < MAX_N; ++n)
      if (n < N) {
        dv[n] += w[n] * dattention;
        dk[n] += ds[n] * query;
      }
  }
#pragma unroll
  for (int n = 0; n < MAX_N; ++n)
    if (n < N) {
      const int64_t o = ((b * chunks + chunk) * N + n) * C + c;
      dk_part[o] = dk[n];
      dv_part[o] = dv[n];
    }
}

void check(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
           int64_t heads) {
  TORCH_CHECK(x.is_cuda() && q.is_cuda() && k.is_cuda() && v.is_cuda() && mask.is_cuda(),
              "survey_gate_cuda: all inputs must be CUDA tensors");
  TORCH_CHECK(x.dim() == 3 && q.sizes() == x.sizes() && k.dim() == 3 && v.sizes() == k.sizes(),
              "survey_gate_cuda: x, q (B, P, C) and k, v (B, N, C) expected");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(1) == k.size(1),
              "survey_gate_cuda: key_mask must be bool (B, N)");
  TORCH_CHECK(k.size(1) <= 64, "survey_gate_cuda: at most 64 language tokens, got ", k.size(1));
  TORCH_CHECK(heads >= 1 && x.size(2) % heads == 0, "survey_gate_cuda: channels not divisible by heads");
}

}  // namespace

at::Tensor survey_gate_forward_cuda(const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& k_,
                                    const at::Tensor& v_, const at::Tensor& mask_, int64_t heads) {
  check(x_, q_, k_, v_, mask_, heads);
  const c10::cuda::CUDAGuard guard(x_.device());
  auto x = x_.contiguous(), q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous(), mask = mask_.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t B = x.size(0), P = x.size(1), C = x.size(2);
  const int N = static_cast<int>(k.size(1)), H = static_cast<int>(heads), D = static_cast<int>(C / heads);
  if (y.numel() == 0) return y;
  const int64_t blocks = warp_blocks(B * H * P);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "survey_gate_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = acc_t(1) / std::sqrt(acc_t(D));
    PROVG_DISPATCH_KEYS(N, [&] {
      survey_forward_kernel<scalar_t, acc_t, MAX_N><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
          v.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), y.data_ptr<scalar_t>(), B, P, C, N, H, D, scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> survey_gate_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& mask_, int64_t heads) {
  check(x_, q_, k_, v_, mask_, heads);
  const c10::cuda::CUDAGuard guard(x_.device());
  auto grad = grad_.contiguous().to(x_.scalar_type()), x = x_.contiguous(), q = q_.contiguous();
  auto k = k_.contiguous(), v = v_.contiguous(), mask = mask_.contiguous();
  const int64_t B = x.size(0), P = x.size(1), C = x.size(2);
  const int N = static_cast<int>(k.size(1)), H = static_cast<int>(heads), D = static_cast<int>(C / heads);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dx = at::empty_like(x), dq = at::empty_like(q);
  const int64_t chunks = std::max<int64_t>(1, (P + kChunk - 1) / kChunk);
  at::Tensor dk_part = at::zeros({B, chunks, N, C}, x.options().dtype(acc_type));
  at::Tensor dv_part = at::zeros({B, chunks, N, C}, x.options().dtype(acc_type));
  if (x.numel() > 0) {
    at::Tensor weights = at::empty({B, H, P, N}, x.options().dtype(acc_type));
    at::Tensor dscores = at::empty({B, H, P, N}, x.options().dtype(acc_type));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "survey_gate_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const acc_t scale = acc_t(1) / std::sqrt(acc_t(D));
      PROVG_DISPATCH_KEYS(N, [&] {
        survey_backward_rows_kernel<scalar_t, acc_t, MAX_N><<<warp_blocks(B * H * P), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
            k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(),
            dx.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(), weights.data_ptr<acc_t>(), dscores.data_ptr<acc_t>(),
            B, P, C, N, H, D, scale);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const dim3 grid((D + 127) / 128, chunks, B * H);
        survey_backward_columns_kernel<scalar_t, acc_t, MAX_N><<<grid, 128, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
            v.const_data_ptr<scalar_t>(), weights.const_data_ptr<acc_t>(), dscores.const_data_ptr<acc_t>(),
            dk_part.data_ptr<acc_t>(), dv_part.data_ptr<acc_t>(), P, C, N, H, D, chunks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {dx, dq, dk_part.sum(1).to(k.scalar_type()), dv_part.sum(1).to(v.scalar_type())};
}

TORCH_LIBRARY_IMPL(provg, CUDA, m) {
  m.impl("survey_gate_forward", &survey_gate_forward_cuda);
  m.impl("survey_gate_backward", &survey_gate_backward_cuda);
}

}  // namespace provg
