// Shared pieces of the CUDA gate kernels: warp reductions, the masked softmax over at most MAX_N keys
// held in registers, 16-byte packs, the current device's attributes, and a column reduction over blocks of
// positions (per-block partials: no atomics, deterministic).
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
#include <initializer_list>
#include <type_traits>

namespace provg {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kRowsPerThread = 8;  // positions each thread of a column reduction sums (at least)
constexpr int kVectorBytes = 16;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

// An attribute of the current device (the ops' CUDAGuard makes it the inputs' device).
inline int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// Multiprocessors of the current device (sizes the grids).
inline int64_t multiprocessors() { return device_attribute(cudaDevAttrMultiProcessorCount); }

// Whether rows of C elements in the given contiguous tensors (the first one not null, all of one dtype) can
// be read and written in 16-byte packs: C a multiple of the pack, and every base address aligned (a view with an
// offset may not be).
inline bool packed_rows(int64_t C, std::initializer_list<const at::Tensor*> tensors) {
  const at::Tensor& first = **tensors.begin();
  if (C % (kVectorBytes / first.element_size()) != 0) return false;
  for (const at::Tensor* t : tensors)
    if (t != nullptr && !aligned(t->const_data_ptr())) return false;
  return true;
}

// Calls f(std::integral_constant<int, VEC>{}): VEC elements of scalar_t per 16-byte pack when ``packed``, else 1.
template <typename scalar_t, typename F>
inline void with_vector_width(bool packed, const F& f) {
  if (packed) return f(std::integral_constant<int, kVectorBytes / static_cast<int>(sizeof(scalar_t))>());
  f(std::integral_constant<int, 1>());
}

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
// when plain_out is given, plain_out[b, chunk, c] = Σ_{p in chunk} a[b, p, c] from the same read. A thread
// owns VEC adjacent channels (16-byte loads where the rows allow them, `packed_rows`); a block is
// blockDim.x such packs by blockDim.y rows of positions (rows interleaved, several loads in flight per
// thread), summed through shared memory in a fixed order. A block sums at least kRowsPerThread rows per
// thread, so that the small stages spread over the multiprocessors: with 256 positions per block and one
// 4-byte load at a time, stage 4 (P = 225, C = 1024, B = 8) ran as 32 blocks of 225 rows each.
template <typename scalar_t, typename acc_t, int VEC>
__global__ void column_sums_kernel(const scalar_t* __restrict__ a,       // (B, P, C)
                                   const scalar_t* __restrict__ factor,  // (B, P, C) or null
                                   const acc_t* __restrict__ weight,     // (B, P) or null
                                   acc_t* __restrict__ out,              // (B, chunks, C)
                                   acc_t* __restrict__ plain_out,        // (B, chunks, C) or null
                                   int64_t P, int64_t C, int64_t chunk, int64_t chunks) {
  using Vector = Pack<scalar_t, VEC>;
  __shared__ acc_t shared[2][kThreads * VEC];
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  const int64_t b = blockIdx.z;
  const int64_t first = blockIdx.y * chunk;
  const int64_t last = min(P, first + chunk);
  acc_t acc[VEC], plain[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc[j] = plain[j] = acc_t(0);
  if (c < C) {
#pragma unroll 4
    for (int64_t p = first + threadIdx.y; p < last; p += blockDim.y) {
      const int64_t i = (b * P + p) * C + c;
      const Vector values = *reinterpret_cast<const Vector*>(a + i);
      Vector factors;
      if (factor) factors = *reinterpret_cast<const Vector*>(factor + i);
      const acc_t scale = weight ? weight[b * P + p] : acc_t(1);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const acc_t value = static_cast<acc_t>(values.v[j]);
        plain[j] += value;
        acc_t term = value;
        if (factor) term *= static_cast<acc_t>(factors.v[j]);
        if (weight) term *= scale;
        acc[j] += term;
      }
    }
  }
  const int slot = (threadIdx.y * blockDim.x + threadIdx.x) * VEC;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    shared[0][slot + j] = acc[j];
    shared[1][slot + j] = plain[j];
  }
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  for (int row = 1; row < static_cast<int>(blockDim.y); ++row) {
    const int other = (row * blockDim.x + threadIdx.x) * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc[j] += shared[0][other + j];
      plain[j] += shared[1][other + j];
    }
  }
  const int64_t o = (b * chunks + blockIdx.y) * C + c;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    out[o + j] = acc[j];
    if (plain_out) plain_out[o + j] = plain[j];
  }
}

// (B, P, C) tensors a (and factor) → Σ over positions of a · factor · weight, (B, C) in the accumulation
// dtype; with ``plain``, Σ a as well, into *plain, from the same read of a.
inline at::Tensor column_sums(const at::Tensor& a, const at::Tensor* factor, const at::Tensor* weight,
                              at::Tensor* plain = nullptr) {
  const int64_t B = a.size(0), P = a.size(1), C = a.size(2);
  TORCH_CHECK(B <= 65535, "column_sums: at most 65535 batch items, got ", B);
  // Packs of channels per load, a block's shape, and the positions a block sums (a chunk).
  const bool packed = packed_rows(C, {&a, factor});
  const int64_t packs = packed ? C / (kVectorBytes / a.element_size()) : C;
  const int lanes = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(packs, kWarp) * kWarp));
  const dim3 block(lanes, kThreads / lanes);
  const int64_t chunk = std::max<int64_t>(kRowsPerThread * block.y, ceil_div(P, 65535));
  const int64_t chunks = std::max<int64_t>(1, ceil_div(P, chunk));
  const auto acc_type = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Every partial is written when the kernel runs; with nothing to sum they must be zeros.
  const auto allocate = [&](int64_t batch) {
    const auto options = a.options().dtype(acc_type);
    return a.numel() == 0 ? at::zeros({batch, chunks, C}, options) : at::empty({batch, chunks, C}, options);
  };
  at::Tensor partial = allocate(B), plain_partial = allocate(plain ? B : 0);
  if (a.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "column_sums", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_vector_width<scalar_t>(packed, [&](auto width) {
        constexpr int VEC = decltype(width)::value;
        const dim3 grid(static_cast<unsigned>(ceil_div(packs, lanes)), static_cast<unsigned>(chunks),
                        static_cast<unsigned>(B));
        column_sums_kernel<scalar_t, acc_t, VEC><<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
            a.const_data_ptr<scalar_t>(), factor ? factor->const_data_ptr<scalar_t>() : nullptr,
            weight ? weight->const_data_ptr<acc_t>() : nullptr, partial.data_ptr<acc_t>(),
            plain ? plain_partial.data_ptr<acc_t>() : nullptr, P, C, chunk, chunks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
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
