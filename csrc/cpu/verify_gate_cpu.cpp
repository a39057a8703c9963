// CPU kernels of provg::verify_gate_{forward,backward} (Eq. 5–7). The channel means need every position
// before any gate is known, so the forward reads x twice (means, then the gated write) and the
// backward reads grad and x once (for Σ_p x and Σ_p grad·x), then grad again to write dx. The
// per-channel attention in between (C × N per batch item) is vectorized across channels
// (scalar_query_gates): a scalar loop per channel took about 50 µs of a 325 µs forward+backward at stage 2,
// B = 1, on one thread. Calls whose tensors take more than half the last-level cache write y and dx with
// streaming stores (stream_writes), which keep x in the cache for the second read instead of evicting it
// for lines nothing rereads.
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../gates.h"
#include "gate_common.h"

namespace provg {
namespace {

using namespace cpu;

struct Shape {
  int64_t batch, positions, channels, keys;
};

Shape check_verify(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                   const at::Tensor& w_q) {
  const char* op = "verify_gate";
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, P, C), got ", x.sizes());
  TORCH_CHECK(k.dim() == 2 && k.size(0) == x.size(0), op, ": k must be (B, N), got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must match k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(w_q.numel() == 1, op, ": w_q must be a scalar tensor, got ", w_q.sizes());
  for (const auto* t : {&k, &v, &w_q})
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": all inputs must share x's dtype ", x.scalar_type());
  check_keys(mask, x.size(0), op);
  TORCH_CHECK(mask.size(1) == k.size(1), op, ": key_mask has ", mask.size(1), " keys, k has ", k.size(1));
  return {x.size(0), x.size(1), x.size(2), k.size(1)};
}

// Batch item b's keys, values and key mask for scalar_query_gates (each channel's mean is a query).
template <typename T>
Attention<T> keys_of(const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, int64_t b, const Shape& s) {
  return {k.const_data_ptr<T>() + b * s.keys, v.const_data_ptr<T>() + b * s.keys,
          mask.const_data_ptr<bool>() + b * s.keys, s.keys};
}

// Per-channel sums over positions, through per-(b, block) partials: Σ_p x[p, c] and, when ``grad`` is
// given, Σ_p grad[p, c]·x[p, c] in the same read of x. Returns (B, C) tensors.
template <typename T>
std::pair<at::Tensor, at::Tensor> column_sums(const T* x, const T* grad, const Shape& s,
                                              const at::TensorOptions& options) {
  const Blocks blocks(s.positions, kBlock);
  at::Tensor sums = at::zeros({s.batch, blocks.count, s.channels}, options);
  at::Tensor products = at::zeros({grad ? s.batch : 0, blocks.count, s.channels}, options);
  T* sum_out = sums.data_ptr<T>();
  T* product_out = products.data_ptr<T>();
  at::parallel_for(0, s.batch * blocks.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const auto [b, first, last] = blocks.job(job);
      T* acc = sum_out + job * s.channels;
      T* product = grad ? product_out + job * s.channels : nullptr;
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = (b * s.positions + p) * s.channels;
        axpy(T(1), x + row, acc, s.channels);
        if (product) {
#pragma omp simd
          for (int64_t c = 0; c < s.channels; ++c) product[c] += grad[row + c] * x[row + c];
        }
      }
    }
  });
  return {reduce_blocks(sums), grad ? reduce_blocks(products) : products};
}

// out[b, p, c] = a[b, p, c] · scale[b, c] + shift[b, c] (shift optional).
template <typename T>
void scale_rows(const T* a, const T* scale, const T* shift, T* out, const Shape& s, bool streaming) {
  using Vec = at::vec::Vectorized<T>;
  const Blocks blocks(s.positions, kBlock);
  at::parallel_for(0, s.batch * blocks.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const auto [b, first, last] = blocks.job(job);
      const T* sc = scale + b * s.channels;
      const T* sh = shift ? shift + b * s.channels : nullptr;
      for (int64_t p = first; p < last; ++p) {
        const T* in = a + (b * s.positions + p) * s.channels;
        T* row = out + (b * s.positions + p) * s.channels;
        if (sh)
          write_row(
              row, s.channels, streaming,
              [&](int64_t c) { return Vec::loadu(in + c) * Vec::loadu(sc + c) + Vec::loadu(sh + c); },
              [&](int64_t c) { return in[c] * sc[c] + sh[c]; });
        else
          write_row(
              row, s.channels, streaming, [&](int64_t c) { return Vec::loadu(in + c) * Vec::loadu(sc + c); },
              [&](int64_t c) { return in[c] * sc[c]; });
      }
    }
    if (streaming) stream_fence();
  });
}

}  // namespace

