// CPU kernels of provg::rep_bn_add_silu_{forward,backward}: the training-mode RepVGG tail
// SiLU(Σ_i BN_i(x_i)) (ProVG Sec. 4.3) in two passes per direction.
//
// Forward: one pass reads every branch for the shifted per-channel sums Σ(x−k), Σ(x−k)² (k = the channel's first
// element), one pass reads them again and writes y = SiLU(Σ_i scale_i·x_i + shift). Backward: one pass recomputes the
// pre-activation s and ds = grad·SiLU'(s) and reduces Σ ds and Σ ds·(x_i − μ_i); one pass writes dx_i = scale_i·ds +
// β_i·x_i + γ_i, reading ds back from dx_0's buffer where the first pass kept it (channels-last calls whose tensors
// fit the last-level cache) or recomputing it (the rest). Channels-last inputs are rows of C channels (work split
// over balanced blocks of rows, the same blocks in both passes so each thread rereads rows from its own L2,
// per-block partials; the pre-activation of a vector of channels stays in registers over a group of rows); NCHW
// inputs are planes of H·W positions (work split over channels for the sums, over planes for the writes). Partials
// are added in a fixed order, in double, so results do not depend on the thread count.
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../repconv.h"
#include "gate_common.h"

namespace provg {
namespace {

using namespace cpu;

constexpr int64_t kRows = 128;  // most channels-last rows per block of work and of partial sums (Blocks)

struct Geometry {
  int64_t batch, channels, positions;  // B, C, L = H·W
  bool channels_last;
  int64_t count() const { return batch * positions; }  // n: values per channel
};

Geometry check_inputs(at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias, const char* op) {
  TORCH_CHECK(!inputs.empty() && inputs.size() <= 3, op, ": 1 to 3 branch inputs, got ", inputs.size());
  const at::Tensor& x = inputs[0];
  TORCH_CHECK(x.dim() == 4, op, ": inputs must be (B, C, H, W), got ", x.sizes());
  const bool nchw = x.is_contiguous();
  const bool nhwc = x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(nchw || nhwc, op, ": inputs must be contiguous or channels-last contiguous, got strides ",
              x.strides());
  for (const at::Tensor& t : inputs) {
    TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() && t.device() == x.device(), op,
                ": every branch must match the first one's shape ", x.sizes(), " and dtype ", x.scalar_type());
    TORCH_CHECK(nchw ? t.is_contiguous() : t.is_contiguous(at::MemoryFormat::ChannelsLast), op,
                ": every branch must have the first one's memory layout");
  }
  const int64_t k = static_cast<int64_t>(inputs.size()), c = x.size(1);
  for (const at::Tensor* p : {&weight, &bias}) {
    TORCH_CHECK(p->dim() == 2 && p->size(0) == k && p->size(1) == c, op, ": weight and bias must be (", k, ", ", c,
                "), got ", p->sizes());
    TORCH_CHECK(p->scalar_type() == x.scalar_type() && p->is_contiguous(), op,
                ": weight and bias must be contiguous ", x.scalar_type());
  }
  return {x.size(0), c, x.size(2) * x.size(3), !nchw};
}

void check_statistics(const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight, const char* op) {
  for (const at::Tensor* s : {&mean, &var})
    TORCH_CHECK(s->sizes() == weight.sizes() && s->scalar_type() == weight.scalar_type() && s->is_contiguous(), op,
                ": mean and var must be contiguous ", weight.sizes(), " ", weight.scalar_type(), " in eval mode, got ",
                s->sizes());
}

template <typename T>
struct Branches {
  const T* x[3];
  int64_t k;
};

template <typename T>
Branches<T> branches(at::TensorList inputs) {
  Branches<T> b{{nullptr, nullptr, nullptr}, static_cast<int64_t>(inputs.size())};
  for (int64_t i = 0; i < b.k; ++i) b.x[i] = inputs[i].const_data_ptr<T>();
  return b;
}

// s[i] = shift + Σ_k scale_k·x_k[offset + i] over a run of n values of one channel (an NCHW plane; the
// coefficients of branch k are scale[k·scale_stride]).
template <typename T>
inline void pre_activation(const Branches<T>& in, int64_t offset, const T* scale, int64_t scale_stride, const T* shift,
                           T* s, int64_t n) {
  const T* x0 = in.x[0] + offset;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) s[i] = shift[0] + scale[0] * x0[i];
  for (int64_t k = 1; k < in.k; ++k) {
    const T* xk = in.x[k] + offset;
    const T sk = scale[k * scale_stride];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) s[i] += sk * xk[i];
  }
}

