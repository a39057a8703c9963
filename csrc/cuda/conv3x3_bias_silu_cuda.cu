// CUDA kernel of provg::conv3x3_bias_silu_forward (Sec. 4.3, deploy form): y = SiLU(conv3×3(x; W, padding 1)
// + b) [+ r].
//
// cuDNN does the GEMM: ATen's convolution without bias, in the memory format of x (channels-last x and
// weight ask cuDNN for an NHWC output). One fused epilogue kernel then adds the bias, applies SiLU in the
// accumulation dtype and adds the residual in place on the convolution output, so bias, activation and
// residual together cost one read and one write of y instead of three elementwise passes. The epilogue
// is grid-stride over memory order with 16-byte vectors when aligned; the channel of an element follows
// from the layout ((b·C + c)·L + l for NCHW, (b·L + l)·C + c for channels-last).
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>

#include "../repconv.h"
#include "elementwise.cuh"

namespace provg {
namespace {

using namespace cuda;


template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t epilogue(scalar_t conv, scalar_t b, const scalar_t* residual, int64_t i) {
  const acc_t pre = static_cast<acc_t>(conv) + static_cast<acc_t>(b);
  acc_t value = pre / (acc_t(1) + exp(-pre));
  if (residual != nullptr) value += static_cast<acc_t>(residual[i]);
  return static_cast<scalar_t>(value);
}

// out[i] = SiLU(out[i] + bias[c]) (+ residual[i]) in place; VEC elements per step, the tail one at a time.
template <typename scalar_t, typename acc_t, int VEC>
__global__ void bias_silu_epilogue_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ bias,
                                          const scalar_t* __restrict__ residual, int64_t total, int64_t C, int64_t L,
                                          bool cl) {
  using P = Pack<scalar_t, VEC>;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t vectors = total / VEC;
  for (int64_t v = start; v < vectors; v += stride) {
    const int64_t base = v * VEC;
    P y = *reinterpret_cast<const P*>(out + base);
    P r;
    if (residual != nullptr) r = *reinterpret_cast<const P*>(residual + base);
    ChannelWalker w(base, C, L, cl);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t pre = static_cast<acc_t>(y.v[j]) + static_cast<acc_t>(bias[w.c]);
      acc_t value = pre / (acc_t(1) + exp(-pre));
      if (residual != nullptr) value += static_cast<acc_t>(r.v[j]);
      y.v[j] = static_cast<scalar_t>(value);
      w.next(C, L, cl);
    }
    *reinterpret_cast<P*>(out + base) = y;
  }
  for (int64_t i = vectors * VEC + start; i < total; i += stride) {
    const ChannelWalker w(i, C, L, cl);
    out[i] = epilogue<scalar_t, acc_t>(out[i], bias[w.c], residual, i);
  }
}

}  // namespace

at::Tensor conv3x3_bias_silu_forward_cuda(const at::Tensor& x_, const at::Tensor& weight_, const at::Tensor& bias_,
                                          const std::optional<at::Tensor>& residual_) {
  constexpr const char* op = "conv3x3_bias_silu_forward_cuda";
  TORCH_CHECK(x_.is_cuda(), op, ": x must be a CUDA tensor, got one on ", x_.device());
  TORCH_CHECK(x_.dim() == 4, op, ": x must be (B, C_in, H, W), got ", x_.sizes());
  const auto dtype = x_.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, op,
              ": x must be float16, bfloat16, float32 or float64, got ", dtype);
  const int64_t B = x_.size(0), C_in = x_.size(1), H = x_.size(2), W = x_.size(3);
  TORCH_CHECK(weight_.dim() == 4 && weight_.size(1) == C_in && weight_.size(2) == 3 && weight_.size(3) == 3, op,
              ": weight must be (C_out, ", C_in, ", 3, 3), got ", weight_.sizes());
  const int64_t C_out = weight_.size(0);
  TORCH_CHECK(bias_.dim() == 1 && bias_.size(0) == C_out, op, ": bias must be (", C_out, "), got ", bias_.sizes());
  TORCH_CHECK(weight_.scalar_type() == dtype && bias_.scalar_type() == dtype, op, ": weight (",
              weight_.scalar_type(), ") and bias (", bias_.scalar_type(), ") must be ", dtype, " like x");
  TORCH_CHECK(weight_.device() == x_.device() && bias_.device() == x_.device(), op, ": weight (", weight_.device(),
              ") and bias (", bias_.device(), ") must be on ", x_.device(), " like x");
  const bool has_residual = residual_.has_value() && residual_->defined();
  if (has_residual) {
    const at::Tensor& r = *residual_;
    TORCH_CHECK(r.dim() == 4 && r.size(0) == B && r.size(1) == C_out && r.size(2) == H && r.size(3) == W, op,
                ": residual must be (", B, ", ", C_out, ", ", H, ", ", W, "), got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == dtype, op, ": residual must be ", dtype, " like x, got ", r.scalar_type());
    TORCH_CHECK(r.device() == x_.device(), op, ": residual must be on ", x_.device(), ", got ", r.device());
  }
  const c10::cuda::CUDAGuard guard(x_.device());

  // The output keeps the layout of x: channels-last when x is (and is not also plainly contiguous).
  const bool cl = !x_.is_contiguous() && x_.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto format = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto out_options = x_.options().memory_format(format);
  // No batch or no output channel: nothing to compute (an empty map is left to ATen's shape checks).
  if (B == 0 || C_out == 0) return at::empty({B, C_out, H, W}, out_options);

  at::Tensor out;
  if (C_in == 0) {
    out = at::zeros({B, C_out, H, W}, out_options);  // an empty sum: y = SiLU(b) [+ r]
  } else {
    const std::array<int64_t, 2> ones{1, 1}, zeros{0, 0};
    out = at::convolution(x_.contiguous(format), weight_.contiguous(format), std::nullopt, ones, ones, ones, false,
                          zeros, 1);
    // cuDNN keeps NCHW for float64 (and ATen may choose otherwise for size-1 dims): restore the layout.
    if (!out.is_contiguous(format)) out = out.contiguous(format);
  }
  const int64_t total = out.numel(), L = H * W;
  if (total == 0) return out;
  const at::Tensor bias = bias_.contiguous();
  at::Tensor residual;
  if (has_residual) residual = residual_->contiguous(format);

  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "conv3x3_bias_silu_epilogue", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VEC = kVectorBytes / sizeof(scalar_t);
    scalar_t* y = out.data_ptr<scalar_t>();
    const scalar_t* r = has_residual ? residual.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* b = bias.const_data_ptr<scalar_t>();
    if (aligned(y) && (r == nullptr || aligned(r))) {
      bias_silu_epilogue_kernel<scalar_t, acc_t, VEC>
          <<<elementwise_blocks(ceil_div(total, VEC)), kThreads, 0, stream>>>(y, b, r, total, C_out, L, cl);
    } else {
      bias_silu_epilogue_kernel<scalar_t, acc_t, 1>
          <<<elementwise_blocks(total), kThreads, 0, stream>>>(y, b, r, total, C_out, L, cl);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(provg, CUDA, m) { m.impl("conv3x3_bias_silu_forward", &conv3x3_bias_silu_forward_cuda); }

}  // namespace provg
