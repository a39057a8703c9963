// CPU kernels of provg::survey_gate_{forward,backward} (Eq. 1–2). Positions are cut into jobs of kChunk positions per
// batch item, handed to the threads as they ask (parallel_jobs), and each job into tiles (tile_rows) whose
// scores, weights and attention stay in L1/L2: per tile and head the attention is a few register-blocked products
// (tile_gemm.h) around a vectorized masked softmax and a fused sigmoid gate, so x and q are read once and y written
// once. Only valid tokens enter the products (packed per batch item), so a padded expression costs what its real tokens
// cost. The key/value gradients are summed over positions through per-job partials reduced in job order, so results do
// not depend on the thread count. Calls whose tensors exceed half the last-level cache (stage 1 at B = 1 already) write
// y, dx and dq with streaming stores: the lines go to memory without first being read for ownership, a quarter of
// the forward's memory traffic (AMD EPYC, 2 vCPUs, stage 1, B = 2: forward 2.03 → 1.73 ms; bench_pcm.py forward +
// backward 11–19% faster at stages 1 and 2).
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <vector>

#include "../gates.h"
#include "gate_common.h"
#include "tile_gemm.h"

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

constexpr int64_t kChunk = 128;  // positions per job: the unit of work and of the k/v gradient partials

// Positions per tile for head slices of width_pad values: as many as keep a tile's attention within 64 KB, from 32 to
// a whole job (stage 1: 128, stage 2: 64, stages 3–4: 32). Larger tiles load and store the per-job k/v gradient
// partials fewer times. AMD EPYC, 2 vCPUs, bench_pcm.py, three A/B rounds against 32 everywhere, forward+backward at
// B = 2: stage 1 7.34–7.90 → 6.38–6.64 ms, stage 2 3.06–3.29 → 2.84–3.08 ms. 16 positions were 13–21% slower than 32.
template <typename T>
int64_t tile_rows(int64_t width_pad) {
  return std::clamp<int64_t>((int64_t(64) << 10) / (width_pad * int64_t(sizeof(T))), 32, kChunk);
}

// Per (batch item, head) operands over the valid tokens only (a masked token has weight 0 and gets no
// gradient, so it is left out of every product): keys_t = scale·Kᵀ and values_t = Vᵀ (width × keys_pad)
// for the score products, keys and values (count × width_pad) for the mixing products, and bias
// (B × keys_pad): 0 for a valid token, −∞ for the padding. ``count`` is the most valid tokens of any
// batch item; token j of item b is input token index[b·count + j] (items with fewer valid tokens are
// padded with zero rows, whose weights are zero, and index −1).
template <typename T>
struct Packed {
  at::Tensor keys_t, values_t, keys, values, bias;
  std::vector<int64_t> index;
  int64_t count, keys_pad, width_pad;
};

template <typename T>
Packed<T> pack(const T* k, const T* v, const bool* mask, const Shape& s, T scale, const at::TensorOptions& options) {
  Packed<T> p;
  p.count = 0;
  for (int64_t b = 0; b < s.batch; ++b)
    p.count = std::max<int64_t>(p.count, std::count(mask + b * s.keys, mask + (b + 1) * s.keys, true));
  p.index.assign(s.batch * p.count, -1);
  p.keys_pad = padded<T>(p.count);
  p.width_pad = padded<T>(s.width);
  p.keys_t = at::zeros({s.batch, s.heads, s.width, p.keys_pad}, options);
  p.values_t = at::zeros({s.batch, s.heads, s.width, p.keys_pad}, options);
  p.keys = at::zeros({s.batch, s.heads, p.count, p.width_pad}, options);
  p.values = at::zeros({s.batch, s.heads, p.count, p.width_pad}, options);
  p.bias = at::full({s.batch, p.keys_pad}, -std::numeric_limits<T>::infinity(), options);
  T *kt = p.keys_t.template data_ptr<T>(), *vt = p.values_t.template data_ptr<T>();
  T *kp = p.keys.template data_ptr<T>(), *vp = p.values.template data_ptr<T>(), *bias = p.bias.template data_ptr<T>();
  for (int64_t b = 0; b < s.batch; ++b) {
    int64_t j = 0;
    for (int64_t n = 0; n < s.keys; ++n) {
      if (!mask[b * s.keys + n]) continue;
      p.index[b * p.count + j] = n;
      bias[b * p.keys_pad + j] = T(0);
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t c = 0; c < s.width; ++c) {
          const int64_t in = (b * s.keys + n) * s.channels + h * s.width + c;
          const int64_t bh = b * s.heads + h;
          kt[(bh * s.width + c) * p.keys_pad + j] = scale * k[in];
          vt[(bh * s.width + c) * p.keys_pad + j] = v[in];
          kp[(bh * p.count + j) * p.width_pad + c] = k[in];
          vp[(bh * p.count + j) * p.width_pad + c] = v[in];
        }
      ++j;
    }
  }
  return p;
}

