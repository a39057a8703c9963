// What the eager C++ entry points (csrc/gate_autograd.cpp, csrc/rep_bn_add_silu_autograd.cpp) share: the
// kernel operators called below the Autograd key, their gradients made safe for create_graph=True (the C++
// counterpart of provg.ops._gate_api.differentiable_once), and the autograd node that runs their backward.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

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

// The backward node of an eager entry point, made directly as PyTorch's generated nodes are: the CppNode that
// torch::autograd::Function::apply builds (its context's saved-data map, output wrapping and checks) cost
// 10-15 µs more host time per training call (the RepVGG tail, AMD EPYC, two threads: 68 → 58 µs at a 2×2
// map, 106 → 92 µs at 15²), as much as a 15² map's kernels take. It keeps the saved tensors (with their
// versions, so that an in-place change before the backward raises) and returns body(grad, saved): one
// gradient per next edge, undefined where there is none, through differentiable_once.
class KernelBackward : public torch::autograd::Node {
 public:
  using Body = std::function<torch::autograd::variable_list(const at::Tensor&, const std::vector<at::Tensor>&)>;

  KernelBackward(const char* op, Body body) : op_(op), body_(std::move(body)) {}

  void save(at::TensorList tensors) {
    saved_.reserve(saved_.size() + tensors.size());
    for (const at::Tensor& t : tensors) saved_.emplace_back(t, /*is_output=*/false);
  }

  std::string name() const override { return std::string("provg::") + op_ + "_backward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (torch::autograd::SavedVariable& s : saved_) s.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    if (!grads[0].defined()) return torch::autograd::variable_list(num_outputs());  // no gradient reached y
    std::vector<at::Tensor> tensors;
    tensors.reserve(saved_.size());
    for (const torch::autograd::SavedVariable& s : saved_) tensors.push_back(s.unpack());
    return differentiable_once(op_, body_(grads[0], tensors));
  }

 private:
  const char* op_;
  Body body_;
  std::vector<torch::autograd::SavedVariable> saved_;
};

// Gives y (an entry point's output, computed below the Autograd key) a KernelBackward whose next edges are
// ``inputs``' (the gradients body returns, in that order) and which saves ``saved``, when grad mode is on and
// an input requires a gradient. Inputs carrying forward-mode tangents are refused: the kernels have no
// forward derivative.
inline void attach_backward(const at::Tensor& y, const char* op, at::TensorList inputs, at::TensorList saved,
                            KernelBackward::Body body) {
  for (const at::Tensor& t : inputs)
    TORCH_CHECK(!torch::autograd::isFwGradDefined(t), op,
                ": the fused kernels have no forward-mode derivative; use backend='torch'");
  if (!torch::autograd::compute_requires_grad(inputs)) return;
  auto node = c10::make_intrusive<KernelBackward>(op, std::move(body));
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  node->save(saved);
  torch::autograd::set_history(y, node);
}

// attach_backward for a backward that needs exactly the inputs.
inline void attach_backward(const at::Tensor& y, const char* op, at::TensorList inputs, KernelBackward::Body body) {
  attach_backward(y, op, inputs, inputs, std::move(body));
}

}  // namespace provg
