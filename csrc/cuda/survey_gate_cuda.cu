// CUDA kernels of provg::survey_gate_{forward,backward} (Eq. 1–2).
//
// A block takes a tile of 32 positions of one (batch item, head). Lane i of each of its warps owns
// position i of the tile, and the warps split the head's channels into chunks of 32 (warp w takes chunks
// w, w + warps, ...). Each chunk of a (B, P, C) tensor passes through a padded shared-memory tile, with
// coalesced rows in and out; the chunk's keys or values pass through shared memory too, where every
// lane reads them at one address (a broadcast), four channels at a time. So a thread does its position's
// N·D multiply-adds at one shared load per four of them, and its position's N scores and weights stay
// in its registers, with no warp reduction per key (the former warp-per-position kernels spent one per
// key and position and ran instruction-bound, about 20× over their byte floor on an H200).
// Forward: the warps' partial scores are added through shared memory; each thread takes the softmax of
// its position, then gates its chunks. x and q are read once, y written once.
// Backward: the same scores and softmax (the weights then kept in shared memory, not registers: 239 → 145
// registers per thread at 17–32 keys, so 3 resident blocks per SM instead of 2, and no spill at 64 keys;
// benchmarks/cuda_resources.py), then (1) per chunk dx = grad·g and da = grad·x·g(1−g) through
// the tiles; the lane accumulates dW_n = Σ_c da_c·v_nc, and the warp, lane = channel, sums W·da over the
// tile's positions into dv; (2) after the score gradients dS, per chunk dq = dS·k and, lane = channel,
// dk = Σ_p dS·q. A block walks several tiles and keeps one dk and one dv partial row in global memory,
// which the partial rows' sum adds up in order afterwards (no atomics; deterministic).
#include <torch/library.h>

#include "../gates.h"
#include "gate_common.cuh"

