// provg::{survey,locate,verify}_gate_eager: the eager entry points of the PCM gates (ProVG Eq. 1–7) with
// their autograd nodes in C++, device-agnostic over the <gate>_{forward,backward} kernels (CPU or CUDA,
// as the inputs' device dispatches).
//
// A Python torch.autograd.Function around the kernels costs more host time per call than the kernels
// themselves at the model's small stages, and on a GPU at batch 8 host time is most of a call: its
// forward wraps the call in Python, its backward runs a Python frame under the autograd engine. Here one
// dispatcher call builds the node (a KernelBackward, eager_autograd.h), and the backward never enters
// Python. torch.compile and torch.export trace the provg::<gate> operators registered in
// provg/ops/_fused.py instead; the Triton kernels keep the Python Function.
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "eager_autograd.h"

namespace provg {
namespace {

using torch::autograd::variable_list;

using Arg = const at::Tensor&;  // a tensor argument
using Grad4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Grad5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Saved = std::vector<at::Tensor>;

// Each entry point runs its forward kernel and gives the output a KernelBackward over every tensor argument,
// all of them saved (the bool key mask's gradient is left undefined).

at::Tensor survey_gate_eager(Arg x, Arg q, Arg k, Arg v, Arg mask, int64_t heads) {
  static const Kernel<at::Tensor(Arg, Arg, Arg, Arg, Arg, int64_t)> forward("provg::survey_gate_forward");
  at::Tensor y = forward(x, q, k, v, mask, heads);
  attach_backward(y, "survey_gate", {x, q, k, v, mask}, [heads](Arg grad, const Saved& s) {
    static const Kernel<Grad4(Arg, Arg, Arg, Arg, Arg, Arg, int64_t)> backward("provg::survey_gate_backward");
    auto [dx, dq, dk, dv] = backward(grad, s[0], s[1], s[2], s[3], s[4], heads);
    return variable_list{dx, dq, dk, dv, at::Tensor()};
  });
  return y;
}

at::Tensor locate_gate_eager(Arg x, Arg w, Arg b, Arg k, Arg v, Arg mask) {
  static const Kernel<at::Tensor(Arg, Arg, Arg, Arg, Arg, Arg)> forward("provg::locate_gate_forward");
  at::Tensor y = forward(x, w, b, k, v, mask);
  attach_backward(y, "locate_gate", {x, w, b, k, v, mask}, [](Arg grad, const Saved& s) {
    static const Kernel<Grad5(Arg, Arg, Arg, Arg, Arg, Arg, Arg)> backward("provg::locate_gate_backward");
    auto [dx, dw, db, dk, dv] = backward(grad, s[0], s[1], s[2], s[3], s[4], s[5]);
    return variable_list{dx, dw, db, dk, dv, at::Tensor()};
  });
  return y;
}

at::Tensor verify_gate_eager(Arg x, Arg k, Arg v, Arg mask, Arg w_q) {
  static const Kernel<at::Tensor(Arg, Arg, Arg, Arg, Arg)> forward("provg::verify_gate_forward");
  at::Tensor y = forward(x, k, v, mask, w_q);
  attach_backward(y, "verify_gate", {x, k, v, mask, w_q}, [](Arg grad, const Saved& s) {
    static const Kernel<Grad4(Arg, Arg, Arg, Arg, Arg, Arg)> backward("provg::verify_gate_backward");
    auto [dx, dk, dv, dw_q] = backward(grad, s[0], s[1], s[2], s[3], s[4]);
    return variable_list{dx, dk, dv, at::Tensor(), dw_q};
  });
  return y;
}

}  // namespace

// Autograd for tensors that may need gradients; the same function below it (inference mode, tensors
// without the Autograd key), where no node is built.
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