// rows[r, :] ← softmax(rows[r, :] + bias), all zero when no token is valid.
template <typename T>
void softmax_rows(T* rows, int64_t count, int64_t width, const T* bias) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t S = Vec::size();
  const T none = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < count; ++r) {
    T* row = rows + r * width;
    Vec top(none);
    for (int64_t j = 0; j < width; j += S)
      top = at::vec::maximum(top, Vec::loadu(row + j) + Vec::loadu(bias + j));
    const T m = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, top);
    if (m == none) {
      std::fill(row, row + width, T(0));
      continue;
    }
    Vec total(T(0));
    for (int64_t j = 0; j < width; j += S) {
      const Vec e = exp_vec(Vec::loadu(row + j) + Vec::loadu(bias + j) - Vec(m));
      e.store(row + j);
      total = total + e;
    }
    const Vec inverse(T(1) / at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, total));
    for (int64_t j = 0; j < width; j += S) (Vec::loadu(row + j) * inverse).store(row + j);
  }
}

// grads[r, :] ← scale · w ⊙ (g − Σ w·g): the softmax backward, with the score scale folded in.
template <typename T>
void softmax_backward_rows(const T* weights, T* grads, int64_t count, int64_t width, T scale) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t S = Vec::size();
  for (int64_t r = 0; r < count; ++r) {
    const T* w = weights + r * width;
    T* g = grads + r * width;
    Vec acc(T(0));
    for (int64_t j = 0; j < width; j += S) acc = at::vec::fmadd(Vec::loadu(w + j), Vec::loadu(g + j), acc);
    const Vec dot(at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, acc));
    for (int64_t j = 0; j < width; j += S)
      (Vec::loadu(w + j) * (Vec::loadu(g + j) - dot) * Vec(scale)).store(g + j);
  }
}

// The attention of one tile of positions and one head: fills weights (rows × keys_pad) and attention
// (rows × width_pad, zero in the padding columns).
template <typename T>
void attend_tile(const T* q_tile, int64_t rows, int64_t b, int64_t h, const Packed<T>& p, const Shape& s,
                 T* weights, T* attention) {
  const int64_t bh = b * s.heads + h;
  tile_gemm<T>(rows, p.keys_pad, s.width, q_tile, s.channels, 1,
               p.keys_t.template const_data_ptr<T>() + bh * s.width * p.keys_pad, p.keys_pad, weights, p.keys_pad,
               false);
  softmax_rows<T>(weights, rows, p.keys_pad, p.bias.template const_data_ptr<T>() + b * p.keys_pad);
  tile_gemm<T>(rows, p.width_pad, p.count, weights, p.keys_pad, 1,
               p.values.template const_data_ptr<T>() + bh * p.count * p.width_pad, p.width_pad, attention,
               p.width_pad, false);
}

// Whether a pass over ``tensors`` tensors of x's size writes its outputs with streaming stores: when they take more
// than half the cache (stream_writes), and every head's slice of a row of each output is whole float vectors on their
// alignment.
template <typename T>
bool streaming_rows(const Shape& s, int64_t tensors, std::initializer_list<const at::Tensor*> outputs) {
  constexpr int64_t S = at::vec::Vectorized<T>::size();
  bool aligned = std::is_same_v<T, float> && s.width % S == 0;
  for (const at::Tensor* out : outputs)
    aligned = aligned && reinterpret_cast<uintptr_t>(out->const_data_ptr()) % (S * sizeof(T)) == 0;
  return aligned && stream_writes(tensors * s.batch * s.positions * s.channels * int64_t(sizeof(T)));
}

// Stores the first n values of v at p, with a streaming store when ``streaming`` (then n is a whole vector and p on its
// alignment: streaming_rows).
template <typename T>
inline void write_row_vector(const at::vec::Vectorized<T>& v, T* p, int64_t n, bool streaming) {
  if constexpr (std::is_same_v<T, float>) {
    if (streaming) return stream_store(v, p);
  }
  v.store(p, n);
}