namespace provg {
namespace {

using namespace cuda;

constexpr int kTile = 32;               // positions per tile: one per lane
constexpr int kChannels = 32;           // channels per chunk
constexpr int kStride = kChannels + 1;  // padded tile row: a lane per row hits 32 different banks

// Row stride of the backward's per-position arrays (32, MAX_N + 4): 16-byte aligned rows, read four
// keys at a time.
template <int MAX_N>
constexpr int by_position_stride() {
  return MAX_N + 4;
}

template <typename T>
struct Quad {
  T x, y, z, w;
};

// Four consecutive shared-memory values, 16-byte aligned: one vector load (two for double).
__device__ __forceinline__ Quad<float> load_quad(const float* p) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  return {v.x, v.y, v.z, v.w};
}

__device__ __forceinline__ Quad<double> load_quad(const double* p) {
  const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
  return {a.x, a.y, b.x, b.y};
}

template <typename acc_t>
__device__ __forceinline__ acc_t* shared_memory() {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return reinterpret_cast<acc_t*>(shared_bytes);
}

// Bytes of shared memory of a block: per warp a (MAX_N, 32) chunk of keys or values and `tiles` (32, 33)
// tiles; per block `rows` (32, MAX_N + 4) arrays of per-position values (the backward's W and dS; the dS
// array holds W by key, (MAX_N, 32), until dS is written).
template <typename acc_t, int MAX_N>
size_t shared_size(int warps, int tiles, int rows) {
  return sizeof(acc_t) * (static_cast<size_t>(warps) * (MAX_N * kChannels + tiles * kTile * kStride) +
                          static_cast<size_t>(rows) * kTile * by_position_stride<MAX_N>());
}

// tile[r][lane] = src[base + r·C + lane] for the tile's rows and the chunk's columns, 0 elsewhere.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_tile(acc_t* tile, const scalar_t* __restrict__ src, int64_t base, int64_t C,
                                          int rows, int cols, int lane) {
  for (int r = 0; r < kTile; ++r)
    tile[r * kStride + lane] = (r < rows && lane < cols) ? static_cast<acc_t>(src[base + r * C + lane]) : acc_t(0);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_tile(const acc_t* tile, scalar_t* __restrict__ dst, int64_t base, int64_t C,
                                           int rows, int cols, int lane) {
  if (lane >= cols) return;
  for (int r = 0; r < rows; ++r) dst[base + r * C + lane] = static_cast<scalar_t>(tile[r * kStride + lane]);
}

// chunk[n][lane] = src[base + n·C + lane] for the N keys (or values) and the chunk's columns, 0 elsewhere.
template <int MAX_N, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_keys(acc_t* chunk, const scalar_t* __restrict__ src, int64_t base, int64_t C,
                                          int N, int cols, int lane) {
  for (int n = 0; n < MAX_N; ++n)
    chunk[n * kChannels + lane] = (n < N && lane < cols) ? static_cast<acc_t>(src[base + n * C + lane]) : acc_t(0);
}

// s[n] = Σ_c row[c]·chunk[n][c] over the chunk, added to s: the lane's position against the N keys.
template <int MAX_N, typename acc_t>
__device__ __forceinline__ void add_row_products(acc_t (&s)[MAX_N], const acc_t* tile, const acc_t* chunk, int N,
                                                 int lane) {
  for (int c = 0; c < kChannels; c += 4) {
    const acc_t* row = tile + lane * kStride + c;
    const acc_t a0 = row[0], a1 = row[1], a2 = row[2], a3 = row[3];
#pragma unroll
    for (int n = 0; n < MAX_N; ++n)
      if (n < N) {
        const Quad<acc_t> k = load_quad(chunk + n * kChannels + c);
        s[n] += a0 * k.x + a1 * k.y + a2 * k.z + a3 * k.w;
      }
  }
}

// out[c] = Σ_n weight(n)·chunk[n][c] for four channels c0..c0+3 of the chunk; weight(n) reads the lane's n-th
// weight from registers or, in the backward, from shared memory.
template <int MAX_N, typename acc_t, typename Weight>
__device__ __forceinline__ Quad<acc_t> combine(const Weight& weight, const acc_t* chunk, int N, int c0) {
  Quad<acc_t> out{acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
#pragma unroll
  for (int n = 0; n < MAX_N; ++n)
    if (n < N) {
      const acc_t s = weight(n);
      const Quad<acc_t> v = load_quad(chunk + n * kChannels + c0);
      out.x += s * v.x;
      out.y += s * v.y;
      out.z += s * v.z;
      out.w += s * v.w;
    }
  return out;
}

// s ← the sum of every warp's s (each warp's partial over its chunks), through the warps' chunk buffers;
// every warp adds them in the same order, so all hold the same values.
template <int MAX_N, typename acc_t>
__device__ __forceinline__ void sum_over_warps(acc_t (&s)[MAX_N], acc_t* shared, int N, int warp, int warps,
                                               int lane) {
  __syncthreads();  // every warp is done with its chunk buffer
#pragma unroll
  for (int n = 0; n < MAX_N; ++n)
    if (n < N) shared[(warp * MAX_N + n) * kWarp + lane] = s[n];
  __syncthreads();
#pragma unroll
  for (int n = 0; n < MAX_N; ++n)
    if (n < N) {
      acc_t total = acc_t(0);
      for (int w = 0; w < warps; ++w) total += shared[(w * MAX_N + n) * kWarp + lane];
      s[n] = total;
    }
  __syncthreads();  // before the buffers hold chunks again
}

// The softmax weights of the lane's position over the N keys (Eq. 1): scores summed over every chunk of
// the head, scaled, masked. `tile` is the warp's scratch tile.
template <int MAX_N, typename scalar_t, typename acc_t>
__device__ __forceinline__ void attention_weights(acc_t (&w)[MAX_N], const scalar_t* __restrict__ q,
                                                  const scalar_t* __restrict__ k, const bool* __restrict__ valid,
                                                  acc_t* shared, acc_t* tile, int64_t row_base, int64_t key_base,
                                                  int64_t C, int D, int N, int rows, acc_t scale, int warp,
                                                  int warps, int lane) {
  acc_t* chunk = shared + warp * MAX_N * kChannels;
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) w[n] = acc_t(0);
  for (int c0 = warp * kChannels; c0 < D; c0 += warps * kChannels) {
    const int cols = min(kChannels, D - c0);
    load_tile(tile, q, row_base + c0, C, rows, cols, lane);
    load_keys<MAX_N>(chunk, k, key_base + c0, C, N, cols, lane);
    __syncwarp();
    add_row_products<MAX_N>(w, tile, chunk, N, lane);
    __syncwarp();
  }
  sum_over_warps<MAX_N>(w, shared, N, warp, warps, lane);
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) w[n] *= scale;
  masked_softmax<acc_t, MAX_N>(w, valid, N);
}