// y = s·σ(s), in place.
template <typename T>
inline void silu_inplace(T* s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = s[i] * sigmoid(s[i]);
}

template <>
inline void silu_inplace<float>(float* s, int64_t n) {
  using Vec = at::vec::Vectorized<float>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(s + i);
    (v * sigmoid_vec(v)).store(s + i);
  }
  for (; i < n; ++i) s[i] = s[i] * sigmoid(s[i]);
}

// s ← grad·SiLU'(s) = grad·σ(s)·(1 + s·(1 − σ(s))), in place.
template <typename T>
inline void silu_backward_inplace(T* s, const T* grad, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T g = sigmoid(s[i]);
    s[i] = grad[i] * g * (T(1) + s[i] * (T(1) - g));
  }
}

template <>
inline void silu_backward_inplace<float>(float* s, const float* grad, int64_t n) {
  using Vec = at::vec::Vectorized<float>;
  const Vec one(1.f);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(s + i);
    const Vec g = sigmoid_vec(v);
    (Vec::loadu(grad + i) * g * (one + v * (one - g))).store(s + i);
  }
  for (; i < n; ++i) {
    const float g = sigmoid(s[i]);
    s[i] = grad[i] * g * (1.f + s[i] * (1.f - g));
  }
}

// ---- channels-last rows: one vector of channels at a time, the pre-activation kept in registers ----
//
// A row of C channels is walked in vectors of S = Vectorized<T>::size() channels (the last one partial
// when S does not divide C); for each vector a group of rows is processed before the next vector. While a
// call's tensors fit in the last-level cache, groups of kGroup rows load the per-channel coefficients and
// update the per-block partial sums once per group. When they do not, the rows come from memory, and
// reading kGroup rows of every tensor side by side halves the rate against reading them one after another
// (AMD EPYC, a 120² × 256 map, 2 branches: backward 3.4–3.9 ms with 4 rows per group, 2.1–2.3 with 1), so
// such calls take one row per group. They also write y and dx with streaming stores where rows start on the
// vectors' alignment (float32): the lines go to memory without being read first or evicting the inputs the
// next pass rereads (forward+backward, 60², B = 2: 1.54–1.92 → 1.34–1.62 ms; 120², B = 2: 6.6–7.8 → 6.5–7.2 ms).
// The forward takes that path from half the cache on, as the gates' passes do (stream_writes): its output is a
// third of what it moves (60², B = 2, 22 MB: forward 0.59–0.62 → 0.46–0.48 ms in three A/B rounds of
// bench_repconv.py); the backward at half the cache was 0.44–0.48 → 0.48–0.51 ms (60², B = 1), so it keeps
// the whole cache as its bound.

constexpr int64_t kGroup = 4;  // rows per group while a call's tensors fit in the last-level cache

// Rows per group for a call whose tensors (inputs and outputs) take ``bytes`` (the forward passes twice its
// bytes: see above).
inline int64_t rows_per_group(int64_t bytes) { return bytes > cache_bytes() ? 1 : kGroup; }

template <typename T>
using Vec = at::vec::Vectorized<T>;

// S values at p (Full), else the first n (the rest zero).
template <bool Full, typename T>
inline Vec<T> load(const T* p, int64_t n) {
  return Full ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
}