template <typename T>
void forward_kernel(const T* x, const T* q, const Packed<T>& p, T* y, const Shape& s, bool streaming) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t S = Vec::size();
  const int64_t chunks = (s.positions + kChunk - 1) / kChunk, tile = tile_rows<T>(p.width_pad);
  parallel_jobs(s.batch * chunks, [&](const auto& next) {
    std::vector<T> weights(tile * p.keys_pad), attention(tile * p.width_pad);
    for (int64_t job; (job = next()) >= 0;) {
      const int64_t b = job / chunks, chunk_end = std::min(s.positions, (job % chunks + 1) * kChunk);
      for (int64_t first = (job % chunks) * kChunk; first < chunk_end; first += tile) {
        const int64_t rows = std::min(tile, chunk_end - first);
        for (int64_t h = 0; h < s.heads; ++h) {
          const int64_t base = (b * s.positions + first) * s.channels + h * s.width;
          attend_tile(q + base, rows, b, h, p, s, weights.data(), attention.data());
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < s.width; c += S) {
              const int64_t n = std::min(S, s.width - c), at = base + r * s.channels + c;
              const Vec g = sigmoid_vec(Vec::loadu(attention.data() + r * p.width_pad + c));
              write_row_vector(Vec::loadu(x + at, n) * g, y + at, n, streaming);
            }
        }
      }
    }
    if (streaming) stream_fence();
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* x, const T* q, const Packed<T>& p, T* dx, T* dq, T* dk_jobs,
                     T* dv_jobs, const Shape& s, T scale, bool streaming) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t S = Vec::size();
  const int64_t chunks = (s.positions + kChunk - 1) / kChunk, tile = tile_rows<T>(p.width_pad);
  const int64_t part = p.count * p.width_pad;  // one head's k or v partial
  // With whole-vector head slices q is read in place, and dq written in place unless it streams; otherwise through
  // padded tiles.
  const bool in_place = s.width == p.width_pad, dq_in_place = in_place && !streaming;
  parallel_jobs(s.batch * chunks, [&](const auto& next) {
    std::vector<T> weights(tile * p.keys_pad), dscores(tile * p.keys_pad), dattention(tile * p.width_pad);
    std::vector<T> q_tile(in_place ? 0 : tile * p.width_pad), dq_tile(dq_in_place ? 0 : tile * p.width_pad);
    for (int64_t job; (job = next()) >= 0;) {
      const int64_t b = job / chunks, chunk_end = std::min(s.positions, (job % chunks + 1) * kChunk);
      std::fill(dk_jobs + job * s.heads * part, dk_jobs + (job + 1) * s.heads * part, T(0));
      std::fill(dv_jobs + job * s.heads * part, dv_jobs + (job + 1) * s.heads * part, T(0));
      for (int64_t first = (job % chunks) * kChunk; first < chunk_end; first += tile) {
        const int64_t rows = std::min(tile, chunk_end - first);
        for (int64_t h = 0; h < s.heads; ++h) {
          const int64_t bh = b * s.heads + h;
          const int64_t base = (b * s.positions + first) * s.channels + h * s.width;
          attend_tile(q + base, rows, b, h, p, s, weights.data(), dattention.data());
          // The gate: dx = grad·σ(A), dA = grad·x·σ'(A) (zero in the padding columns).
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < s.width; c += S) {
              const int64_t n = std::min(S, s.width - c), at = base + r * s.channels + c;
              T* da = dattention.data() + r * p.width_pad + c;
              const Vec g = sigmoid_vec(Vec::loadu(da));
              const Vec up = Vec::loadu(grad + at, n);
              (up * Vec::loadu(x + at, n) * g * (Vec(T(1)) - g)).store(da);
              write_row_vector(up * g, dx + at, n, streaming);
            }
          // dW = dA·Vᵀ, then dS = scale · W ⊙ (dW − Σ W·dW).
          tile_gemm<T>(rows, p.keys_pad, s.width, dattention.data(), p.width_pad, 1,
                       p.values_t.template const_data_ptr<T>() + bh * s.width * p.keys_pad, p.keys_pad,
                       dscores.data(), p.keys_pad, false);
          softmax_backward_rows<T>(weights.data(), dscores.data(), rows, p.keys_pad, scale);
          // dq = dS·K; dv += Wᵀ·dA; dk += dSᵀ·q.
          const T* q_rows = q + base;
          int64_t q_stride = s.channels;
          if (!in_place) {
            std::fill(q_tile.begin(), q_tile.end(), T(0));
            for (int64_t r = 0; r < rows; ++r)
              std::copy(q + base + r * s.channels, q + base + r * s.channels + s.width, q_tile.data() + r * p.width_pad);
            q_rows = q_tile.data();
            q_stride = p.width_pad;
          }
          T* dq_rows = dq_in_place ? dq + base : dq_tile.data();
          tile_gemm<T>(rows, p.width_pad, p.count, dscores.data(), p.keys_pad, 1,
                       p.keys.template const_data_ptr<T>() + bh * p.count * p.width_pad, p.width_pad, dq_rows,
                       dq_in_place ? s.channels : p.width_pad, false);
          if (!dq_in_place)
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < s.width; c += S)
                write_row_vector(Vec::loadu(dq_rows + r * p.width_pad + c), dq + base + r * s.channels + c,
                                 std::min(S, s.width - c), streaming);
          T* dv = dv_jobs + (job * s.heads + h) * part;
          T* dk = dk_jobs + (job * s.heads + h) * part;
          tile_gemm<T>(p.count, p.width_pad, rows, weights.data(), 1, p.keys_pad, dattention.data(), p.width_pad, dv,
                       p.width_pad, true);
          tile_gemm<T>(p.count, p.width_pad, rows, dscores.data(), 1, p.keys_pad, q_rows, q_stride, dk, p.width_pad,
                       true);
        }
      }
    }
    if (streaming) stream_fence();
  });
}

