// Shared pieces of the CUDA gate kernels: warp reductions, the masked softmax over at most MAX_N keys
// held in registers, and a column reduction over blocks of positions (per-block partials: no atomics,
// deterministic).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace provg {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int64_t kChunk = 256;  // positions per column-reduction block

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <typename T>
__device__ __forceinline__ T sigmoid(T a) {
  return T(1) / (T(1) + exp(-a));
}

// In place: scores[0..n) → softmax over valid keys; all zero when none is valid.
template <typename T, int MAX_N>
__device__ __forceinline__ void masked_softmax(T (&s)[MAX_N], const bool* valid, int n) {
  T top = -INFINITY;
#pragma unroll
  for (int i = 0; i < MAX_N; ++i)
    if (i < n && valid[i] && s[i] > top) top = s[i];
  const bool any = top != -INFINITY;
  T total = T(0);
#pragma unroll
  for (int i = 0; i < MAX_N; ++i) {
    s[i] = (i < n && valid[i] && any) ? exp(s[i] - top) : T(0);
    total += s[i];
  }
  const T inverse = total > T(0) ? T(1) / total : T(0);
#pragma unroll
  for (int i = 0; i < MAX_N; ++i) s[i] *= inverse;
}

// The attention of one scalar query over at most MAX_N keys (locate: a query per position, verify: a
// query per channel): fills the weights w and returns the gate σ(Σ_n w_n·v_n).
template <typename scalar_t, typename acc_t, int MAX_N>
__device__ __forceinline__ acc_t scalar_query_gate(acc_t query, const scalar_t* keys, const scalar_t* values,
                                                   const bool* valid, int N, acc_t (&w)[MAX_N]) {
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) w[n] = n < N ? query * static_cast<acc_t>(keys[n]) : acc_t(0);
  masked_softmax<acc_t, MAX_N>(w, valid, N);
  acc_t attention = acc_t(0);
#pragma unroll
  for (int n = 0; n < MAX_N; ++n)
    if (n < N) attention += w[n] * static_cast<acc_t>(values[n]);
  return sigmoid(attention);
}

// Its backward, given dattention (the loss's derivative by the attention, before the sigmoid): returns
// the query's derivative, and writes the terms ds_n·query and w_n·dattention, whose sums over queries are
// dk and dv, to dk_terms and dv_terms (N each) unless they are null.
template <typename scalar_t, typename acc_t, int MAX_N>
__device__ __forceinline__ acc_t scalar_query_gate_backward(acc_t query, acc_t dattention, const scalar_t* keys,
                                                            const scalar_t* values, const acc_t (&w)[MAX_N], int N,
                                                            acc_t* dk_terms, acc_t* dv_terms) {
  acc_t dot = acc_t(0);
#pragma unroll
  for (int n = 0; n < MAX_N; ++n)
    if (n < N) dot += w[n] * dattention * static_cast<acc_t>(values[n]);
  acc_t dquery = acc_t(0);
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    if (n >= N) continue;
    const acc_t ds = w[n] * (dattention * static_cast<acc_t>(values[n]) - dot);
    dquery += ds * static_cast<acc_t>(keys[n]);
    if (dk_terms) {
      dk_terms[n] = ds * query;
      dv_terms[n] = w[n] * dattention;
    }
  }
  return dquery;
}