template <bool Full, typename T>
inline void store(const Vec<T>& v, T* p, int64_t n) {
  if (Full) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

// store<Full>, through a streaming store where Stream and the vector is whole (p then lies on the vector's
// alignment: the caller checks that rows start there).
template <bool Stream, bool Full, typename T>
inline void write(const Vec<T>& v, T* p, int64_t n) {
  if constexpr (Stream && Full && std::is_same_v<T, float>) {
    stream_store(v, p);
  } else {
    store<Full>(v, p, n);
  }
}

// s = shift + Σ_k scale_k·x_k for one vector of channels of one row; x_k are returned in xs.
template <int K, bool Full, typename T>
inline Vec<T> row_pre_activation(const Branches<T>& in, int64_t at, int64_t n, const Vec<T>* scale, const Vec<T>& shift,
                                 Vec<T>* xs) {
  Vec<T> s = shift;
  for (int k = 0; k < K; ++k) {
    xs[k] = load<Full>(in.x[k] + at, n);
    s = at::vec::fmadd(scale[k], xs[k], s);
  }
  return s;
}

// grad·SiLU'(s) = grad·σ(s)·(1 + s·(1 − σ(s))).
template <typename T>
inline Vec<T> silu_grad(const Vec<T>& s, const Vec<T>& grad) {
  const Vec<T> one(T(1));
  const Vec<T> g = sigmoid_vec(s);
  return grad * g * at::vec::fmadd(s, one - g, one);
}

// y = SiLU(Σ_k scale_k·x_k + shift) for the rows [first, last) of one vector of channels c.
template <int K, bool Full, bool Stream, typename T>
inline void output_vector(const Branches<T>& in, int64_t C, int64_t c, int64_t n, const T* scale, const T* shift,
                          int64_t first, int64_t last, T* y) {
  Vec<T> sc[K], xs[K];
  for (int k = 0; k < K; ++k) sc[k] = load<Full>(scale + k * C + c, n);
  const Vec<T> sh = load<Full>(shift + c, n);
  for (int64_t r = first; r < last; ++r) {
    const int64_t at = r * C + c;
    const Vec<T> s = row_pre_activation<K, Full>(in, at, n, sc, sh, xs);
    write<Stream, Full>(s * sigmoid_vec(s), y + at, n);
  }
}

// Adds Σ ds and Σ ds·(x_k − μ_k) over the rows [first, last) of one vector of channels c to p ((K + 1, C)); with
// Keep, also stores ds at ds_out (the first input gradient's buffer) for the input-gradient pass. With ``ahead`` >
// 0, prefetches the same channels of the row ``ahead`` rows on (of ``rows``) in grad and every input.
template <int K, bool Full, bool Keep, typename T>
inline void sums_vector(const T* grad, const Branches<T>& in, int64_t C, int64_t c, int64_t n, const T* scale,
                        const T* shift, const T* mean, int64_t first, int64_t last, T* p, T* ds_out, int64_t ahead,
                        int64_t rows) {
  Vec<T> sc[K], mu[K], products[K], xs[K];
  for (int k = 0; k < K; ++k) {
    sc[k] = load<Full>(scale + k * C + c, n);
    mu[k] = load<Full>(mean + k * C + c, n);
    products[k] = Vec<T>(T(0));
  }
  const Vec<T> sh = load<Full>(shift + c, n);
  Vec<T> total(T(0));
  for (int64_t r = first; r < last; ++r) {
    const int64_t at = r * C + c;
    if (ahead > 0) {
      const int64_t later = std::min(r + ahead, rows - 1) * C + c;
      __builtin_prefetch(grad + later);
      for (int k = 0; k < K; ++k) __builtin_prefetch(in.x[k] + later);
    }
    const Vec<T> ds = silu_grad(row_pre_activation<K, Full>(in, at, n, sc, sh, xs), load<Full>(grad + at, n));
    if (Keep) store<Full>(ds, ds_out + at, n);
    total = total + ds;
    for (int k = 0; k < K; ++k) products[k] = at::vec::fmadd(ds, xs[k] - mu[k], products[k]);
  }
  store<Full>(load<Full>(p + c, n) + total, p + c, n);
  for (int k = 0; k < K; ++k) {
    T* pk = p + (k + 1) * C + c;
    store<Full>(load<Full>(pk, n) + products[k], pk, n);
  }
}

// dx_k = scale_k·ds + β_k·x_k + γ_k over the rows [first, last) of one vector of channels c; ds is read from
// dx_0 where the sums pass kept it (Kept), else recomputed from grad and the inputs.
template <int K, bool Full, bool Kept, bool Stream, typename T>
inline void input_gradients_vector(const T* grad, const Branches<T>& in, int64_t C, int64_t c, int64_t n,
                                   const T* scale, const T* shift, const T* beta, const T* gamma, int64_t first,
                                   int64_t last, T* const* dx) {
  Vec<T> sc[K], b[K], z[K], xs[K];
  for (int k = 0; k < K; ++k) {
    sc[k] = load<Full>(scale + k * C + c, n);
    b[k] = load<Full>(beta + k * C + c, n);
    z[k] = load<Full>(gamma + k * C + c, n);
  }
  const Vec<T> sh = load<Full>(shift + c, n);
  for (int64_t r = first; r < last; ++r) {
    const int64_t at = r * C + c;
    Vec<T> ds;
    if (Kept) {
      ds = load<Full>(dx[0] + at, n);
      for (int k = 0; k < K; ++k) xs[k] = load<Full>(in.x[k] + at, n);
    } else {
      ds = silu_grad(row_pre_activation<K, Full>(in, at, n, sc, sh, xs), load<Full>(grad + at, n));
    }
    for (int k = 0; k < K; ++k)
      write<Stream, Full>(at::vec::fmadd(sc[k], ds, at::vec::fmadd(b[k], xs[k], z[k])), dx[k] + at, n);
  }
}

// Calls body(full, first, last, c, n) for each group of at most ``group`` rows [first, last) of [begin, end)
// and, within it, each vector of channels [c, c + n) of a row (full: std::true_type when n is a whole vector).
template <typename T, typename Body>
inline void for_row_groups(int64_t begin, int64_t end, int64_t group, int64_t C, const Body& body) {
  constexpr int64_t S = Vec<T>::size();
  for (int64_t r = begin; r < end; r += group) {
    const int64_t last = std::min(end, r + group);
    int64_t c = 0;
    for (; c + S <= C; c += S) body(std::true_type{}, r, last, c, S);
    if (c < C) body(std::false_type{}, r, last, c, C - c);
  }
}

// for_row_groups over all rows, in parallel, each thread taking the rows of whole Blocks(rows, kRows): the
// blocks of the statistic passes, so that a write pass rereads from each thread's L2 the rows it summed.
// ``streaming``: the body writes with streaming stores, fenced before the pass ends (as verify's scale_rows).
template <typename T, typename Body>
inline void parallel_row_groups(int64_t rows, int64_t group, int64_t C, bool streaming, const Body& body) {
  const Blocks blocks(rows, kRows);
  at::parallel_for(0, blocks.count, 1, [&](int64_t begin, int64_t end) {
    for_row_groups<T>(blocks.first(begin), blocks.last(end - 1), group, C, body);
    if (streaming) stream_fence();
  });
}

// Whether every row of C values from p starts on the vector alignment that streaming stores need.
template <typename T>
inline bool rows_aligned(const T* p, int64_t C) {
  constexpr int64_t S = Vec<T>::size();
  return kStreamingStores && C % S == 0 && reinterpret_cast<uintptr_t>(p) % (S * sizeof(T)) == 0;
}

// Calls f(std::bool_constant<flag>{}) for the runtime flag.
template <typename F>
inline void with_flag(bool flag, const F& f) {
  if (flag) return f(std::true_type{});
  return f(std::false_type{});
}

// Calls f(std::integral_constant<int, K>{}) for the runtime branch count k (1 to 3).
template <typename F>
inline void with_branch_count(int64_t k, const F& f) {
  switch (k) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 3>{});
  }
}