// (B, jobs, heads, count, width_pad) partials → (B, N, C), summed in job order; rows of masked tokens are 0.
template <typename T>
at::Tensor reduce_jobs(const T* partials, int64_t jobs, const Shape& s, const Packed<T>& p,
                       const at::TensorOptions& options) {
  at::Tensor out = at::zeros({s.batch, s.keys, s.channels}, options);
  T* o = out.data_ptr<T>();
  at::parallel_for(0, s.batch * p.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p.count, j = row % p.count, n = p.index[row];
      if (n < 0) continue;  // padding of an item with fewer valid tokens
      for (int64_t job = 0; job < jobs; ++job)
        for (int64_t h = 0; h < s.heads; ++h)
          axpy(T(1), partials + (((b * jobs + job) * s.heads + h) * p.count + j) * p.width_pad,
               o + (b * s.keys + n) * s.channels + h * s.width, s.width);
    }
  });
  return out;
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
    const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(s.width));
    const Packed<scalar_t> p = pack<scalar_t>(kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
                                              mc.const_data_ptr<bool>(), s, scale, xc.options());
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(), p,
                             y.data_ptr<scalar_t>(), s, streaming_rows<scalar_t>(s, 3, {&y}));  // x, q, y
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
  if (x.numel() == 0) return {dx, dq, at::zeros_like(kc), at::zeros_like(vc)};
  at::Tensor dk, dv;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "survey_gate_backward_cpu", [&] {
    using T = scalar_t;
    const T scale = T(1) / std::sqrt(T(s.width));
    const Packed<T> p = pack<T>(kc.const_data_ptr<T>(), vc.const_data_ptr<T>(), mc.const_data_ptr<bool>(), s,
                                scale, xc.options());
    const int64_t jobs = (s.positions + kChunk - 1) / kChunk;
    at::Tensor dk_jobs = at::empty({s.batch, jobs, s.heads, p.count, p.width_pad}, xc.options());
    at::Tensor dv_jobs = at::empty({s.batch, jobs, s.heads, p.count, p.width_pad}, xc.options());
    backward_kernel<T>(gc.const_data_ptr<T>(), xc.const_data_ptr<T>(), qc.const_data_ptr<T>(), p,
                       dx.data_ptr<T>(), dq.data_ptr<T>(), dk_jobs.data_ptr<T>(), dv_jobs.data_ptr<T>(), s, scale,
                       streaming_rows<T>(s, 5, {&dx, &dq}));  // grad, x, q, dx, dq
    dk = reduce_jobs<T>(dk_jobs.const_data_ptr<T>(), jobs, s, p, xc.options());
    dv = reduce_jobs<T>(dv_jobs.const_data_ptr<T>(), jobs, s, p, xc.options());
  });
  return {dx, dq, dk, dv};
}

TORCH_LIBRARY_IMPL(provg, CPU, m) {
  m.impl("survey_gate_forward", &survey_gate_forward_cpu);
  m.impl("survey_gate_backward", &survey_gate_backward_cpu);
}

}  // namespace provg