// out[b, chunk, c] = Σ_{p in chunk} weight[b, p] · a[b, p, c] · factor[b, p, c] (weight, factor optional) and,
// when plain_out is given, plain_out[b, chunk, c] = Σ_{p in chunk} a[b, p, c] from the same read. A block is
// blockDim.x channels by blockDim.y rows of positions (rows interleaved), summed through shared memory in a
// fixed order: at C = 128, one row of 256 threads left half of them idle.
template <typename scalar_t, typename acc_t>
__global__ void column_sums_kernel(const scalar_t* __restrict__ a,       // (B, P, C)
                                   const scalar_t* __restrict__ factor,  // (B, P, C) or null
                                   const acc_t* __restrict__ weight,     // (B, P) or null
                                   acc_t* __restrict__ out,              // (B, chunks, C)
                                   acc_t* __restrict__ plain_out,        // (B, chunks, C) or null
                                   int64_t P, int64_t C, int64_t chunks) {
  __shared__ acc_t shared[2][kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t first = chunk * kChunk;
  const int64_t last = min(P, first + kChunk);
  acc_t acc = acc_t(0), plain = acc_t(0);
  if (c < C) {
    for (int64_t p = first + threadIdx.y; p < last; p += blockDim.y) {
      const int64_t i = (b * P + p) * C + c;
      const acc_t value = static_cast<acc_t>(a[i]);
      plain += value;
      acc_t term = value;
      if (factor) term *= static_cast<acc_t>(factor[i]);
      if (weight) term *= weight[b * P + p];
      acc += term;
    }
  }
  const int slot = threadIdx.y * blockDim.x + threadIdx.x;
  shared[0][slot] = acc;
  shared[1][slot] = plain;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  for (int row = 1; row < static_cast<int>(blockDim.y); ++row) {
    acc += shared[0][row * blockDim.x + threadIdx.x];
    plain += shared[1][row * blockDim.x + threadIdx.x];
  }
  out[(b * chunks + chunk) * C + c] = acc;
  if (plain_out) plain_out[(b * chunks + chunk) * C + c] = plain;
}

// (B, P, C) tensors a (and factor) → Σ over positions of a · factor · weight, (B, C) in the accumulation
// dtype; with ``plain``, Σ a as well, into *plain, from the same read of a.
inline at::Tensor column_sums(const at::Tensor& a, const at::Tensor* factor, const at::Tensor* weight,
                              at::Tensor* plain = nullptr) {
  const int64_t B = a.size(0), P = a.size(1), C = a.size(2);
  const int64_t chunks = std::max<int64_t>(1, (P + kChunk - 1) / kChunk);
  const auto acc_type = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Every partial is written when the kernel runs; with nothing to sum they must be zeros.
  const auto allocate = [&](int64_t batch) {
    const auto options = a.options().dtype(acc_type);
    return a.numel() == 0 ? at::zeros({batch, chunks, C}, options) : at::empty({batch, chunks, C}, options);
  };
  at::Tensor partial = allocate(B), plain_partial = allocate(plain ? B : 0);
  if (a.numel() > 0) {
    const int lanes = static_cast<int>(std::min<int64_t>(kThreads, (C + kWarp - 1) / kWarp * kWarp));
    const dim3 block(lanes, kThreads / lanes);
    const dim3 grid(static_cast<unsigned>((C + lanes - 1) / lanes), static_cast<unsigned>(chunks),
                    static_cast<unsigned>(B));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "column_sums", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      column_sums_kernel<scalar_t, acc_t><<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
          a.const_data_ptr<scalar_t>(), factor ? factor->const_data_ptr<scalar_t>() : nullptr,
          weight ? weight->const_data_ptr<acc_t>() : nullptr, partial.data_ptr<acc_t>(),
          plain ? plain_partial.data_ptr<acc_t>() : nullptr, P, C, chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (plain) *plain = plain_partial.sum(1);
  return partial.sum(1);
}

inline int64_t warp_blocks(int64_t warps) {
  const int64_t per_block = kThreads / kWarp;
  return (warps + per_block - 1) / per_block;
}

}  // namespace cuda
}  // namespace provg

// Runs the lambda with `constexpr int MAX_N` = 16, 32 or 64, the smallest register array of scores
// that holds N language tokens (the gates accept at most 64).
#define PROVG_DISPATCH_KEYS(N, ...) \
  if ((N) <= 16) {                  \
    constexpr int MAX_N = 16;       \
    __VA_ARGS__();                  \
  } else if ((N) <= 32) {           \
    constexpr int MAX_N = 32;       \
    __VA_ARGS__();                  \
  } else {                          \
    constexpr int MAX_N = 64;       \
    __VA_ARGS__();                  \
  }