// ---- forward statistics: mean and biased variance per (branch, channel), from shifted sums ----

template <typename T>
std::pair<at::Tensor, at::Tensor> batch_statistics(const Branches<T>& in, const Geometry& g,
                                                   const at::TensorOptions& options) {
  const int64_t K = in.k, C = g.channels, n = g.count();
  // shifts[k][c] = x_k[b = 0, c, l = 0]
  std::vector<T> shifts(K * C);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) shifts[k * C + c] = in.x[k][g.channels_last ? c : c * g.positions];
  std::vector<double> s1(K * C, 0.0), s2(K * C, 0.0);
  if (g.channels_last) {
    const Blocks blocks(n, kRows);
    std::vector<T> partials(blocks.count * 2 * K * C);
    at::parallel_for(0, blocks.count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        T* p1 = partials.data() + blk * 2 * K * C;
        T* p2 = p1 + K * C;
        std::fill(p1, p1 + 2 * K * C, T(0));
        const int64_t first = blocks.first(blk), last = blocks.last(blk);
        for (int64_t k = 0; k < K; ++k) {
          const T* sh = shifts.data() + k * C;
          T* a1 = p1 + k * C;
          T* a2 = p2 + k * C;
          // Four rows per update of the partial sums: they live in memory (C of them), so a row at a time
          // spent more on their loads and stores than on the arithmetic.
          int64_t r = first;
          for (; r + 4 <= last; r += 4) {
            const T* x = in.x[k] + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const T d0 = x[c] - sh[c], d1 = x[C + c] - sh[c], d2 = x[2 * C + c] - sh[c];
              const T d3 = x[3 * C + c] - sh[c];
              a1[c] += (d0 + d1) + (d2 + d3);
              a2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
            }
          }
          for (; r < last; ++r) {
            const T* x = in.x[k] + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const T d = x[c] - sh[c];
              a1[c] += d;
              a2[c] += d * d;
            }
          }
        }
      }
    });
    for (int64_t blk = 0; blk < blocks.count; ++blk)
      for (int64_t i = 0; i < K * C; ++i) {
        s1[i] += partials[blk * 2 * K * C + i];
        s2[i] += partials[blk * 2 * K * C + K * C + i];
      }
  } else {
    at::parallel_for(0, K * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t job = begin; job < end; ++job) {
        const int64_t k = job / C, c = job % C;
        const T sh = shifts[job];
        for (int64_t b = 0; b < g.batch; ++b) {
          const T* x = in.x[k] + (b * C + c) * g.positions;
          T a1 = T(0), a2 = T(0);
#pragma omp simd reduction(+ : a1, a2)
          for (int64_t l = 0; l < g.positions; ++l) {
            const T d = x[l] - sh;
            a1 += d;
            a2 += d * d;
          }
          s1[job] += a1;
          s2[job] += a2;
        }
      }
    });
  }
  at::Tensor mean = at::empty({K, C}, options), var = at::empty({K, C}, options);
  T* m = mean.data_ptr<T>();
  T* v = var.data_ptr<T>();
