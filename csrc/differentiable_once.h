// Gradients of fused kernels that have no derivative of their own, made safe for create_graph=True: the
// C++ counterpart of provg.ops._gate_api.differentiable_once, shared by the eager entry points
// (csrc/gate_autograd.cpp, csrc/rep_bn_add_silu_autograd.cpp).
#pragma once

#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <memory>
#include <string>
#include <utility>

namespace provg {

// Under grad mode (a backward with create_graph=True) the gradients come back behind a node that raises,
// naming the fix, if they are differentiated again (what Python's @once_differentiable does), instead
// of silently carrying no graph. Undefined gradients pass through undefined.
inline torch::autograd::variable_list differentiable_once(const std::string& op,
                                                          torch::autograd::variable_list gradients) {
  if (!at::GradMode::is_enabled()) return gradients;
  for (at::Tensor& g : gradients)
    if (g.defined()) g = g.detach().requires_grad_(true);
  auto error = std::make_shared<torch::autograd::DelayedError>(
      op + ": the fused kernels are differentiable once; a second derivative (through create_graph=True) "
           "needs backend='torch'",
      static_cast<int64_t>(gradients.size()));
  return (*error)(std::move(gradients));
}

}  // namespace provg
