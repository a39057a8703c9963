// Schemas of the operators in the `provg` library namespace. Kernels register themselves per device
// in csrc/cpu/ and csrc/cuda/; autograd and fake (meta) kernels are registered from Python, except the
// eager entry points' autograd (C++: csrc/gate_autograd.cpp, csrc/rep_bn_add_silu_autograd.cpp).
#include <torch/library.h>

TORCH_LIBRARY(provg, m) {
  m.def("mask_to_box(Tensor masks) -> (Tensor boxes, Tensor valid)");
  // PCM gates (Eq. 1–7): the kernels behind provg.ops.{survey,locate,verify}_gate.
  m.def("survey_gate_forward(Tensor x, Tensor q, Tensor k, Tensor v, Tensor key_mask, int heads) -> Tensor");
  m.def(
      "survey_gate_backward(Tensor grad, Tensor x, Tensor q, Tensor k, Tensor v, Tensor key_mask, int heads) -> "
      "(Tensor dx, Tensor dq, Tensor dk, Tensor dv)");
  m.def("locate_gate_forward(Tensor x, Tensor w, Tensor b, Tensor k, Tensor v, Tensor key_mask) -> Tensor");
  m.def(
      "locate_gate_backward(Tensor grad, Tensor x, Tensor w, Tensor b, Tensor k, Tensor v, Tensor key_mask) -> "
      "(Tensor dx, Tensor dw, Tensor db, Tensor dk, Tensor dv)");
  m.def("verify_gate_forward(Tensor x, Tensor k, Tensor v, Tensor key_mask, Tensor w_q) -> Tensor");
  m.def(
      "verify_gate_backward(Tensor grad, Tensor x, Tensor k, Tensor v, Tensor key_mask, Tensor w_q) -> "
      "(Tensor dx, Tensor dk, Tensor dv, Tensor dw_q)");
  // Their eager entry points, with the autograd node in C++ (csrc/gate_autograd.cpp).
  m.def("survey_gate_eager(Tensor x, Tensor q, Tensor k, Tensor v, Tensor key_mask, int heads) -> Tensor");
  m.def("locate_gate_eager(Tensor x, Tensor w, Tensor b, Tensor k, Tensor v, Tensor key_mask) -> Tensor");
  m.def("verify_gate_eager(Tensor x, Tensor k, Tensor v, Tensor key_mask, Tensor w_q) -> Tensor");
  // RepVGG block (Sec. 4.3): the training-mode fused tail SiLU(Σ_i BN_i(x_i)) and the deploy-mode
  // convolution SiLU(conv3×3(x) + b) [+ r]: the kernels behind provg.ops.{rep_bn_add_silu,conv3x3_bias_silu}.
  m.def(
      "rep_bn_add_silu_forward(Tensor[] inputs, Tensor weight, Tensor bias, Tensor mean, Tensor var, "
      "bool training, float eps) -> (Tensor y, Tensor mean, Tensor var)");
  m.def(
      "rep_bn_add_silu_backward(Tensor grad, Tensor[] inputs, Tensor weight, Tensor bias, Tensor mean, "
      "Tensor var, bool training, float eps) -> (Tensor[] dinputs, Tensor dweight, Tensor dbias)");
  // The eager entry point with its autograd in C++ (csrc/rep_bn_add_silu_autograd.cpp); updates the running
  // statistics in place in training and advances the counters (batch norms' num_batches_tracked) by one.
  m.def(
      "rep_bn_add_silu_eager(Tensor[] inputs, Tensor?[] weights, Tensor?[] biases, Tensor(a!)[] running_means, "
      "Tensor(b!)[] running_vars, Tensor(c!)[] counters, bool training, float[] momenta, float eps) -> Tensor");
  m.def("conv3x3_bias_silu_forward(Tensor x, Tensor weight, Tensor bias, Tensor? residual) -> Tensor");
  // The same convolution by Winograd F(2×2, 3×3) (CPU; csrc/cpu/conv3x3_winograd_cpu.cpp): u is the
  // (16, C_in, C_out) filter transform of the (C_out, C_in, 3, 3) weight.
  m.def("conv3x3_winograd_weight(Tensor weight) -> Tensor");
  m.def("conv3x3_bias_silu_winograd_forward(Tensor x, Tensor u, Tensor bias, Tensor? residual) -> Tensor");
}
