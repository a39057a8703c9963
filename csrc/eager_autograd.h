// What the eager C++ entry points (csrc/gate_autograd.cpp, csrc/rep_bn_add_silu_autograd.cpp) share: the
// kernel operators called below the Autograd key, and their gradients made safe for create_graph=True
// (the C++ counterpart of provg.ops._gate_api.differentiable_once).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <memory>
#include <string>
#include <utility>

namespace provg {

// The typed handle of a kernel operator, called below the Autograd key: the kernels have no autograd
// formula of their own, and the Autograd key's not-implemented fallback would box every argument.
template <typename Signature>
class Kernel {
 public:
  explicit Kernel(const char* name)
      : op_(c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Signature>()) {}

  template <typename... Args>
  auto operator()(Args&&... args) const {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op_.call(std::forward<Args>(args)...);
  }

 private:
  c10::TypedOperatorHandle<Signature> op_;
};

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
