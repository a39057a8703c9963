// RepVGG block operators (ProVG Sec. 4.3, DESIGN §2 and §5): fused kernels of the CFM fusion blocks.
//
//   rep_bn_add_silu(x_1..x_K, γ, β, μ, σ²) = SiLU(Σ_i (x_i − μ_i)·γ_i/√(σ²_i + ε) + β_i)     K = 1..3
//   conv3x3_bias_silu(x, W, b, r)           = SiLU(conv3×3(x; W, padding 1) + b) [+ r]
//
// rep_bn_add_silu: the K inputs are (B, C, H, W) of one dtype, all contiguous (NCHW) or all
// channels-last contiguous; y has their layout. weight, bias, mean, var are (K, C) in the accumulation
// dtype (float32 for half/bfloat16/float32 inputs, float64 for float64). With training = true the
// statistics are the batch's (mean, biased variance over B·H·W; the mean/var arguments are ignored)
// and are returned for the running-statistic update; otherwise mean/var are used and returned as
// given. The backward takes the statistics the forward used and returns dinputs (K tensors like the
// inputs), dweight and dbias (K, C).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace provg {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rep_bn_add_silu_forward_cpu(
    at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
    const at::Tensor& var, bool training, double eps);
std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> rep_bn_add_silu_backward_cpu(
    const at::Tensor& grad, at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, bool training, double eps);
// conv3x3_bias_silu's optional residual, checked against the output y and laid out as ``layout``;
// undefined when absent.
inline at::Tensor checked_residual(const std::optional<at::Tensor>& residual, const at::Tensor& y,
                                   at::MemoryFormat layout, const char* op) {
  if (!residual.has_value() || !residual->defined()) return at::Tensor();
  TORCH_CHECK(residual->sizes() == y.sizes() && residual->scalar_type() == y.scalar_type() &&
                  residual->device() == y.device(),
              op, ": residual must be ", y.sizes(), " ", y.scalar_type(), " on ", y.device(), ", got ",
              residual->sizes(), " ", residual->scalar_type(), " on ", residual->device());
  return residual->contiguous(layout);
}

at::Tensor conv3x3_bias_silu_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                         const std::optional<at::Tensor>& residual);
at::Tensor conv3x3_winograd_weight_cpu(const at::Tensor& weight);
at::Tensor conv3x3_bias_silu_winograd_forward_cpu(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                                                  const std::optional<at::Tensor>& residual);

#ifdef PROVG_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> rep_bn_add_silu_forward_cuda(
    at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
    const at::Tensor& var, bool training, double eps);
std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> rep_bn_add_silu_backward_cuda(
    const at::Tensor& grad, at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, bool training, double eps);
at::Tensor conv3x3_bias_silu_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                          const std::optional<at::Tensor>& residual);
#endif

}  // namespace provg