at::Tensor verify_gate_forward_cpu(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& mask, const at::Tensor& w_q) {
  const Shape s = check_verify(x, k, v, mask, w_q);
  auto xc = x.contiguous(), kc = k.contiguous(), vc = v.contiguous(), mc = mask.contiguous();
  at::Tensor y = at::empty_like(xc);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "verify_gate_forward_cpu", [&] {
    using T = scalar_t;
    const T* xp = xc.const_data_ptr<T>();
    const at::Tensor sums = column_sums<T>(xp, nullptr, s, xc.options()).first;
    at::Tensor gate = at::empty({s.batch, s.channels}, xc.options());
    const T wq = w_q.item<T>();
    const T* sp = sums.const_data_ptr<T>();
    T* gp = gate.data_ptr<T>();
    at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> query(s.channels);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t c = 0; c < s.channels; ++c) query[c] = wq * (sp[b * s.channels + c] / T(s.positions));
        scalar_query_gates<T>(query.data(), s.channels, keys_of<T>(kc, vc, mc, b, s), gp + b * s.channels, nullptr,
                              nullptr, nullptr, nullptr, nullptr);
      }
    });
    scale_rows<T>(xp, gp, nullptr, y.data_ptr<T>(), s, stream_writes(2 * xc.numel() * int64_t(sizeof(T))));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_gate_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
    const at::Tensor& w_q) {
  const Shape s = check_verify(x, k, v, mask, w_q);
  TORCH_CHECK(grad.sizes() == x.sizes(), "verify_gate: grad must match x");
  auto gc = grad.contiguous().to(x.scalar_type()), xc = x.contiguous(), kc = k.contiguous();
  auto vc = v.contiguous(), mc = mask.contiguous();
  at::Tensor dx = at::empty_like(xc);
  at::Tensor dk = at::zeros({s.batch, s.keys}, xc.options());
  at::Tensor dv = at::zeros({s.batch, s.keys}, xc.options());
  at::Tensor dwq = at::zeros({s.batch}, xc.options());
  if (x.numel() == 0) return {dx, dk, dv, dwq.sum().reshape(w_q.sizes())};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "verify_gate_backward_cpu", [&] {
    using T = scalar_t;
    const T* xp = xc.const_data_ptr<T>();
    const T* gp = gc.const_data_ptr<T>();
    at::Tensor sums, products;  // Σ_p x and Σ_p grad·x per channel
    std::tie(sums, products) = column_sums<T>(xp, gp, s, xc.options());
    at::Tensor gate = at::empty({s.batch, s.channels}, xc.options());
    at::Tensor shift = at::empty({s.batch, s.channels}, xc.options());  // dmean / P
    const T wq = w_q.item<T>();
    const T inverse_p = T(1) / T(s.positions);
    at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
      constexpr int64_t S = at::vec::Vectorized<T>::size();
      std::vector<T> mean(s.channels), query(s.channels), dquery(s.channels);
      std::vector<T> exps(s.keys * S), dk_lanes(s.keys * S), dv_lanes(s.keys * S);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = b * s.channels;
        for (int64_t c = 0; c < s.channels; ++c) {
          mean[c] = sums.const_data_ptr<T>()[row + c] * inverse_p;
          query[c] = wq * mean[c];
        }
        std::fill(dk_lanes.begin(), dk_lanes.end(), T(0));
        std::fill(dv_lanes.begin(), dv_lanes.end(), T(0));
        // ∂L/∂gate_c = Σ_p grad·x (products); dquery_c comes back for the means' share of dx.
        scalar_query_gates<T>(query.data(), s.channels, keys_of<T>(kc, vc, mc, b, s), gate.data_ptr<T>() + row,
                              products.const_data_ptr<T>() + row, dquery.data(), exps.data(), dk_lanes.data(),
                              dv_lanes.data());
        for (int64_t n = 0; n < s.keys; ++n) {
          T dk_n = T(0), dv_n = T(0);
          for (int64_t lane = 0; lane < S; ++lane) {
            dk_n += dk_lanes[n * S + lane];
            dv_n += dv_lanes[n * S + lane];
          }
          dk.data_ptr<T>()[b * s.keys + n] = dk_n;
          dv.data_ptr<T>()[b * s.keys + n] = dv_n;
        }
        T dwq_b = T(0);
        for (int64_t c = 0; c < s.channels; ++c) {
          shift.data_ptr<T>()[row + c] = wq * dquery[c] * inverse_p;
          dwq_b += dquery[c] * mean[c];
        }
        dwq.data_ptr<T>()[b] = dwq_b;
      }
    });
    scale_rows<T>(gp, gate.const_data_ptr<T>(), shift.const_data_ptr<T>(), dx.data_ptr<T>(), s,
                  stream_writes(3 * xc.numel() * int64_t(sizeof(T))));  // grad, x, dx
  });
  at::Tensor dwq_total = at::zeros({}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "verify_gate_dwq", [&] {
    scalar_t total = 0;
    for (int64_t b = 0; b < s.batch; ++b) total += dwq.const_data_ptr<scalar_t>()[b];
    dwq_total.fill_(total);
  });
  return {dx, dk, dv, dwq_total.reshape(w_q.sizes())};
}

TORCH_LIBRARY_IMPL(provg, CPU, m) {
  m.impl("verify_gate_forward", &verify_gate_forward_cpu);
  m.impl("verify_gate_backward", &verify_gate_backward_cpu);
}

}  // namespace provg