#pragma omp simd
  for (int64_t i = 0; i < K * C; ++i) {
    const double first = s1[i] / n;
    m[i] = static_cast<T>(shifts[i] + first);
    v[i] = static_cast<T>(std::max(s2[i] / n - first * first, 0.0));
  }
  return {mean, var};
}

// Per (branch, channel) scale_i = γ_i/√(σ²_i + ε), and shift = Σ_i (β_i − μ_i·scale_i) per channel.
// (Vectorized, without a modulo: the scalar loops took about 3 µs a call, a fifth of the 15² forward.)
template <typename T>
void affine(const T* weight, const T* bias, const T* mean, const T* var, int64_t K, int64_t C, double eps, T* scale,
            T* rstd, T* shift) {
  std::fill(shift, shift + C, T(0));
  for (int64_t k = 0; k < K; ++k) {
    const int64_t o = k * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      rstd[o + c] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var[o + c]) + eps));
      scale[o + c] = weight[o + c] * rstd[o + c];
      shift[c] += bias[o + c] - mean[o + c] * scale[o + c];
    }
  }
}

template <typename T>
void write_output(const Branches<T>& in, const Geometry& g, const T* scale, const T* shift, T* y) {
  const int64_t C = g.channels, L = g.positions;
  if (g.channels_last) {
    const int64_t bytes = (in.k + 1) * g.count() * C * int64_t(sizeof(T));  // inputs, y
    const int64_t group = rows_per_group(2 * bytes);                          // from half the cache: see kGroup
    const bool streaming = group == 1 && rows_aligned<T>(y, C);
    with_branch_count(in.k, [&](auto k) {
      with_flag(streaming, [&](auto stream) {
        constexpr int K = decltype(k)::value;
        constexpr bool Stream = decltype(stream)::value;
        parallel_row_groups<T>(g.count(), group, C, Stream,
                               [&](auto full, int64_t first, int64_t last, int64_t c, int64_t n) {
                                 output_vector<K, decltype(full)::value, Stream>(in, C, c, n, scale, shift, first,
                                                                                 last, y);
                               });
      });
    });
  } else {
    at::parallel_for(0, g.batch * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C;
        pre_activation(in, plane * L, scale + c, C, shift + c, y + plane * L, L);
        silu_inplace(y + plane * L, L);
      }
    });
  }
}