// out[n·C] (= or +=) Σ_p by_position[p][n]·tile[p][lane] for the N keys: the lane's column of dk or dv.
// Eight keys at a time: one tile load and two vector loads per eight multiply-adds.
template <int MAX_N, typename acc_t>
__device__ __forceinline__ void add_column_products(acc_t* __restrict__ out, const acc_t* by_position,
                                                    const acc_t* tile, int64_t C, int N, bool accumulate,
                                                    int lane) {
  constexpr int stride = by_position_stride<MAX_N>();
  for (int n0 = 0; n0 < N; n0 += 8) {
    acc_t total[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) total[j] = acc_t(0);
#pragma unroll 4
    for (int p = 0; p < kTile; ++p) {
      const acc_t t = tile[p * kStride + lane];
      const Quad<acc_t> lo = load_quad(by_position + p * stride + n0);
      const Quad<acc_t> hi = load_quad(by_position + p * stride + n0 + 4);
      total[0] += lo.x * t;
      total[1] += lo.y * t;
      total[2] += lo.z * t;
      total[3] += lo.w * t;
      total[4] += hi.x * t;
      total[5] += hi.y * t;
      total[6] += hi.z * t;
      total[7] += hi.w * t;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (n0 + j < N) {
        acc_t* o = out + (n0 + j) * C;
        *o = accumulate ? *o + total[j] : total[j];
      }
  }
}

template <typename scalar_t, typename acc_t, int MAX_N>
__global__ void survey_forward_kernel(const scalar_t* __restrict__ x,  // (B, P, C)
                                      const scalar_t* __restrict__ q,  // (B, P, C)
                                      const scalar_t* __restrict__ k,  // (B, N, C)
                                      const scalar_t* __restrict__ v,  // (B, N, C)
                                      const bool* __restrict__ mask,   // (B, N)
                                      scalar_t* __restrict__ y,        // (B, P, C)
                                      int64_t P, int64_t C, int N, int H, int D, acc_t scale) {
  acc_t* shared = shared_memory<acc_t>();
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTile, bh = blockIdx.y, b = bh / H;
  const int h = static_cast<int>(bh % H);
  const int rows = static_cast<int>(P - p0 < kTile ? P - p0 : kTile);
  const int64_t row_base = (b * P + p0) * C + static_cast<int64_t>(h) * D;  // (b, p0, h·D)
  const int64_t key_base = b * N * C + static_cast<int64_t>(h) * D;         // (b, 0, h·D)
  acc_t* chunk = shared + warp * MAX_N * kChannels;
  acc_t* tile = shared + warps * MAX_N * kChannels + warp * kTile * kStride;
  acc_t w[MAX_N];
  attention_weights<MAX_N>(w, q, k, mask + b * N, shared, tile, row_base, key_base, C, D, N, rows, scale, warp,
                           warps, lane);
  for (int c0 = warp * kChannels; c0 < D; c0 += warps * kChannels) {
    const int cols = min(kChannels, D - c0);
    load_tile(tile, x, row_base + c0, C, rows, cols, lane);
    load_keys<MAX_N>(chunk, v, key_base + c0, C, N, cols, lane);
    __syncwarp();
    acc_t* row = tile + lane * kStride;
    for (int c = 0; c < kChannels; c += 4) {
      const Quad<acc_t> a = combine<MAX_N, acc_t>([&](int n) { return w[n]; }, chunk, N, c);
      row[c] *= sigmoid(a.x);
      row[c + 1] *= sigmoid(a.y);
      row[c + 2] *= sigmoid(a.z);
      row[c + 3] *= sigmoid(a.w);
    }
    __syncwarp();
    store_tile(tile, y, row_base + c0, C, rows, cols, lane);
    __syncwarp();
  }
}

template <typename scalar_t, typename acc_t, int MAX_N>
__global__ void survey_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                       const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                       const scalar_t* __restrict__ v, const bool* __restrict__ mask,
                                       scalar_t* __restrict__ dx, scalar_t* __restrict__ dq,
                                       acc_t* __restrict__ dk_part,  // (B, partial rows, N, C)
                                       acc_t* __restrict__ dv_part,  // (B, partial rows, N, C)
                                       int64_t P, int64_t C, int N, int H, int D, acc_t scale, int64_t tiles,
                                       int64_t tiles_per_block, int64_t partial_rows) {
  acc_t* shared = shared_memory<acc_t>();
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t partial = blockIdx.x, bh = blockIdx.y, b = bh / H;
  const int h = static_cast<int>(bh % H);
  acc_t* chunk = shared + warp * MAX_N * kChannels;
  acc_t* tile_a = shared + warps * MAX_N * kChannels + warp * 2 * kTile * kStride;
  acc_t* tile_b = tile_a + kTile * kStride;
  constexpr int stride = by_position_stride<MAX_N>();
  acc_t* weights = shared + warps * (MAX_N * kChannels + 2 * kTile * kStride);  // (32, stride)
  acc_t* dscores = weights + kTile * stride;                                    // (32, stride)
  acc_t* weights_t = dscores;  // (MAX_N, 32): the weights by key, a lane's column per position, until dS
  const int64_t key_base = b * N * C + static_cast<int64_t>(h) * D;
  const int64_t partial_base = (b * partial_rows + partial) * N * C + static_cast<int64_t>(h) * D;
  const int64_t first = partial * tiles_per_block, last = min(tiles, first + tiles_per_block);
  for (int64_t t = first; t < last; ++t) {
    const bool accumulate = t != first;
    const int64_t p0 = t * kTile;
    const int rows = static_cast<int>(P - p0 < kTile ? P - p0 : kTile);
    const int64_t row_base = (b * P + p0) * C + static_cast<int64_t>(h) * D;
    acc_t dw[MAX_N];
    {
      // Every warp holds the same weights; warp 0 stores them by position (for dv) and by key (read back
      // below instead of kept in registers through the first pass, which held 239 registers at 32 keys).
      acc_t w[MAX_N];
      attention_weights<MAX_N>(w, q, k, mask + b * N, shared, tile_a, row_base, key_base, C, D, N, rows, scale,
                               warp, warps, lane);
#pragma unroll
      for (int n = 0; n < MAX_N; ++n) {
        dw[n] = acc_t(0);
        if (warp == 0) {
          const acc_t value = lane < rows ? w[n] : acc_t(0);  // 0 from N on
          weights[lane * stride + n] = value;
          weights_t[n * kWarp + lane] = value;
        }
      }
    }
    __syncthreads();
    // The lane's weight of key n, read back from shared memory.
    const auto weight_by_key = [column = weights_t + lane](int n) { return column[n * kWarp]; };
    // (1) dx, da through the tiles; dW_n per position; dv = Σ_p W·da per channel.
    for (int c0 = warp * kChannels; c0 < D; c0 += warps * kChannels) {
      const int cols = min(kChannels, D - c0);
      load_tile(tile_a, grad, row_base + c0, C, rows, cols, lane);
      load_tile(tile_b, x, row_base + c0, C, rows, cols, lane);
      load_keys<MAX_N>(chunk, v, key_base + c0, C, N, cols, lane);
      __syncwarp();
      acc_t* upstream = tile_a + lane * kStride;  // becomes dx
      acc_t* input = tile_b + lane * kStride;     // becomes da
      for (int c = 0; c < kChannels; c += 4) {
        const Quad<acc_t> a = combine<MAX_N, acc_t>(weight_by_key, chunk, N, c);
        const acc_t attention[4] = {a.x, a.y, a.z, a.w};
        acc_t da[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const acc_t g = sigmoid(attention[j]), gr = upstream[c + j];
          da[j] = gr * input[c + j] * g * (acc_t(1) - g);
          upstream[c + j] = gr * g;
          input[c + j] = da[j];
        }
#pragma unroll
        for (int n = 0; n < MAX_N; ++n)
          if (n < N) {
            const Quad<acc_t> vv = load_quad(chunk + n * kChannels + c);
            dw[n] += da[0] * vv.x + da[1] * vv.y + da[2] * vv.z + da[3] * vv.w;
          }
      }
      __syncwarp();
      store_tile(tile_a, dx, row_base + c0, C, rows, cols, lane);
      if (lane < cols)
        add_column_products<MAX_N>(dv_part + partial_base + c0 + lane, weights, tile_b, C, N, accumulate, lane);
      __syncwarp();
    }
    // Score gradients dS_n = W_n·(dW_n − Σ_m W_m·dW_m), with the softmax's scale.
    sum_over_warps<MAX_N>(dw, shared, N, warp, warps, lane);
    acc_t dot = acc_t(0);
#pragma unroll
    for (int n = 0; n < MAX_N; ++n) dot += weight_by_key(n) * dw[n];
#pragma unroll
    for (int n = 0; n < MAX_N; ++n) dw[n] = weight_by_key(n) * (dw[n] - dot) * scale;
    __syncthreads();  // every warp has read the weights by key, whose buffer takes dS
    if (warp == 0) {
#pragma unroll
      for (int n = 0; n < MAX_N; ++n) dscores[lane * stride + n] = lane < rows ? dw[n] : acc_t(0);
    }
    __syncthreads();
    // (2) dq = dS·k per position; dk = Σ_p dS·q per channel.
    for (int c0 = warp * kChannels; c0 < D; c0 += warps * kChannels) {
      const int cols = min(kChannels, D - c0);
      load_tile(tile_b, q, row_base + c0, C, rows, cols, lane);
      load_keys<MAX_N>(chunk, k, key_base + c0, C, N, cols, lane);
      __syncwarp();
      acc_t* out = tile_a + lane * kStride;
      for (int c = 0; c < kChannels; c += 4) {
        const Quad<acc_t> g = combine<MAX_N, acc_t>([&](int n) { return dw[n]; }, chunk, N, c);
        out[c] = g.x;
        out[c + 1] = g.y;
        out[c + 2] = g.z;
        out[c + 3] = g.w;
      }
      __syncwarp();
      store_tile(tile_a, dq, row_base + c0, C, rows, cols, lane);
      if (lane < cols)
        add_column_products<MAX_N>(dk_part + partial_base + c0 + lane, dscores, tile_b, C, N, accumulate, lane);
      __syncwarp();
    }
    __syncthreads();  // before the next tile rewrites the weights, score gradients and buffers
  }
}

