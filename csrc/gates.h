// PCM gate operators (ProVG Eq. 1–7, DESIGN §5): fused forward and backward kernels.
//
//   survey_gate(x, q, k, v, mask, heads) = x ⊙ σ(softmax(q·kᵀ/√(C/heads) + mask)·v)    per head
//   locate_gate(x, w, b, k, v, mask)     = x ⊙ σ(softmax((x·w + b)·kᵀ + mask)·v)        one scalar a position
//   verify_gate(x, k, v, mask, w_q)      = x ⊙ σ(softmax(w_q·mean_P(x)·kᵀ + mask)·v)    one scalar a channel
//
// x, q: (B, P, C); survey k, v: (B, N, C); locate / verify k, v: (B, N); mask: (B, N) bool, true = a
// valid key. A query whose keys are all masked attends to nothing: attention 0, gate 0.5, and no
// gradient to k or v.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace provg {

at::Tensor survey_gate_forward_cpu(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& mask, int64_t heads);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> survey_gate_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& mask, int64_t heads);

at::Tensor locate_gate_forward_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                   const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> locate_gate_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& mask);

at::Tensor verify_gate_forward_cpu(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& mask, const at::Tensor& w_q);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_gate_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
    const at::Tensor& w_q);

#ifdef PROVG_WITH_CUDA
at::Tensor survey_gate_forward_cuda(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v, const at::Tensor& mask, int64_t heads);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> survey_gate_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& mask, int64_t heads);
at::Tensor locate_gate_forward_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> locate_gate_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& mask);
at::Tensor verify_gate_forward_cuda(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& mask, const at::Tensor& w_q);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_gate_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
    const at::Tensor& w_q);
#endif

}  // namespace provg
