// CPU kernel of provg::conv3x3_bias_silu_forward: the deploy-form RepVGG convolution
// SiLU(conv3×3(x) + b) [+ r] (ProVG Sec. 4.3).
//
// float32 with oneDNN: one oneDNN convolution with the bias and SiLU as its post-op (ATen's
// mkldnn::_convolution_pointwise, the op Inductor fuses to), then the residual added in place. Otherwise
// (float64, or no oneDNN): ATen's convolution without bias, then one OpenMP pass that adds the bias,
// applies SiLU and adds the residual. The output keeps x's memory layout either way.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <optional>

#include "../repconv.h"
#include "gate_common.h"

namespace provg {
namespace {

using namespace cpu;

// y ← SiLU(y + bias[c]) [+ residual], in place, for NCHW or channels-last y.
template <typename T>
void bias_silu_residual(at::Tensor& y, const at::Tensor& bias, const at::Tensor* residual) {
  const int64_t C = y.size(1), L = y.size(2) * y.size(3), planes = y.size(0) * C;
  const bool channels_last = !y.is_contiguous();
  T* out = y.data_ptr<T>();
  const T* b = bias.const_data_ptr<T>();
  const T* r = residual ? residual->const_data_ptr<T>() : nullptr;
  auto apply = [&](T* run, const T* bias_run, const T* residual_run, int64_t n, bool per_channel) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) run[i] += bias_run[per_channel ? i : 0];
    for (int64_t i = 0; i < n; ++i) run[i] = run[i] * sigmoid(run[i]);
    if (residual_run) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) run[i] += residual_run[i];
    }
  };
  if (channels_last) {
    at::parallel_for(0, y.size(0) * L, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row)
        apply(out + row * C, b, r ? r + row * C : nullptr, C, true);
    });
  } else {
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane)
        apply(out + plane * L, b + plane % C, r ? r + plane * L : nullptr, L, false);
    });
  }
}

// oneDNN's convolution with bias and SiLU fused, or nullopt when this torch has no oneDNN.
std::optional<at::Tensor> onednn_conv_bias_silu(const at::Tensor& x, const at::Tensor& weight,
                                                const at::Tensor& bias) {
  static const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", ""});
  if (!handle.has_value() || !at::globalContext().userEnabledMkldnn()) return std::nullopt;
  const std::vector<int64_t> ones{1, 1};
  torch::jit::Stack stack{x,
                          weight,
                          bias,
                          ones,
                          ones,
                          ones,
                          int64_t{1},
                          std::string("swish"),
                          c10::List<std::optional<at::Scalar>>(),
                          c10::IValue()};
  handle->callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace

at::Tensor conv3x3_bias_silu_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                         const std::optional<at::Tensor>& residual) {
  const char* op = "conv3x3_bias_silu_forward";
  TORCH_CHECK(x.dim() == 4, op, ": x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 && weight.size(3) == 3, op,
              ": weight must be (C_out, ", x.size(1), ", 3, 3), got ", weight.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), op, ": bias must be (", weight.size(0), "), got ",
              bias.sizes());
  for (const at::Tensor* t : {&weight, &bias})
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": all inputs must share x's dtype ", x.scalar_type());
  const auto layout = x.suggest_memory_format();
  if (x.size(0) == 0)
    return at::empty({0, weight.size(0), x.size(2), x.size(3)}, x.options().memory_format(layout));
  std::optional<at::Tensor> fused;
  if (x.scalar_type() == at::kFloat) fused = onednn_conv_bias_silu(x, weight, bias.contiguous());
  at::Tensor y = fused.has_value()
                     ? fused->contiguous(layout)
                     : at::convolution(x, weight, std::nullopt, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1)
                           .contiguous(layout);
  const at::Tensor r = checked_residual(residual, y, layout, op);
  if (fused.has_value()) {
    if (r.defined()) y.add_(r);
    return y;
  }
  const at::Tensor b = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "conv3x3_bias_silu_forward",
                             [&] { bias_silu_residual<scalar_t>(y, b, r.defined() ? &r : nullptr); });
  return y;
}

TORCH_LIBRARY_IMPL(provg, CPU, m) { m.impl("conv3x3_bias_silu_forward", &conv3x3_bias_silu_forward_cpu); }

}  // namespace provg