// ---- backward ----

// Σ ds and Σ ds·(x_k − μ_k) per channel: sums (K + 1, C) in double, row 0 = Σ ds (channels-last: ``group``
// rows per group, ds stored at ds_out unless it is null, rows prefetched ``ahead`` rows on when it is > 0).
template <typename T>
std::vector<double> gradient_sums(const T* grad, const Branches<T>& in, const Geometry& g, const T* scale,
                                  const T* shift, const T* mean, int64_t group, T* ds_out, int64_t ahead) {
  const int64_t K = in.k, C = g.channels, L = g.positions;
  std::vector<double> sums((K + 1) * C, 0.0);
  if (g.channels_last) {
    const Blocks blocks(g.count(), kRows);
    std::vector<T> partials(blocks.count * (K + 1) * C);
    with_branch_count(K, [&](auto k) {
      with_flag(ds_out != nullptr, [&](auto keep) {
        constexpr int KB = decltype(k)::value;
        constexpr bool Keep = decltype(keep)::value;
        at::parallel_for(0, blocks.count, 1, [&](int64_t begin, int64_t end) {
          for (int64_t blk = begin; blk < end; ++blk) {
            T* p = partials.data() + blk * (K + 1) * C;
            std::fill(p, p + (K + 1) * C, T(0));
            for_row_groups<T>(blocks.first(blk), blocks.last(blk), group, C,
                              [&](auto full, int64_t first, int64_t last, int64_t c, int64_t n) {
                                sums_vector<KB, decltype(full)::value, Keep>(grad, in, C, c, n, scale, shift, mean,
                                                                             first, last, p, ds_out, ahead,
                                                                             g.count());
                              });
          }
        });
      });
    });
    for (int64_t blk = 0; blk < blocks.count; ++blk)
      for (int64_t i = 0; i < (K + 1) * C; ++i) sums[i] += partials[blk * (K + 1) * C + i];
  } else {
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> ds(L);
      for (int64_t c = begin; c < end; ++c)
        for (int64_t b = 0; b < g.batch; ++b) {
          const int64_t offset = (b * C + c) * L;
          pre_activation(in, offset, scale + c, C, shift + c, ds.data(), L);
          silu_backward_inplace(ds.data(), grad + offset, L);
          T total = T(0);
#pragma omp simd reduction(+ : total)
          for (int64_t l = 0; l < L; ++l) total += ds[l];
          sums[c] += total;
          for (int64_t k = 0; k < K; ++k) {
            const T* x = in.x[k] + offset;
            const T mk = mean[k * C + c];
            T product = T(0);
#pragma omp simd reduction(+ : product)
            for (int64_t l = 0; l < L; ++l) product += ds[l] * (x[l] - mk);
            sums[(k + 1) * C + c] += product;
          }
        }
    });
  }
  return sums;
}

