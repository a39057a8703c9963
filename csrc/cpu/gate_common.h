// Shared pieces of the CPU gate kernels (and of the RepVGG tail's): input checks, the vector exp and sigmoid,
// the attention of scalar queries over a handful of keys, the split of positions into blocks and jobs
// (per-block partial sums keep the reductions deterministic whatever the thread count), and the last-level
// cache size the kernels plan for.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace provg {
namespace cpu {

constexpr int64_t kBlock = 64;  // most positions per block (the unit of work and of partial sums)
constexpr int64_t kMaxKeys = 256;

// Blocks of rows (positions), the unit of work and of partial sums: at most ``most`` rows each, sizes that
// differ by one row at most, and a multiple of 8 of them when there is more than one, so that
// at::parallel_for's even split of a pass over 1, 2, 4 or 8 threads gives every thread the same rows to
// within a row per block. Blocks of exactly ``most`` rows left the last thread up to a whole block short
// (3,600 positions in blocks of 64: 29 and 28 blocks, 1,856 and 1,744 rows), the other one waiting at the
// end of every pass. The split depends on the row count only, so partial sums added in block order do not
// depend on the thread count.
struct Blocks {
  int64_t rows, count;

  Blocks(int64_t rows, int64_t most) : rows(rows) {
    const int64_t needed = (rows + most - 1) / most;
    count = needed <= 1 ? needed : std::min(rows, (needed + 7) / 8 * 8);
  }
  int64_t first(int64_t block) const { return block * rows / count; }
  int64_t last(int64_t block) const { return (block + 1) * rows / count; }

  // Job j of a pass over (batch item, block) pairs: its batch item and the rows [first, last) of its block.
  struct Job {
    int64_t b, first, last;
  };
  Job job(int64_t j) const { return {j / count, first(j % count), last(j % count)}; }
};

// The size in bytes of cache ``index`` that sysfs lists for cpu0 (0 where it lists none), and its level.
inline std::pair<int64_t, int> sysfs_cache(int index) {
  const std::string path = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
  std::ifstream file(path + "/size");
  int64_t size = 0;
  std::string unit;
  if (!(file >> size)) return {0, 0};
  file >> unit;  // "K" or "M" (the number and its unit are written together, e.g. 32768K)
  if (!unit.empty() && (unit[0] == 'M' || unit[0] == 'm')) size <<= 20;
  if (!unit.empty() && (unit[0] == 'K' || unit[0] == 'k')) size <<= 10;
  std::ifstream level_file(path + "/level");
  int level = 0;
  level_file >> level;
  return {size, level};
}

// The largest cache that sysfs lists for cpu0, in bytes, or 32 MiB where it lists none. (sysconf's
// _SC_LEVEL3_CACHE_SIZE is no substitute: on a KVM guest with a 32 MiB L3 it reported the host's 384 MiB.)
inline int64_t sysfs_cache_bytes() {
  int64_t largest = 0;
  for (int index = 0; index < 8; ++index) largest = std::max(largest, sysfs_cache(index).first);
  return largest > 0 ? largest : int64_t(32) << 20;
}

// A core's private cache in bytes: the level-2 cache sysfs lists for cpu0, or 1 MiB where it lists none.
inline int64_t private_cache_bytes() {
  static const int64_t bytes = [] {
    for (int index = 0; index < 8; ++index) {
      const auto [size, level] = sysfs_cache(index);
      if (level == 2 && size > 0) return size;
    }
    return int64_t(1) << 20;
  }();
  return bytes;
}

// The last-level cache size the CPU kernels plan for, in bytes: PROVG_CPU_CACHE_BYTES when it is set and not
// empty (read on every call), else sysfs_cache_bytes() (read once).
inline int64_t cache_bytes() {
  const char* forced = std::getenv("PROVG_CPU_CACHE_BYTES");
  if (forced != nullptr && *forced != '\0') {
    char* end = nullptr;
    const long long value = std::strtoll(forced, &end, 10);
    TORCH_CHECK(end != forced && *end == '\0' && value > 0, "PROVG_CPU_CACHE_BYTES must be a positive number of ",
                "bytes, got '", forced, "'; unset it to use the cache size that sysfs reports");
    return value;
  }
  static const int64_t bytes = sysfs_cache_bytes();
  return bytes;
}

inline void check_keys(const at::Tensor& mask, int64_t batch, const char* op) {
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == batch, op, ": key_mask must be (B, N) with B = ", batch,
              ", got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": key_mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(mask.size(1) <= kMaxKeys, op, ": at most ", kMaxKeys, " language tokens, got ", mask.size(1));
}

// Runs body(next) on at::parallel_for's threads, where next() hands out the jobs 0 .. jobs − 1 one at a time
// (then −1) to whichever thread asks: one that finishes early takes more, instead of waiting at the end of
// a static split for the thread whose share was a job longer or whose vCPU was taken away for a while.
// What a job computes must not depend on the thread that runs it (per-job partials, never per-thread).
template <typename Body>
void parallel_jobs(int64_t jobs, const Body& body) {
  std::atomic<int64_t> counter{0};
  const auto next = [&]() -> int64_t {
    const int64_t job = counter.fetch_add(1, std::memory_order_relaxed);
    return job < jobs ? job : -1;
  };
  at::parallel_for(0, std::min<int64_t>(jobs, at::get_num_threads()), 1, [&](int64_t, int64_t) { body(next); });
}

template <typename T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}