// Warps per block: one per chunk of the head's channels, at most 4 (2 for double, whose buffers are twice
// the size). A grid of fewer tiles (over all batch items and heads) than the device has SMs leaves SMs idle
// while each block's few warps walk many chunks in turn (stage 4: 64 tiles on an H200's 132 SMs, 32 chunks
// per tile); there float blocks take up to 8 warps, as far as the device's shared memory per block allows
// (bytes(w): a block of w warps).
template <typename Bytes>
int block_warps(int D, bool wide, int64_t tiles, const Bytes& bytes) {
  const int chunks = (D + kChannels - 1) / kChannels;
  const int warps = std::max(1, std::min(wide ? 2 : 4, chunks));
  if (wide || chunks <= warps) return warps;
  const int wider = std::min(8, chunks);
  const auto shared_limit = static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  return tiles < multiprocessors() && bytes(wider) <= shared_limit ? wider : warps;
}

// Lets `kernel` take `bytes` of dynamic shared memory (over 48 KiB needs the opt-in).
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
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
  const int64_t tiles = (P + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(B * H));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "survey_gate_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = acc_t(1) / std::sqrt(acc_t(D));
    PROVG_DISPATCH_KEYS(N, [&] {
      const auto kernel = survey_forward_kernel<scalar_t, acc_t, MAX_N>;
      const auto bytes_of = [](int w) { return shared_size<acc_t, MAX_N>(w, 1, 0); };
      const int warps = block_warps(D, x.scalar_type() == at::kDouble, tiles * B * H, bytes_of);
      const size_t bytes = bytes_of(warps);
      allow_shared(kernel, bytes);
      kernel<<<grid, warps * kWarp, bytes, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
          v.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), y.data_ptr<scalar_t>(), P, C, N, H, D, scale);
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
  if (x.numel() == 0) return {dx, dq, at::zeros_like(k), at::zeros_like(v)};
  const bool wide = x.scalar_type() == at::kDouble;
  const int64_t tiles = (P + kTile - 1) / kTile;
  at::Tensor dk_part, dv_part;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "survey_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = acc_t(1) / std::sqrt(acc_t(D));
    PROVG_DISPATCH_KEYS(N, [&] {
      const auto kernel = survey_backward_kernel<scalar_t, acc_t, MAX_N>;
      // With more tiles than SMs the blocks below walk several tiles each; with fewer, one each (per_item is
      // then all of an item's tiles whatever the occupancy), so the warps' rule sees the final grid.
      const auto bytes_of = [](int w) { return shared_size<acc_t, MAX_N>(w, 2, 2); };
      const int warps = block_warps(D, wide, tiles * B * H, bytes_of);
      const size_t bytes = bytes_of(warps);
      allow_shared(kernel, bytes);
      // As many blocks as fit on the device at once, each walking consecutive tiles of one (b, h): fewer
      // partial rows to write and add up than one block per tile.
      int resident = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, warps * kWarp, bytes));
      const int64_t wanted = std::max<int64_t>(1, static_cast<int64_t>(resident) * multiprocessors());
      const int64_t per_item = std::min(tiles, std::max<int64_t>(1, wanted / (B * H)));
      const int64_t tiles_per_block = (tiles + per_item - 1) / per_item;
      const int64_t partial_rows = (tiles + tiles_per_block - 1) / tiles_per_block;
      dk_part = at::empty({B, partial_rows, N, C}, x.options().dtype(acc_type));
      dv_part = at::empty_like(dk_part);
      const dim3 grid(static_cast<unsigned>(partial_rows), static_cast<unsigned>(B * H));
      kernel<<<grid, warps * kWarp, bytes, c10::cuda::getCurrentCUDAStream()>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
          k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(),
          dx.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(), dk_part.data_ptr<acc_t>(), dv_part.data_ptr<acc_t>(), P,
          C, N, H, D, scale, tiles, tiles_per_block, partial_rows);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dx, dq, dk_part.sum(1).to(k.scalar_type()), dv_part.sum(1).to(v.scalar_type())};
}

TORCH_LIBRARY_IMPL(provg, CUDA, m) {
  m.impl("survey_gate_forward", &survey_gate_forward_cuda);
  m.impl("survey_gate_backward", &survey_gate_backward_cuda);
}

}  // namespace provg