// dx_k = scale_k·ds + β_k·x_k + γ_k with per (k, c) coefficients (K, C) each (channels-last: ``group`` rows per
// group; ``kept``: gradient_sums stored ds in dx_0).
template <typename T>
void write_input_gradients(const T* grad, const Branches<T>& in, const Geometry& g, const T* scale, const T* shift,
                           const T* beta, const T* gamma, T* const* dx, int64_t group, bool kept) {
  const int64_t K = in.k, C = g.channels, L = g.positions;
  auto combine = [&](const T* ds, int64_t offset, int64_t c, int64_t n) {
    for (int64_t k = 0; k < K; ++k) {
      const T* x = in.x[k] + offset;
      const T a = scale[k * C + c], b = beta[k * C + c], z = gamma[k * C + c];
      T* out = dx[k] + offset;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = a * ds[i] + b * x[i] + z;
    }
  };
  if (g.channels_last) {
    bool streaming = group == 1;  // beyond the cache: see kGroup
    for (int64_t k = 0; k < K; ++k) streaming = streaming && rows_aligned<T>(dx[k], C);
    with_branch_count(K, [&](auto k) {
      with_flag(kept, [&](auto stored) {
        with_flag(streaming, [&](auto stream) {
          constexpr int KB = decltype(k)::value;
          constexpr bool Kept = decltype(stored)::value, Stream = decltype(stream)::value;
          parallel_row_groups<T>(g.count(), group, C, Stream,
                                 [&](auto full, int64_t first, int64_t last, int64_t c, int64_t n) {
                                   input_gradients_vector<KB, decltype(full)::value, Kept, Stream>(
                                       grad, in, C, c, n, scale, shift, beta, gamma, first, last, dx);
                                 });
        });
      });
    });
  } else {
    at::parallel_for(0, g.batch * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> ds(L);
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C;
        pre_activation(in, plane * L, scale + c, C, shift + c, ds.data(), L);
        silu_backward_inplace(ds.data(), grad + plane * L, L);
        combine(ds.data(), plane * L, c, L);
      }
    });
  }
}

