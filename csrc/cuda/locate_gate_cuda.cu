// CUDA kernels of provg::locate_gate_{forward,backward} (Eq. 3–4). One warp per position: lanes split
// the channels for the scalar query x·w + b (a warp sum), and split the N ≤ 64 spatial tokens for the
// attention (lane j holds tokens j and j + 32, the softmax's maximum and sum are warp reductions), so no
// lane walks all N keys; each lane writes its channels. The backward also writes, per position, the
// score gradient terms for k and v (each lane its tokens') and the query gradient; their sums over
// positions (and dw = Σ_p dq·x, a column reduction) follow without atomics.
#include <torch/library.h>

#include "../gates.h"
#include "gate_common.cuh"

namespace provg {
namespace {

using namespace cuda;

constexpr int kKeysPerLane = 2;  // N ≤ 64 tokens over a warp

template <typename T>
__device__ __forceinline__ T warp_max(T value) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    value = max(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// The attention of one scalar query over the N keys of a batch item, spread over the warp (lane j holds
// keys j and j + 32): the lane's keys, values and softmax weights (0 for masked or missing keys; all 0
// when no key is valid), and the attention Σ_n w_n·v_n, the same in every lane.
template <typename scalar_t, typename acc_t>
struct SpreadAttention {
  acc_t key[kKeysPerLane], value[kKeysPerLane], weight[kKeysPerLane], attention;

  __device__ __forceinline__ SpreadAttention(acc_t query, const scalar_t* __restrict__ keys,
                                             const scalar_t* __restrict__ values, const bool* __restrict__ valid,
                                             int N, int lane) {
    bool ok[kKeysPerLane];
    acc_t top = -INFINITY;
#pragma unroll
    for (int j = 0; j < kKeysPerLane; ++j) {
      const int n = lane + j * kWarp;
      key[j] = n < N ? static_cast<acc_t>(keys[n]) : acc_t(0);
      value[j] = n < N ? static_cast<acc_t>(values[n]) : acc_t(0);
      ok[j] = n < N && valid[n];
      if (ok[j]) top = max(top, query * key[j]);
    }
    top = warp_max(top);
    acc_t total = acc_t(0);
#pragma unroll
    for (int j = 0; j < kKeysPerLane; ++j) {
      weight[j] = ok[j] ? exp(query * key[j] - top) : acc_t(0);
      total += weight[j];
    }
    total = warp_sum(total);
    const acc_t inverse = total > acc_t(0) ? acc_t(1) / total : acc_t(0);
    acc_t part = acc_t(0);
#pragma unroll
    for (int j = 0; j < kKeysPerLane; ++j) {
      weight[j] *= inverse;
      part += weight[j] * value[j];
    }
    attention = warp_sum(part);
  }
};

template <typename scalar_t, typename acc_t>
__global__ void locate_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ wvec,
                                      const scalar_t* __restrict__ bias, const scalar_t* __restrict__ k,
                                      const scalar_t* __restrict__ v, const bool* __restrict__ mask,
                                      scalar_t* __restrict__ y, int64_t B, int64_t P, int64_t C, int N) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= B * P) return;
  const int64_t b = warp / P, row = warp * C;
  acc_t partial = acc_t(0);
  for (int64_t c = lane; c < C; c += kWarp) partial += static_cast<acc_t>(x[row + c]) * static_cast<acc_t>(wvec[c]);
  const acc_t query = warp_sum(partial) + static_cast<acc_t>(bias[0]);
  const SpreadAttention<scalar_t, acc_t> a(query, k + b * N, v + b * N, mask + b * N, N, lane);
  const acc_t g = sigmoid(a.attention);
  for (int64_t c = lane; c < C; c += kWarp) y[row + c] = static_cast<scalar_t>(static_cast<acc_t>(x[row + c]) * g);
}

template <typename scalar_t, typename acc_t>
__global__ void locate_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                       const scalar_t* __restrict__ wvec, const scalar_t* __restrict__ bias,
                                       const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                       const bool* __restrict__ mask, scalar_t* __restrict__ dx,
                                       acc_t* __restrict__ dquery_out,  // (B, P)
                                       acc_t* __restrict__ dk_terms,    // (B, P, N)
                                       acc_t* __restrict__ dv_terms,    // (B, P, N)
                                       int64_t B, int64_t P, int64_t C, int N) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= B * P) return;
  const int64_t b = warp / P, row = warp * C;
  acc_t query_part = acc_t(0), product_part = acc_t(0);
  for (int64_t c = lane; c < C; c += kWarp) {
    const acc_t xv = static_cast<acc_t>(x[row + c]);
    query_part += xv * static_cast<acc_t>(wvec[c]);
    product_part += xv * static_cast<acc_t>(grad[row + c]);
  }
  const acc_t query = warp_sum(query_part) + static_cast<acc_t>(bias[0]);
  const acc_t product = warp_sum(product_part);
  const SpreadAttention<scalar_t, acc_t> a(query, k + b * N, v + b * N, mask + b * N, N, lane);
  const acc_t g = sigmoid(a.attention);
  const acc_t dattention = product * g * (acc_t(1) - g);
  // ds_n = w_n·(dattention·v_n − Σ_m w_m·dattention·v_m), and Σ_m w_m·v_m is the attention.
  acc_t dquery_part = acc_t(0);
