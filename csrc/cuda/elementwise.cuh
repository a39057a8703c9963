// Grid-stride elementwise pieces shared by the RepVGG kernels (rep_bn_add_silu, conv3x3_bias_silu):
// the channel of consecutive memory indices in either layout, and launch sizing (the 16-byte packs and
// the device's multiprocessor count are in gate_common.cuh).
#pragma once

#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "gate_common.cuh"

namespace provg {
namespace cuda {

// Grid-stride launch size: enough blocks of kThreads for the items, at most 32 per multiprocessor.
inline unsigned elementwise_blocks(int64_t items) {
  const int64_t cap = multiprocessors() * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(items, kThreads), cap)));
}

// The channel of consecutive memory indices: (b, c, l) sits at (b·C + c)·L + l (NCHW) or (b·L + l)·C + c
// (channels-last); construct at index i, then `next` steps one index at a time without divisions.
struct ChannelWalker {
  int64_t c, l;
  __device__ __forceinline__ ChannelWalker(int64_t i, int64_t C, int64_t L, bool cl) {
    if (cl) {
      c = i % C;
      l = 0;
    } else {
      const int64_t q = i / L;
      l = i - q * L;
      c = q % C;
    }
  }
  __device__ __forceinline__ void next(int64_t C, int64_t L, bool cl) {
    if (cl) {
      if (++c == C) c = 0;
    } else if (++l == L) {
      l = 0;
      if (++c == C) c = 0;
    }
  }
};

}  // namespace cuda
}  // namespace provg