// From the sums (K + 1, C) of gradient_sums over n values per channel: the parameter gradients dw = r·S_k and
// db = S_0, and the input gradients' coefficients dx_k = a_k·ds + β_k·x_k + γ_k, from
// dx = a·(ds − S0/n − (x − μ)·r²·S/n) in training (β = γ = 0 with running statistics).
template <typename T>
void gradient_coefficients(const double* sums, const T* rstd, const T* scale, const T* mean, int64_t K, int64_t C,
                           double n, bool training, T* dw, T* db, T* beta, T* gamma) {
  for (int64_t k = 0; k < K; ++k) {
    const int64_t o = k * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = o + c;
      const double s0 = sums[c], sk = sums[C + i], r = rstd[i], a = scale[i];
      dw[i] = static_cast<T>(r * sk);
      db[i] = static_cast<T>(s0);
      const double b = training ? -a * r * r * sk / n : 0.0;
      beta[i] = static_cast<T>(b);
      gamma[i] = static_cast<T>(training ? -a * s0 / n - b * mean[i] : 0.0);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rep_bn_add_silu_forward_cpu(
    at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
    const at::Tensor& var, bool training, double eps) {
  const char* op = "rep_bn_add_silu_forward";
  const Geometry g = check_inputs(inputs, weight, bias, op);
  TORCH_CHECK(inputs[0].device().is_cpu(), op, ": expects CPU tensors");
  TORCH_CHECK(!training || g.count() > 1, op, ": batch statistics need more than 1 value per channel");
  if (!training) check_statistics(mean, var, weight, op);
  at::Tensor y = at::empty_like(inputs[0]);
  at::Tensor used_mean, used_var;
  AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "rep_bn_add_silu_forward", [&] {
    const Branches<scalar_t> in = branches<scalar_t>(inputs);
    if (training) {
      std::tie(used_mean, used_var) = batch_statistics(in, g, weight.options());
    } else {
      used_mean = mean.clone();
      used_var = var.clone();
    }
    const int64_t K = in.k, C = g.channels;
    std::vector<scalar_t> scale(K * C), rstd(K * C), shift(C);
    affine(weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), used_mean.const_data_ptr<scalar_t>(),
           used_var.const_data_ptr<scalar_t>(), K, C, eps, scale.data(), rstd.data(), shift.data());
    if (y.numel() > 0) write_output(in, g, scale.data(), shift.data(), y.data_ptr<scalar_t>());
  });
  return {y, used_mean, used_var};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> rep_bn_add_silu_backward_cpu(
    const at::Tensor& grad, at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, bool training, double eps) {
  const char* op = "rep_bn_add_silu_backward";
  const Geometry g = check_inputs(inputs, weight, bias, op);
  check_statistics(mean, var, weight, op);
  TORCH_CHECK(grad.sizes() == inputs[0].sizes() && grad.scalar_type() == inputs[0].scalar_type(), op,
              ": grad must match the inputs ", inputs[0].sizes(), ", got ", grad.sizes());
  TORCH_CHECK(g.channels_last ? grad.is_contiguous(at::MemoryFormat::ChannelsLast) : grad.is_contiguous(), op,
              ": grad must have the inputs' memory layout");
  std::vector<at::Tensor> dinputs;
  for (const at::Tensor& x : inputs) dinputs.push_back(at::empty_like(x));
  if (g.count() == 0) return {dinputs, at::zeros_like(weight), at::zeros_like(bias)};
  at::Tensor dweight = at::empty_like(weight), dbias = at::empty_like(bias);  // every element written below
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "rep_bn_add_silu_backward", [&] {
    using T = scalar_t;
    const Branches<T> in = branches<T>(inputs);
    const int64_t K = in.k, C = g.channels;
    const T* mu = mean.const_data_ptr<T>();
    std::vector<T> scale(K * C), rstd(K * C), shift(C);
    affine(weight.const_data_ptr<T>(), bias.const_data_ptr<T>(), mu, var.const_data_ptr<T>(), K, C, eps,
           scale.data(), rstd.data(), shift.data());
    const T* dy = grad.const_data_ptr<T>();
    const int64_t group = rows_per_group((2 * K + 1) * g.count() * C * int64_t(sizeof(T)));  // grad, inputs, dx
    std::vector<T*> dx;
    for (at::Tensor& d : dinputs) dx.push_back(d.data_ptr<T>());
    // Within the cache the sums pass keeps ds in dx_0's buffer, and the input-gradient pass reads it back
    // instead of recomputing the pre-activation and its sigmoid: the passes are bound by that arithmetic
    // there (AMD EPYC, 2 branches, 256 channels, B = 1: 15² 28–35 → 23–24 µs, 30² 88–92 → 70–73 µs, 60²
    // 337–382 → 258–299 µs). Beyond the cache the extra write and read cost more than the arithmetic saves
    // (120², B = 2: 3.9–4.8 → 5.0–5.4 ms), so ds is recomputed.
    const bool keep = g.channels_last && group == kGroup;
    // Groups of rows read every tensor kGroup rows at a time, which the hardware prefetchers do not follow.
    // In a training step the saved inputs come back from L3 or memory (the rest of the model ran in between),
    // and the sums pass then waited on them. 8 tails in a chain under one backward, as bench_repconv.py --parts
    // chain runs them, with the backward timed apart (AMD EPYC, two threads), per tail: 30², B = 2: 326–410 →
    // 281–310 µs; 60², B = 1: 752–904 → 531–680 µs. So the pass prefetches two groups ahead once it reads more
    // than the cores' private caches hold (a call timed alone, its data in the cache, moved within noise; at
    // 15² it cost about 1 µs, so smaller calls do without).
    const int64_t read = (K + 1) * g.count() * C * int64_t(sizeof(T));  // grad, inputs
    const int64_t ahead = keep && read > private_cache_bytes() * at::get_num_threads() ? 2 * kGroup : 0;
    const std::vector<double> sums =
        gradient_sums(dy, in, g, scale.data(), shift.data(), mu, group, keep ? dx[0] : nullptr, ahead);
    std::vector<T> beta(K * C), gamma(K * C);
    gradient_coefficients(sums.data(), rstd.data(), scale.data(), mu, K, C, static_cast<double>(g.count()), training,
                          dweight.data_ptr<T>(), dbias.data_ptr<T>(), beta.data(), gamma.data());
    write_input_gradients(dy, in, g, scale.data(), shift.data(), beta.data(), gamma.data(), dx.data(), group, keep);
  });
  return {dinputs, dweight, dbias};
}

TORCH_LIBRARY_IMPL(provg, CPU, m) {
  m.impl("rep_bn_add_silu_forward", &rep_bn_add_silu_forward_cpu);
  m.impl("rep_bn_add_silu_backward", &rep_bn_add_silu_backward_cpu);
}

}  // namespace provg