#if defined(CPU_CAPABILITY_AVX512)
// e^x for 16 floats in 12 instructions where ATen's exp_u20 takes 18 (and Sleef's exp more): e^x = 2^n·e^r with
// n = round(x·log₂e) and r = x − n·ln 2 (ln 2 split over two FMAs), e^r by a degree-5 polynomial fitted for
// relative error on |r| ≤ ln 2 / 2 (9.5e-8 with float32 coefficients; exp_u20 is good to 20 ulp, 1.2e-6), and
// 2^n applied by vscalefps, which needs no exponent arithmetic and gives 0 and ∞ past float32's range. x is
// first clamped to [−110, 100], beyond which e^x is 0 or ∞ in float32 anyway, so that ±∞ give 0 and ∞, not NaN
// (and a masked score of −∞ a weight of exactly 0).
inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-110.f)), _mm512_set1_ps(100.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182464599609375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-1.904654299957768e-09f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.008290313184261322f), _mm512_set1_ps(0.04189793020486832f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.1666763573884964f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.4999915063381195f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.9999997019767761f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#endif

// e^a for a vector of values: Sleef's 1-ulp exp, or exp_avx512 for float under AVX-512.
template <typename T>
inline at::vec::Vectorized<T> exp_vec(const at::vec::Vectorized<T>& a) {
  return a.exp();
}

// σ(a) for a vector of values.
template <typename T>
inline at::vec::Vectorized<T> sigmoid_vec(const at::vec::Vectorized<T>& a) {
  using Vec = at::vec::Vectorized<T>;
  // NOTE: exp_u20 is accurate to ~20 ulp, far inside the 1e-5 relative error budget of float32.
  return Vec(T(1)) / (Vec(T(1)) + a.neg().exp_u20());
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline at::vec::Vectorized<float> exp_vec<float>(const at::vec::Vectorized<float>& a) {
  return exp_avx512(a);
}

template <>
inline at::vec::Vectorized<float> sigmoid_vec<float>(const at::vec::Vectorized<float>& a) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(a.neg())));
}
#endif

// Attention with scalar queries over a handful of scalar keys (the locate gate's positions, the verify
// gate's channels), vectorized across queries: one exp per key for a whole vector of queries. For
// `count` queries, gate[p] = σ(Σ_n w_pn v_n) with w_p = masked softmax(query_p · k) (no valid key:
// attention 0, gate 1/2). With dquery, also the backward: given gx[p] = ∂L/∂gate[p] (Σ_c grad·x over a
// locate row, Σ_p grad·x over a verify column), it writes dquery[p] and adds each key's dk and dv
// contributions, lane by lane, to dk_lanes / dv_lanes (N × vector size); exps is N × vector size scratch.
template <typename T>
struct Attention {
  const T* keys;
  const T* values;
  const bool* valid;
  int64_t count;
};

