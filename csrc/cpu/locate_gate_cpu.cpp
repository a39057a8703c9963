// CPU kernels of provg::locate_gate_{forward,backward} (Eq. 3–4). Each position reads its row of x
// once: the scalar query x·w + b, the attention over the spatial-cue tokens and the gated row all come
// from it. Gradients of k, v, w and b are summed over positions through per-block partials.
#include <torch/library.h>

#include <vector>

#include "../gates.h"
#include "gate_common.h"

namespace provg {
namespace {

using namespace cpu;

struct Shape {
  int64_t batch, positions, channels, keys;
};

Shape check_locate(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& mask) {
  const char* op = "locate_gate";
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, P, C), got ", x.sizes());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(2), op, ": w must be (C,) with C = ", x.size(2), ", got ",
              w.sizes());
  TORCH_CHECK(b.numel() == 1, op, ": b must be a scalar tensor, got ", b.sizes());
  TORCH_CHECK(k.dim() == 2 && k.size(0) == x.size(0), op, ": k must be (B, N), got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must match k ", k.sizes(), ", got ", v.sizes());
  for (const auto* t : {&w, &b, &k, &v})
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": all inputs must share x's dtype ", x.scalar_type());
  check_keys(mask, x.size(0), op);
  TORCH_CHECK(mask.size(1) == k.size(1), op, ": key_mask has ", mask.size(1), " keys, k has ", k.size(1));
  return {x.size(0), x.size(1), x.size(2), k.size(1)};
}

// The gate of one position; fills the attention weights.
template <typename T>
T position_gate(const T* x_row, const T* w, T bias, const T* keys, const T* values, const bool* valid,
                const Shape& s, T* scores, T* weights, T* query) {
  *query = dot(x_row, w, s.channels) + bias;
  for (int64_t n = 0; n < s.keys; ++n) scores[n] = valid[n] ? *query * keys[n] : T(0);
  masked_softmax(scores, valid, s.keys, weights);
  T attention = T(0);
  for (int64_t n = 0; n < s.keys; ++n) attention += weights[n] * values[n];
  return sigmoid(attention);
}

template <typename T>
void forward_kernel(const T* x, const T* w, T bias, const T* k, const T* v, const bool* mask, T* y, const Shape& s) {
  const int64_t blocks = num_blocks(s.positions);
  at::parallel_for(0, s.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(s.keys), weights(s.keys);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / blocks, first = (job % blocks) * kBlock;
      const int64_t last = std::min(s.positions, first + kBlock);
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = (b * s.positions + p) * s.channels;
        T query;
        const T g = position_gate(x + row, w, bias, k + b * s.keys, v + b * s.keys, mask + b * s.keys, s,
                                  scores.data(), weights.data(), &query);
#pragma omp simd
        for (int64_t c = 0; c < s.channels; ++c) y[row + c] = x[row + c] * g;
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* x, const T* w, T bias, const T* k, const T* v, const bool* mask,
                     T* dx, T* dk_blocks, T* dv_blocks, T* dw_blocks, T* db_blocks, const Shape& s) {
  const int64_t blocks = num_blocks(s.positions);
  at::parallel_for(0, s.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(s.keys), weights(s.keys), dweights(s.keys), dscores(s.keys);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / blocks, first = (job % blocks) * kBlock;
      const int64_t last = std::min(s.positions, first + kBlock);
      const T* keys = k + b * s.keys;
      const T* values = v + b * s.keys;
      const bool* valid = mask + b * s.keys;
      T* dk = dk_blocks + job * s.keys;
      T* dv = dv_blocks + job * s.keys;
      T* dw = dw_blocks + job * s.channels;
      std::fill(dk, dk + s.keys, T(0));
      std::fill(dv, dv + s.keys, T(0));
      std::fill(dw, dw + s.channels, T(0));
      T db = T(0);
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = (b * s.positions + p) * s.channels;
        const T* x_row = x + row;
        const T* g_row = grad + row;
        T query;
        const T g = position_gate(x_row, w, bias, keys, values, valid, s, scores.data(), weights.data(), &query);
        const T dattention = dot(g_row, x_row, s.channels) * g * (T(1) - g);
        for (int64_t n = 0; n < s.keys; ++n) {
          dweights[n] = valid[n] ? dattention * values[n] : T(0);
          dv[n] += weights[n] * dattention;
        }
        softmax_backward(weights.data(), dweights.data(), s.keys, dscores.data());
        T dquery = T(0);
        for (int64_t n = 0; n < s.keys; ++n) {
          dquery += dscores[n] * keys[n];
          dk[n] += dscores[n] * query;
        }
        T* dx_row = dx + row;
#pragma omp simd
        for (int64_t c = 0; c < s.channels; ++c) dx_row[c] = g_row[c] * g + dquery * w[c];
        axpy(dquery, x_row, dw, s.channels);
        db += dquery;
      }
      db_blocks[job] = db;
    }
  });
}

}  // namespace

at::Tensor locate_gate_forward_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                   const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  const Shape s = check_locate(x, w, b, k, v, mask);
  auto xc = x.contiguous(), wc = w.contiguous(), kc = k.contiguous(), vc = v.contiguous(), mc = mask.contiguous();
  at::Tensor y = at::empty_like(xc);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "locate_gate_forward_cpu", [&] {
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), b.item<scalar_t>(),
                             kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(), mc.const_data_ptr<bool>(),
                             y.data_ptr<scalar_t>(), s);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> locate_gate_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& mask) {
  const Shape s = check_locate(x, w, b, k, v, mask);
  TORCH_CHECK(grad.sizes() == x.sizes(), "locate_gate: grad must match x");
  auto gc = grad.contiguous().to(x.scalar_type()), xc = x.contiguous(), wc = w.contiguous();
  auto kc = k.contiguous(), vc = v.contiguous(), mc = mask.contiguous();
  const int64_t blocks = num_blocks(s.positions);
  at::Tensor dx = at::empty_like(xc);
  at::Tensor dk_blocks = at::zeros({s.batch, blocks, s.keys}, xc.options());
  at::Tensor dv_blocks = at::zeros({s.batch, blocks, s.keys}, xc.options());
  at::Tensor dw_blocks = at::zeros({s.batch, blocks, s.channels}, xc.options());
  at::Tensor db_blocks = at::zeros({s.batch, blocks}, xc.options());
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "locate_gate_backward_cpu", [&] {
      backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                wc.const_data_ptr<scalar_t>(), b.item<scalar_t>(), kc.const_data_ptr<scalar_t>(),
                                vc.const_data_ptr<scalar_t>(), mc.const_data_ptr<bool>(), dx.data_ptr<scalar_t>(),
                                dk_blocks.data_ptr<scalar_t>(), dv_blocks.data_ptr<scalar_t>(),
                                dw_blocks.data_ptr<scalar_t>(), db_blocks.data_ptr<scalar_t>(), s);
    });
  }
  // w and b are shared by the batch: their partials are summed over (B, blocks) in order.
  at::Tensor dw = reduce_blocks(dw_blocks.reshape({1, s.batch * blocks, s.channels})).reshape({s.channels});
  at::Tensor db = reduce_blocks(db_blocks.reshape({1, s.batch * blocks})).reshape(b.sizes());
  return {dx, dw, db, reduce_blocks(dk_blocks), reduce_blocks(dv_blocks)};
}

TORCH_LIBRARY_IMPL(provg, CPU, m) {
  m.impl("locate_gate_forward", &locate_gate_forward_cpu);
  m.impl("locate_gate_backward", &locate_gate_backward_cpu);
}

}  // namespace provg