#pragma unroll
  for (int j = 0; j < kKeysPerLane; ++j) {
    const int n = lane + j * kWarp;
    const acc_t ds = a.weight[j] * dattention * (a.value[j] - a.attention);
    dquery_part += ds * a.key[j];
    if (n < N) {
      dk_terms[warp * N + n] = ds * query;
      dv_terms[warp * N + n] = a.weight[j] * dattention;
    }
  }
  const acc_t dquery = warp_sum(dquery_part);
  if (lane == 0) dquery_out[warp] = dquery;
  for (int64_t c = lane; c < C; c += kWarp)
    dx[row + c] = static_cast<scalar_t>(static_cast<acc_t>(grad[row + c]) * g + dquery * static_cast<acc_t>(wvec[c]));
}

void check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& k, const at::Tensor& v,
           const at::Tensor& mask) {
  TORCH_CHECK(x.is_cuda() && w.is_cuda() && b.is_cuda() && k.is_cuda() && v.is_cuda() && mask.is_cuda(),
              "locate_gate_cuda: all inputs must be CUDA tensors");
  TORCH_CHECK(x.dim() == 3 && w.dim() == 1 && w.size(0) == x.size(2) && b.numel() == 1 && k.dim() == 2 &&
                  v.sizes() == k.sizes(),
              "locate_gate_cuda: x (B, P, C), w (C,), b scalar, k, v (B, N) expected");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(1) == k.size(1),
              "locate_gate_cuda: key_mask must be bool (B, N)");
  TORCH_CHECK(k.size(1) <= 64, "locate_gate_cuda: at most 64 language tokens, got ", k.size(1));
}

}  // namespace

at::Tensor locate_gate_forward_cuda(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& b_,
                                    const at::Tensor& k_, const at::Tensor& v_, const at::Tensor& mask_) {
  check(x_, w_, b_, k_, v_, mask_);
  const c10::cuda::CUDAGuard guard(x_.device());
  auto x = x_.contiguous(), w = w_.contiguous(), b = b_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  auto mask = mask_.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t B = x.size(0), P = x.size(1), C = x.size(2);
  const int N = static_cast<int>(k.size(1));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "locate_gate_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    locate_forward_kernel<scalar_t, acc_t><<<warp_blocks(B * P), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(),
        y.data_ptr<scalar_t>(), B, P, C, N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> locate_gate_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& b_, const at::Tensor& k_,
    const at::Tensor& v_, const at::Tensor& mask_) {
  check(x_, w_, b_, k_, v_, mask_);
  const c10::cuda::CUDAGuard guard(x_.device());
  auto grad = grad_.contiguous().to(x_.scalar_type()), x = x_.contiguous(), w = w_.contiguous();
  auto b = b_.contiguous(), k = k_.contiguous(), v = v_.contiguous(), mask = mask_.contiguous();
  const int64_t B = x.size(0), P = x.size(1), C = x.size(2);
  const int N = static_cast<int>(k.size(1));
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dx = at::empty_like(x);
  // The kernel writes every element of the terms; with no channels (or positions) it does not run.
  const bool runs = x.numel() > 0;
  const auto terms = x.options().dtype(acc_type);
  at::Tensor dquery = runs ? at::empty({B, P}, terms) : at::zeros({B, P}, terms);
  at::Tensor dk_terms = runs ? at::empty({B, P, N}, terms) : at::zeros({B, P, N}, terms);
  at::Tensor dv_terms = runs ? at::empty({B, P, N}, terms) : at::zeros({B, P, N}, terms);
  if (runs) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "locate_gate_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      locate_backward_kernel<scalar_t, acc_t><<<warp_blocks(B * P), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          b.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
          mask.const_data_ptr<bool>(), dx.data_ptr<scalar_t>(), dquery.data_ptr<acc_t>(),
          dk_terms.data_ptr<acc_t>(), dv_terms.data_ptr<acc_t>(), B, P, C, N);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor dw = column_sums(x, nullptr, &dquery).sum(0);  // Σ_{b,p} dquery · x
  return {dx, dw.to(w.scalar_type()), dquery.sum().reshape(b.sizes()).to(b.scalar_type()),
          dk_terms.sum(1).to(k.scalar_type()), dv_terms.sum(1).to(v.scalar_type())};
}

TORCH_LIBRARY_IMPL(provg, CUDA, m) {
  m.impl("locate_gate_forward", &locate_gate_forward_cuda);
  m.impl("locate_gate_backward", &locate_gate_backward_cuda);
}

}  // namespace provg
