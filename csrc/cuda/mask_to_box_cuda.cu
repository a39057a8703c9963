// CUDA kernel of provg::mask_to_box. A 2-D grid: blockIdx.x picks the mask, blockIdx.y a chunk of its
// pixels. Each block reduces the extent of the foreground it sees in shared memory, then merges it into
// a per-mask int32 extent with one global atomic per bound; a second kernel turns extents into boxes.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <climits>
#include <cstdint>

#include "../mask_to_box.h"

namespace provg {
namespace {

constexpr int kThreads = 256;
constexpr int kPixelsPerThread = 16;

// extents: (B, 4) int32 = (min_col, min_row, max_col, max_row), initialised to (INT_MAX, INT_MAX, -1, -1).
__global__ void mask_extent_kernel(const uint8_t* __restrict__ masks,  // (B, H, W) bytes, nonzero = fg
                                   int64_t height, int64_t width,
                                   int32_t* __restrict__ extents) {   // (B, 4)
  __shared__ int32_t block_extent[4];
  if (threadIdx.x == 0) {
    block_extent[0] = INT_MAX;
    block_extent[1] = INT_MAX;
    block_extent[2] = -1;
    block_extent[3] = -1;
  }
  __syncthreads();
  // NOTE: int64 offsets throughout: a batch of large masks exceeds 2^31 bytes.
  const int64_t mask_index = static_cast<int64_t>(blockIdx.x);
  const int64_t pixels = height * width;
  const uint8_t* mask = masks + mask_index * pixels;
  const int64_t chunk = static_cast<int64_t>(kThreads) * kPixelsPerThread;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = min(begin + chunk, pixels);
  int32_t min_col = INT_MAX, min_row = INT_MAX, max_col = -1, max_row = -1;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    if (mask[i]) {
      const int32_t row = static_cast<int32_t>(i / width);
      const int32_t col = static_cast<int32_t>(i - static_cast<int64_t>(row) * width);
      min_col = min(min_col, col);
      max_col = max(max_col, col);
      min_row = min(min_row, row);
      max_row = max(max_row, row);
    }
  }
  if (max_row >= 0) {
    atomicMin(&block_extent[0], min_col);
    atomicMin(&block_extent[1], min_row);
    atomicMax(&block_extent[2], max_col);
    atomicMax(&block_extent[3], max_row);
  }
  __syncthreads();
  if (threadIdx.x == 0 && block_extent[3] >= 0) {
    int32_t* out = extents + 4 * mask_index;
    atomicMin(out + 0, block_extent[0]);
    atomicMin(out + 1, block_extent[1]);
    atomicMax(out + 2, block_extent[2]);
    atomicMax(out + 3, block_extent[3]);
  }
}

__global__ void extent_to_box_kernel(const int32_t* __restrict__ extents,  // (B, 4)
                                     int64_t batch,
                                     float* __restrict__ boxes,  // (B, 4) xyxy, pixel edges
                                     bool* __restrict__ valid) {  // (B,)
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int32_t* e = extents + 4 * b;
  const bool nonempty = e[3] >= 0;
  valid[b] = nonempty;
  boxes[4 * b + 0] = nonempty ? static_cast<float>(e[0]) : 0.f;
  boxes[4 * b + 1] = nonempty ? static_cast<float>(e[1]) : 0.f;
  boxes[4 * b + 2] = nonempty ? static_cast<float>(e[2] + 1) : 0.f;
  boxes[4 * b + 3] = nonempty ? static_cast<float>(e[3] + 1) : 0.f;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mask_to_box_cuda(const at::Tensor& masks) {
  TORCH_CHECK(masks.is_cuda(), "mask_to_box_cuda: expected a CUDA tensor, got ", masks.device());
  TORCH_CHECK(masks.dim() == 3, "mask_to_box: expected masks of shape (B, H, W), got ", masks.sizes());
  TORCH_CHECK(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kByte,
              "mask_to_box: expected bool or uint8 masks, got ", masks.scalar_type());
  TORCH_CHECK(masks.size(1) < INT_MAX && masks.size(2) < INT_MAX, "mask_to_box: mask side too large");
  TORCH_CHECK(masks.size(0) < INT_MAX, "mask_to_box_cuda: too many masks in one call: ", masks.size(0));
  const c10::cuda::CUDAGuard guard(masks.device());
  const int64_t batch = masks.size(0), height = masks.size(1), width = masks.size(2);
  const at::Tensor bytes = masks.contiguous();
  at::Tensor boxes = at::empty({batch, 4}, masks.options().dtype(at::kFloat));
  at::Tensor valid = at::empty({batch}, masks.options().dtype(at::kBool));
  if (batch == 0) return {boxes, valid};
  at::Tensor extents = at::empty({batch, 4}, masks.options().dtype(at::kInt));
  extents.narrow(1, 0, 2).fill_(INT_MAX);
  extents.narrow(1, 2, 2).fill_(-1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t pixels = height * width;
  if (pixels > 0) {
    const int64_t chunk = static_cast<int64_t>(kThreads) * kPixelsPerThread;
    const int64_t chunks = (pixels + chunk - 1) / chunk;
    TORCH_CHECK(chunks <= 65535, "mask_to_box_cuda: a mask of ", pixels, " pixels exceeds the ",
                65535 * chunk, "-pixel limit");
    const dim3 grid(static_cast<unsigned int>(batch), static_cast<unsigned int>(chunks));
    mask_extent_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint8_t*>(bytes.const_data_ptr()),
                                                      height, width, extents.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int threads = 128;
  const int blocks = static_cast<int>((batch + threads - 1) / threads);
  extent_to_box_kernel<<<blocks, threads, 0, stream>>>(extents.data_ptr<int32_t>(), batch,
                                                       boxes.data_ptr<float>(), valid.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {boxes, valid};
}

TORCH_LIBRARY_IMPL(provg, CUDA, m) { m.impl("mask_to_box", &mask_to_box_cuda); }

}  // namespace provg
