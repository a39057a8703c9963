// CUDA kernels of provg::verify_gate_{forward,backward} (Eq. 5–7). Column reductions over blocks of
// positions give the channel means (forward) and Σ_p grad·x (backward); the per-channel attention over
// the attribute tokens (C × N per batch item) runs as ATen operations; a scaling kernel writes
// y = x·gate or dx = grad·gate + dmean/P.
#include <torch/library.h>

#include "../gates.h"
#include "gate_common.cuh"

namespace provg {
namespace {

using namespace cuda;

template <typename scalar_t, typename acc_t>
__global__ void scale_kernel(const scalar_t* __restrict__ a,  // (B, P, C)
                             const acc_t* __restrict__ scale,  // (B, C)
                             const acc_t* __restrict__ shift,  // (B, C) or null
                             scalar_t* __restrict__ out, int64_t P, int64_t C, int64_t total) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, b = i / (P * C);
    acc_t value = static_cast<acc_t>(a[i]) * scale[b * C + c];
    if (shift) value += shift[b * C + c];
    out[i] = static_cast<scalar_t>(value);
  }
}

at::Tensor scale_rows(const at::Tensor& a, const at::Tensor& scale, const at::Tensor* shift) {
  at::Tensor out = at::empty_like(a);
  const int64_t total = a.numel();
  if (total == 0) return out;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "verify_scale", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scale_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(), shift ? shift->const_data_ptr<acc_t>() : nullptr,
        out.data_ptr<scalar_t>(), a.size(1), a.size(2), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

struct ChannelAttention {
  at::Tensor query, weights, gate;  // (B, C), (B, C, N), (B, C)
};

ChannelAttention channel_attention(const at::Tensor& means, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& mask, const at::Tensor& w_q) {
  const auto acc = means.scalar_type();
  at::Tensor query = w_q.to(acc).reshape({}) * means;
  at::Tensor valid = mask.unsqueeze(1);
  at::Tensor scores = (query.unsqueeze(2) * k.to(acc).unsqueeze(1)).masked_fill(valid.logical_not(), -INFINITY);
  at::Tensor top = std::get<0>(scores.max(2, true));
  top = at::where(at::isinf(top), at::zeros_like(top), top);
  at::Tensor e = at::exp(scores - top) * valid;
  at::Tensor total = e.sum(2, true);
  at::Tensor weights = e / at::where(total == 0, at::ones_like(total), total);
  at::Tensor gate = at::sigmoid((weights * v.to(acc).unsqueeze(1)).sum(2));
  return {query, weights, gate};
}

void check(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
           const at::Tensor& w_q) {
  TORCH_CHECK(x.is_cuda() && k.is_cuda() && v.is_cuda() && mask.is_cuda() && w_q.is_cuda(),
              "verify_gate_cuda: all inputs must be CUDA tensors");
  TORCH_CHECK(x.dim() == 3 && k.dim() == 2 && v.sizes() == k.sizes() && w_q.numel() == 1,
              "verify_gate_cuda: x (B, P, C), k, v (B, N), w_q scalar expected");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(1) == k.size(1),
              "verify_gate_cuda: key_mask must be bool (B, N)");
}

}  // namespace

at::Tensor verify_gate_forward_cuda(const at::Tensor& x_, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& mask, const at::Tensor& w_q) {
  check(x_, k, v, mask, w_q);
  const c10::cuda::CUDAGuard guard(x_.device());
  at::Tensor x = x_.contiguous();
  if (x.numel() == 0) return at::empty_like(x);
  at::Tensor means = column_sums(x, nullptr, nullptr) / static_cast<double>(x.size(1));
  return scale_rows(x, channel_attention(means, k, v, mask, w_q).gate.contiguous(), nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_gate_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
    const at::Tensor& w_q) {
  check(x_, k, v, mask, w_q);
  const c10::cuda::CUDAGuard guard(x_.device());
  at::Tensor x = x_.contiguous(), grad = grad_.contiguous().to(x_.scalar_type());
  if (x.numel() == 0) return {at::empty_like(x), at::zeros_like(k), at::zeros_like(v), at::zeros_like(w_q)};
  const double positions = static_cast<double>(x.size(1));
  at::Tensor means = column_sums(x, nullptr, nullptr) / positions;
  at::Tensor products = column_sums(grad, &x, nullptr);  // Σ_p grad · x
  ChannelAttention att = channel_attention(means, k, v, mask, w_q);
  const auto acc = means.scalar_type();
  at::Tensor dattention = products * att.gate * (1 - att.gate);
  at::Tensor dweights = dattention.unsqueeze(2) * v.to(acc).unsqueeze(1);
  at::Tensor dscores = att.weights * (dweights - (att.weights * dweights).sum(2, true));
  at::Tensor dquery = (dscores * k.to(acc).unsqueeze(1)).sum(2);
  at::Tensor dk = (dscores * att.query.unsqueeze(2)).sum(1);
  at::Tensor dv = (att.weights * dattention.unsqueeze(2)).sum(1);
  at::Tensor dw_q = (dquery * means).sum();
  at::Tensor shift = (w_q.to(acc).reshape({}) * dquery / positions).contiguous();
  at::Tensor dx = scale_rows(grad, att.gate.contiguous(), &shift);
  return {dx, dk.to(k.scalar_type()), dv.to(v.scalar_type()), dw_q.reshape(w_q.sizes()).to(w_q.scalar_type())};
}

TORCH_LIBRARY_IMPL(provg, CUDA, m) {
  m.impl("verify_gate_forward", &verify_gate_forward_cuda);
  m.impl("verify_gate_backward", &verify_gate_backward_cuda);
}

}  // namespace provg
