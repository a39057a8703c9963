// provg::{survey,locate,verify}_gate_eager: the eager entry points of the PCM gates (ProVG Eq. 1–7) with
// their autograd nodes in C++, device-agnostic over the <gate>_{forward,backward} kernels (CPU or CUDA,
// as the inputs' device dispatches).
//
// A Python torch.autograd.Function around the kernels costs more host time per call than the kernels
// themselves at the model's small stages, and on a GPU at batch 8 host time is most of a call: its
// forward wraps the call in Python, its backward runs a Python frame under the autograd engine. Here one
// dispatcher call builds the node, and the backward never enters Python. torch.compile and torch.export
// trace the provg::<gate> operators registered in provg/ops/_fused.py instead; the Triton kernels keep
// the Python Function.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "eager_autograd.h"

namespace provg {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Arg = const at::Tensor&;  // a tensor argument
using Grad4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Grad5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct SurveyGate : public torch::autograd::Function<SurveyGate> {
  static at::Tensor forward(AutogradContext* ctx, Arg x, Arg q, Arg k, Arg v, Arg mask, int64_t heads) {
    static const Kernel<at::Tensor(Arg, Arg, Arg, Arg, Arg, int64_t)> kernel("provg::survey_gate_forward");
    ctx->save_for_backward({x, q, k, v, mask});
    ctx->saved_data["heads"] = heads;
    return kernel(x, q, k, v, mask, heads);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const Kernel<Grad4(Arg, Arg, Arg, Arg, Arg, Arg, int64_t)> kernel("provg::survey_gate_backward");
    const variable_list s = ctx->get_saved_variables();
    auto [dx, dq, dk, dv] = kernel(grads[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["heads"].toInt());
    return differentiable_once("survey_gate", {dx, dq, dk, dv, at::Tensor(), at::Tensor()});
  }
};

struct LocateGate : public torch::autograd::Function<LocateGate> {
  static at::Tensor forward(AutogradContext* ctx, Arg x, Arg w, Arg b, Arg k, Arg v, Arg mask) {
    static const Kernel<at::Tensor(Arg, Arg, Arg, Arg, Arg, Arg)> kernel("provg::locate_gate_forward");
    ctx->save_for_backward({x, w, b, k, v, mask});
    return kernel(x, w, b, k, v, mask);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const Kernel<Grad5(Arg, Arg, Arg, Arg, Arg, Arg, Arg)> kernel("provg::locate_gate_backward");
    const variable_list s = ctx->get_saved_variables();
    auto [dx, dw, db, dk, dv] = kernel(grads[0], s[0], s[1], s[2], s[3], s[4], s[5]);
    return differentiable_once("locate_gate", {dx, dw, db, dk, dv, at::Tensor()});
  }
};

struct VerifyGate : public torch::autograd::Function<VerifyGate> {
  static at::Tensor forward(AutogradContext* ctx, Arg x, Arg k, Arg v, Arg mask, Arg w_q) {
    static const Kernel<at::Tensor(Arg, Arg, Arg, Arg, Arg)> kernel("provg::verify_gate_forward");
    ctx->save_for_backward({x, k, v, mask, w_q});
    return kernel(x, k, v, mask, w_q);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const Kernel<Grad4(Arg, Arg, Arg, Arg, Arg, Arg)> kernel("provg::verify_gate_backward");
    const variable_list s = ctx->get_saved_variables();
    auto [dx, dk, dv, dw_q] = kernel(grads[0], s[0], s[1], s[2], s[3], s[4]);
    return differentiable_once("verify_gate", {dx, dk, dv, at::Tensor(), dw_q});
  }
};

at::Tensor survey_gate_eager(Arg x, Arg q, Arg k, Arg v, Arg mask, int64_t heads) {
  return SurveyGate::apply(x, q, k, v, mask, heads);
}

at::Tensor locate_gate_eager(Arg x, Arg w, Arg b, Arg k, Arg v, Arg mask) {
  return LocateGate::apply(x, w, b, k, v, mask);
}

at::Tensor verify_gate_eager(Arg x, Arg k, Arg v, Arg mask, Arg w_q) {
  return VerifyGate::apply(x, k, v, mask, w_q);
}

}  // namespace

// Autograd for tensors that may need gradients; the same function below it (inference mode, tensors
// without the Autograd key), where apply builds no node.
TORCH_LIBRARY_IMPL(provg, Autograd, m) {
  m.impl("survey_gate_eager", &survey_gate_eager);
  m.impl("locate_gate_eager", &locate_gate_eager);
  m.impl("verify_gate_eager", &verify_gate_eager);
}

TORCH_LIBRARY_IMPL(provg, CompositeExplicitAutograd, m) {
  m.impl("survey_gate_eager", &survey_gate_eager);
  m.impl("locate_gate_eager", &locate_gate_eager);
  m.impl("verify_gate_eager", &verify_gate_eager);
}

}  // namespace provg