template <typename T>
void scalar_query_gates(const T* query, int64_t count, const Attention<T>& a, T* gate, const T* gx, T* dquery,
                        T* exps, T* dk_lanes, T* dv_lanes) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t S = Vec::size();
  const bool any = std::any_of(a.valid, a.valid + a.count, [](bool v) { return v; });
  for (int64_t p = 0; p < count; p += S) {
    const int64_t lanes = std::min(S, count - p);
    if (!any) {  // attention 0: gate 1/2, and no gradient reaches the query, keys or values
      Vec(T(0.5)).store(gate + p, lanes);
      if (dquery) Vec(T(0)).store(dquery + p, lanes);
      continue;
    }
    const Vec q = Vec::loadu(query + p, lanes);
    Vec top(-std::numeric_limits<T>::infinity());
    for (int64_t n = 0; n < a.count; ++n)
      if (a.valid[n]) top = at::vec::maximum(top, q * Vec(a.keys[n]));
    Vec total(T(0)), mixed(T(0));
    for (int64_t n = 0; n < a.count; ++n) {
      if (!a.valid[n]) continue;
      const Vec e = exp_vec(q * Vec(a.keys[n]) - top);
      if (exps) e.store(exps + n * S);
      total = total + e;
      mixed = at::vec::fmadd(e, Vec(a.values[n]), mixed);
    }
    const Vec inverse = Vec(T(1)) / total;
    const Vec attention = mixed * inverse;
    const Vec g = sigmoid_vec(attention);
    g.store(gate + p, lanes);
    if (!dquery) continue;
    // dA = (Σ_c grad·x)·σ'(A); dscore_n = w_n·dA·(v_n − A); dquery = Σ_n dscore_n·k_n.
    const Vec da = Vec::loadu(gx + p, lanes) * g * (Vec(T(1)) - g);  // zero in unused lanes
    Vec dq(T(0));
    for (int64_t n = 0; n < a.count; ++n) {
      if (!a.valid[n]) continue;
      const Vec w = Vec::loadu(exps + n * S) * inverse;
      const Vec ds = w * da * (Vec(a.values[n]) - attention);
      dq = at::vec::fmadd(ds, Vec(a.keys[n]), dq);
      at::vec::fmadd(ds, q, Vec::loadu(dk_lanes + n * S)).store(dk_lanes + n * S);
      at::vec::fmadd(w, da, Vec::loadu(dv_lanes + n * S)).store(dv_lanes + n * S);
    }
    dq.store(dquery + p, lanes);
  }
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// Non-temporal (streaming) stores of whole vectors of floats, where the build's vector width has them:
// written lines go to memory without first being read into the caches, and without evicting what is there.
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kStreamingStores = true;
inline void stream_store(const at::vec::Vectorized<float>& v, float* p) { _mm512_stream_ps(p, v); }
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kStreamingStores = true;
inline void stream_store(const at::vec::Vectorized<float>& v, float* p) { _mm256_stream_ps(p, v); }
#else
constexpr bool kStreamingStores = false;
inline void stream_store(const at::vec::Vectorized<float>& v, float* p) { v.store(p); }
#endif

// Whether a pass over tensors taking ``bytes`` in all (inputs and outputs) writes its output with streaming
// stores: when they take more than half the last-level cache, which also holds everything else, written
// lines would evict the inputs the pass or the next one rereads (verify gate, AMD EPYC, 32 MiB L3: 15–60%
// faster forward+backward at 22–44 MB; no gain at 11 MB, where the output stays in the cache for the
// next op).
inline bool stream_writes(int64_t bytes) { return kStreamingStores && 2 * bytes > cache_bytes(); }

// Orders a thread's streaming stores before what follows (the end of a parallel region, another thread's
// reads).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// out[c] = scalar(c) for c < n. With ``streaming`` (float32, where the build has streaming stores) the row's
// 64-byte-aligned middle goes through streaming stores in whole vectors (vector(c): the values at c .. c + S − 1)
// and its ends one value at a time; otherwise plain stores.
template <typename T, typename Vector, typename Scalar>
inline void write_row(T* out, int64_t n, bool streaming, const Vector& vector, const Scalar& scalar) {
  if constexpr (std::is_same_v<T, float> && kStreamingStores) {
    if (streaming) {
      constexpr int64_t S = at::vec::Vectorized<float>::size();
      int64_t c = 0;
      for (; c < n && reinterpret_cast<uintptr_t>(out + c) % (S * sizeof(float)) != 0; ++c) out[c] = scalar(c);
      for (; c + S <= n; c += S) stream_store(vector(c), out + c);
      for (; c < n; ++c) out[c] = scalar(c);
      return;
    }
  }
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = scalar(c);
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// y[i] = x[i] · σ(a[i]) (and, when ``gate`` is given, gate[i] = σ(a[i])). Vectorized for float.
template <typename T>
inline void gate_apply(const T* x, const T* a, T* y, T* gate, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T g = sigmoid(a[i]);
    y[i] = x[i] * g;
    if (gate) gate[i] = g;
  }
}

template <>
inline void gate_apply<float>(const float* x, const float* a, float* y, float* gate, int64_t n) {
  using Vec = at::vec::Vectorized<float>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec g = sigmoid_vec(Vec::loadu(a + i));
    (Vec::loadu(x + i) * g).store(y + i);
    if (gate) g.store(gate + i);
  }
  for (; i < n; ++i) {
    const float g = sigmoid(a[i]);
    y[i] = x[i] * g;
    if (gate) gate[i] = g;
  }
}

// (B, blocks, ...) per-block partial sums → (B, ...), added in block order whatever the thread count.
inline at::Tensor reduce_blocks(const at::Tensor& partials) {
  const int64_t batch = partials.size(0), blocks = partials.size(1);
  const int64_t n = partials.numel() / std::max<int64_t>(batch * blocks, 1);
  std::vector<int64_t> shape{batch};
  for (int64_t d = 2; d < partials.dim(); ++d) shape.push_back(partials.size(d));
  at::Tensor out = at::zeros(shape, partials.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "reduce_blocks", [&] {
    const scalar_t* in = partials.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        for (int64_t blk = 0; blk < blocks; ++blk) axpy(scalar_t(1), in + (b * blocks + blk) * n, o + b * n, n);
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace provg
