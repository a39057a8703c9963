// CPU kernels of provg::survey_gate_{forward,backward} (Eq. 1–2). Work is split into blocks of
// positions per batch item, run in parallel; per position and head the scores over the few language
// tokens live in a small buffer. The key/value gradients are summed over positions through per-block
// partials reduced in block order, so results do not depend on the thread count.
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../gates.h"
#include "gate_common.h"

namespace provg {
namespace {

using namespace cpu;

struct Shape {
  int64_t batch, positions, channels, keys, heads, width;
};

Shape check_survey(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& mask, int64_t heads) {
  const char* op = "survey_gate";
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, P, C), got ", x.sizes());
  TORCH_CHECK(q.sizes() == x.sizes(), op, ": q must match x ", x.sizes(), ", got ", q.sizes());
  TORCH_CHECK(k.dim() == 3 && k.size(0) == x.size(0) && k.size(2) == x.size(2), op,
              ": k must be (B, N, C), got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must match k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(x.scalar_type() == q.scalar_type() && x.scalar_type() == k.scalar_type() &&
                  x.scalar_type() == v.scalar_type(),
              op, ": x, q, k, v must share a dtype");
  TORCH_CHECK(heads >= 1 && x.size(2) % heads == 0, op, ": channels ", x.size(2), " not divisible by heads ",
              heads);
  check_keys(mask, x.size(0), op);
  TORCH_CHECK(mask.size(1) == k.size(1), op, ": key_mask has ", mask.size(1), " keys, k has ", k.size(1));
  return {x.size(0), x.size(1), x.size(2), k.size(1), heads, x.size(2) / heads};
}

// Scores and weights of one position and head.
template <typename T>
void attend(const T* q_row, const T* keys, const bool* valid, const Shape& s, int64_t offset, T scale, T* scores,
            T* weights) {
  for (int64_t n = 0; n < s.keys; ++n)
    scores[n] = valid[n] ? scale * dot(q_row + offset, keys + n * s.channels + offset, s.width) : T(0);
  masked_softmax(scores, valid, s.keys, weights);
}

template <typename T>
void mix(const T* weights, const T* values, const Shape& s, int64_t offset, T* out) {
  for (int64_t c = 0; c < s.width; ++c) out[c] = T(0);
  for (int64_t n = 0; n < s.keys; ++n)
    if (weights[n] != T(0)) axpy(weights[n], values + n * s.channels + offset, out, s.width);
}

template <typename T>
void forward_kernel(const T* x, const T* q, const T* k, const T* v, const bool* mask, T* y, const Shape& s) {
  const T scale = T(1) / std::sqrt(T(s.width));
  const int64_t blocks = num_blocks(s.positions);
  at::parallel_for(0, s.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(s.keys), weights(s.keys), attention(s.width);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / blocks, first = (job % blocks) * kBlock;
      const int64_t last = std::min(s.positions, first + kBlock);
      const T* keys = k + b * s.keys * s.channels;
      const T* values = v + b * s.keys * s.channels;
      const bool* valid = mask + b * s.keys;
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = (b * s.positions + p) * s.channels;
        for (int64_t h = 0; h < s.heads; ++h) {
          const int64_t offset = h * s.width;
          attend(q + row, keys, valid, s, offset, scale, scores.data(), weights.data());
          mix(weights.data(), values, s, offset, attention.data());
          gate_apply(x + row + offset, attention.data(), y + row + offset, static_cast<T*>(nullptr), s.width);
        }
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* x, const T* q, const T* k, const T* v, const bool* mask, T* dx,
                     T* dq, T* dk_blocks, T* dv_blocks, const Shape& s) {
  const T scale = T(1) / std::sqrt(T(s.width));
  const int64_t blocks = num_blocks(s.positions);
  const int64_t kv = s.keys * s.channels;
  at::parallel_for(0, s.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(s.keys), weights(s.keys), dweights(s.keys), dscores(s.keys);
    std::vector<T> attention(s.width), gate(s.width), dattention(s.width);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / blocks, block = job % blocks, first = block * kBlock;
      const int64_t last = std::min(s.positions, first + kBlock);
      const T* keys = k + b * kv;
      const T* values = v + b * kv;
      const bool* valid = mask + b * s.keys;
      T* dk = dk_blocks + job * kv;
      T* dv = dv_blocks + job * kv;
      std::fill(dk, dk + kv, T(0));
      std::fill(dv, dv + kv, T(0));
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = (b * s.positions + p) * s.channels;
        for (int64_t h = 0; h < s.heads; ++h) {
          const int64_t offset = h * s.width;
          const T* g_row = grad + row + offset;
          const T* x_row = x + row + offset;
          attend(q + row, keys, valid, s, offset, scale, scores.data(), weights.data());
          mix(weights.data(), values, s, offset, attention.data());
          gate_apply(x_row, attention.data(), dattention.data(), gate.data(), s.width);  // dattention: scratch
          for (int64_t c = 0; c < s.width; ++c) {
            const T g = gate[c];
            dx[row + offset + c] = g_row[c] * g;
            dattention[c] = g_row[c] * x_row[c] * g * (T(1) - g);
          }
          for (int64_t n = 0; n < s.keys; ++n) {
            dweights[n] = valid[n] ? dot(dattention.data(), values + n * s.channels + offset, s.width) : T(0);
            if (weights[n] != T(0)) axpy(weights[n], dattention.data(), dv + n * s.channels + offset, s.width);
          }
          softmax_backward(weights.data(), dweights.data(), s.keys, dscores.data());
          T* dq_row = dq + row + offset;
          for (int64_t c = 0; c < s.width; ++c) dq_row[c] = T(0);
          for (int64_t n = 0; n < s.keys; ++n) {
            if (dscores[n] == T(0)) continue;
            axpy(scale * dscores[n], keys + n * s.channels + offset, dq_row, s.width);
            axpy(scale * dscores[n], q + row + offset, dk + n * s.channels + offset, s.width);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor survey_gate_forward_cpu(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& mask, int64_t heads) {
  const Shape s = check_survey(x, q, k, v, mask, heads);
  auto xc = x.contiguous(), qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  auto mc = mask.contiguous();
  at::Tensor y = at::empty_like(xc);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "survey_gate_forward_cpu", [&] {
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(),
                             kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
                             mc.const_data_ptr<bool>(), y.data_ptr<scalar_t>(), s);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> survey_gate_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& mask, int64_t heads) {
  const Shape s = check_survey(x, q, k, v, mask, heads);
  TORCH_CHECK(grad.sizes() == x.sizes(), "survey_gate: grad must match x");
  auto gc = grad.contiguous().to(x.scalar_type()), xc = x.contiguous(), qc = q.contiguous();
  auto kc = k.contiguous(), vc = v.contiguous(), mc = mask.contiguous();
  at::Tensor dx = at::empty_like(xc), dq = at::empty_like(qc);
  const int64_t blocks = num_blocks(s.positions);
  at::Tensor dk_blocks = at::empty({s.batch, blocks, s.keys, s.channels}, xc.options());
  at::Tensor dv_blocks = at::empty({s.batch, blocks, s.keys, s.channels}, xc.options());
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "survey_gate_backward_cpu", [&] {
      backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(),
                                vc.const_data_ptr<scalar_t>(), mc.const_data_ptr<bool>(), dx.data_ptr<scalar_t>(),
                                dq.data_ptr<scalar_t>(), dk_blocks.data_ptr<scalar_t>(),
                                dv_blocks.data_ptr<scalar_t>(), s);
    });
  }
  return {dx, dq, reduce_blocks(dk_blocks), reduce_blocks(dv_blocks)};
}

TORCH_LIBRARY_IMPL(provg, CPU, m) {
  m.impl("survey_gate_forward", &survey_gate_forward_cpu);
  m.impl("survey_gate_backward", &survey_gate_backward_cpu);
}

}  // namespace provg
