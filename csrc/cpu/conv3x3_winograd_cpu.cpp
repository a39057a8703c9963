// CPU kernel of provg::conv3x3_bias_silu_winograd_forward: the deploy-form RepVGG convolution
// SiLU(conv3×3(x) + b) [+ r] (ProVG Sec. 4.3) by Winograd's minimal filtering F(2×2, 3×3)
// (Lavin & Gray, 2016): each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A over its 4×4 input patch d,
// so the 3×3 convolution's 36 multiplies per tile and channel pair become 16, done as 16 matrix
// products (tiles × C_in)·(C_in × C_out) by oneDNN's matmul for float32 (else ATen's batched GEMM; see
// products_engine() below). The filter transform U = G g Gᵀ is its own operator (conv3x3_winograd_weight) so a
// deployed model computes it once per weight.
//
//   Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]   G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]   Aᵀ = [1 1 1 0; 0 1 −1 −1]
//
// Tiles are processed in groups so the transformed inputs V (16 × tiles × C_in) and products
// M (16 × tiles × C_out) stay in cache: per group, one parallel pass transforms the input patches, one
// batched GEMM multiplies, one parallel pass transforms back and applies bias, SiLU and the residual.
// The transforms are exact in binary except G's halves, so results differ from the direct convolution
// only by rounding (float64: ~1e-15 relative). Works on channels-last rows of C channels; NCHW inputs
// are converted and the output returned in x's layout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "../repconv.h"

namespace provg {
namespace {

constexpr int64_t kGroupTiles = 256;  // output tiles per GEMM group (128 to 1024 measured alike)
constexpr int64_t kTileGrain = 16;    // tiles per unit of parallel work in the transforms

// U[ξ][ci][co] = (G g Gᵀ)[ξ] for each 3×3 filter g = weight[co][ci], computed in double; written
// along co so each of the 16 planes is a sequential stream.
template <typename T>
at::Tensor transform_weight(const at::Tensor& weight) {
  const int64_t co_count = weight.size(0), ci_count = weight.size(1);
  at::Tensor u = at::empty({16, ci_count, co_count}, weight.options());
  const T* w = weight.const_data_ptr<T>();
  T* out = u.data_ptr<T>();
  at::parallel_for(0, ci_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ci = begin; ci < end; ++ci)
      for (int64_t co = 0; co < co_count; ++co) {
        const T* g = w + (co * ci_count + ci) * 9;
        double a[4][3];  // G g
        for (int k = 0; k < 3; ++k) {
          a[0][k] = g[k];
          a[1][k] = 0.5 * (double(g[k]) + g[3 + k] + g[6 + k]);
          a[2][k] = 0.5 * (double(g[k]) - g[3 + k] + g[6 + k]);
          a[3][k] = g[6 + k];
        }
        for (int i = 0; i < 4; ++i) {
          const double row[4] = {a[i][0], 0.5 * (a[i][0] + a[i][1] + a[i][2]), 0.5 * (a[i][0] - a[i][1] + a[i][2]),
                                 a[i][2]};
          for (int j = 0; j < 4; ++j) out[((i * 4 + j) * ci_count + ci) * co_count + co] = static_cast<T>(row[j]);
        }
      }
  });
  return u;
}

// ---- the 16 products: oneDNN's matmul for float32 where this torch has it, else ATen's batched GEMM ----
//
// On x86 builds of torch at::bmm calls MKL, whose SGEMM runs AVX2 code on AMD processors: 198–210 GFLOPS on a
// 2-core AMD EPYC against 466 for oneDNN's matmul on the same 16 products of 256³, which made Winograd slower
// than oneDNN's direct convolution there (0.8–0.9×, against 1.5–1.8× with oneDNN's matmul). ATen exports
// oneDNN's matmul (at::native::mkldnn_matmul) without a public header, so it is looked up at run time: a
// torch without it falls back to at::bmm (with a warning) instead of failing to load provg._C.
// PROVG_WINOGRAD_GEMM=onednn|blas (read on every call; empty = automatic) forces one.

using Matmul = void (*)(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta,
                        float alpha);

Matmul onednn_matmul() {
  static const Matmul matmul = []() -> Matmul {
    if (!at::hasMKLDNN()) return nullptr;
    constexpr const char* symbol = "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff";
    void* library = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    void* found = library ? dlsym(library, symbol) : nullptr;
    return reinterpret_cast<Matmul>(found ? found : dlsym(RTLD_DEFAULT, symbol));
  }();
  return matmul;
}

// The engine of a call's 16 products on ``dtype``: oneDNN's matmul, or null for at::bmm. Chosen once per
// call, not per group of tiles.
Matmul products_engine(at::ScalarType dtype) {
  const char* forced = std::getenv("PROVG_WINOGRAD_GEMM");
  if (forced != nullptr && *forced == '\0') forced = nullptr;  // set but empty: automatic
  const bool want_onednn = forced == nullptr || std::strcmp(forced, "onednn") == 0;
  TORCH_CHECK(want_onednn || std::strcmp(forced, "blas") == 0, "PROVG_WINOGRAD_GEMM must be onednn or blas, got '",
              forced, "'; unset it to choose automatically");
  const bool float32 = dtype == at::kFloat;
  if (forced != nullptr && want_onednn) {
    TORCH_CHECK(float32, "PROVG_WINOGRAD_GEMM=onednn: oneDNN's matmul takes float32, got ", dtype, "; unset it (",
                dtype, " takes ATen's bmm)");
    TORCH_CHECK(onednn_matmul() != nullptr, "PROVG_WINOGRAD_GEMM=onednn: this torch has no oneDNN matmul ",
                "(at::native::mkldnn_matmul); unset it or set blas");
  }
  if (!want_onednn || !float32) return nullptr;
  if (onednn_matmul() == nullptr)
    TORCH_WARN_ONCE("conv3x3_bias_silu (winograd): this torch has no oneDNN matmul (at::native::mkldnn_matmul); ",
                    "the 16 products fall back to at::bmm, which may be 2x slower (MKL on AMD processors)");
  return onednn_matmul();
}

struct Tiling {
  int64_t height, width, tiles_y, tiles_x;
  int64_t per_image() const { return tiles_y * tiles_x; }
};

// V[ξ][t][ci] = (Bᵀ d B)[ξ] for the 4×4 patches (zero outside the map) of tiles first .. first + n.
template <typename T>
void transform_input(const T* x, int64_t channels, const Tiling& tiling, int64_t first, int64_t n, T* v) {
  using Vec = at::vec::Vectorized<T>;
  at::parallel_for(0, n, kTileGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t tile = first + t, image = tile / tiling.per_image(), rest = tile % tiling.per_image();
      const int64_t h0 = 2 * (rest / tiling.tiles_x) - 1, w0 = 2 * (rest % tiling.tiles_x) - 1;
      const T* rows[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int64_t h = h0 + i, w = w0 + j;
          const bool inside = h >= 0 && h < tiling.height && w >= 0 && w < tiling.width;
          rows[i][j] = inside ? x + ((image * tiling.height + h) * tiling.width + w) * channels : nullptr;
        }
      for (int64_t c = 0; c < channels; c += Vec::size()) {
        const int64_t lanes = std::min<int64_t>(Vec::size(), channels - c);
        Vec d[4][4], s[4][4];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) d[i][j] = rows[i][j] ? Vec::loadu(rows[i][j] + c, lanes) : Vec(T(0));
        for (int j = 0; j < 4; ++j) {  // Bᵀ d
          s[0][j] = d[0][j] - d[2][j];
          s[1][j] = d[1][j] + d[2][j];
          s[2][j] = d[2][j] - d[1][j];
          s[3][j] = d[1][j] - d[3][j];
        }
        for (int i = 0; i < 4; ++i) {  // (Bᵀ d) B
          const Vec row[4] = {s[i][0] - s[i][2], s[i][1] + s[i][2], s[i][2] - s[i][1], s[i][1] - s[i][3]};
          for (int j = 0; j < 4; ++j) row[j].store(v + ((i * 4 + j) * n + t) * channels + c, lanes);
        }
      }
    }
  });
}

// y = SiLU(Aᵀ m A + bias) [+ residual] for tiles first .. first + n, from M[ξ][t][co].
template <typename T>
void transform_output(const T* m, const T* bias, const T* residual, int64_t channels, const Tiling& tiling,
                      int64_t first, int64_t n, T* y) {
  using Vec = at::vec::Vectorized<T>;
  at::parallel_for(0, n, kTileGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t tile = first + t, image = tile / tiling.per_image(), rest = tile % tiling.per_image();
      const int64_t h0 = 2 * (rest / tiling.tiles_x), w0 = 2 * (rest % tiling.tiles_x);
      for (int64_t c = 0; c < channels; c += Vec::size()) {
        const int64_t lanes = std::min<int64_t>(Vec::size(), channels - c);
        Vec p[4][4], s[2][4];
        for (int k = 0; k < 16; ++k) p[k / 4][k % 4] = Vec::loadu(m + (k * n + t) * channels + c, lanes);
        for (int j = 0; j < 4; ++j) {  // Aᵀ m
          s[0][j] = p[0][j] + p[1][j] + p[2][j];
          s[1][j] = p[1][j] - p[2][j] - p[3][j];
        }
        const Vec b = Vec::loadu(bias + c, lanes), one(T(1));
        for (int i = 0; i < 2; ++i) {
          const Vec out[2] = {s[i][0] + s[i][1] + s[i][2], s[i][1] - s[i][2] - s[i][3]};  // (Aᵀ m) A
          for (int j = 0; j < 2; ++j) {
            const int64_t h = h0 + i, w = w0 + j;
            if (h >= tiling.height || w >= tiling.width) continue;
            const int64_t offset = ((image * tiling.height + h) * tiling.width + w) * channels + c;
            const Vec pre = out[j] + b;
            Vec value = pre / (one + pre.neg().exp());
            if (residual) value = value + Vec::loadu(residual + offset, lanes);
            value.store(y + offset, lanes);
          }
        }
      }
    }
  });
}

template <typename T>
void winograd(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const at::Tensor* residual,
              at::Tensor& y) {
  const int64_t ci_count = x.size(1), co_count = u.size(2);
  const Tiling tiling{x.size(2), x.size(3), (x.size(2) + 1) / 2, (x.size(3) + 1) / 2};
  const int64_t tiles = x.size(0) * tiling.per_image(), group = std::min(tiles, kGroupTiles);
  at::Tensor v = at::empty({16 * group * ci_count}, x.options());
  at::Tensor m = at::empty({16 * group * co_count}, x.options());
  const Matmul matmul = products_engine(x.scalar_type());
  for (int64_t first = 0; first < tiles; first += group) {
    const int64_t n = std::min(group, tiles - first);
    at::Tensor vn = v.narrow(0, 0, 16 * n * ci_count).view({16, n, ci_count});
    at::Tensor mn = m.narrow(0, 0, 16 * n * co_count).view({16, n, co_count});
    transform_input(x.const_data_ptr<T>(), ci_count, tiling, first, n, vn.data_ptr<T>());
    if (matmul) {
      matmul(vn, u, mn, 0.f, 1.f);  // m[ξ] = v[ξ] · u[ξ] for the 16 planes ξ
    } else {
      at::bmm_out(mn, vn, u);
    }
    transform_output(mn.const_data_ptr<T>(), bias.const_data_ptr<T>(),
                     residual ? residual->const_data_ptr<T>() : nullptr, co_count, tiling, first, n,
                     y.data_ptr<T>());
  }
}

}  // namespace

at::Tensor conv3x3_winograd_weight_cpu(const at::Tensor& weight) {
  const char* op = "conv3x3_winograd_weight";
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.is_floating_point(), op,
              ": weight must be a floating (C_out, C_in, 3, 3) tensor, got ", weight.sizes());
  at::Tensor u;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "conv3x3_winograd_weight",
                             [&] { u = transform_weight<scalar_t>(weight.contiguous()); });
  return u;
}

at::Tensor conv3x3_bias_silu_winograd_forward_cpu(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                                                  const std::optional<at::Tensor>& residual) {
  const char* op = "conv3x3_bias_silu_winograd_forward";
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), op, ": x must be a CPU (B, C, H, W) tensor, got ", x.sizes());
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 16 && u.size(1) == x.size(1) && u.is_contiguous(), op,
              ": u must be the contiguous (16, ", x.size(1), ", C_out) conv3x3_winograd_weight, got ", u.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == u.size(2), op, ": bias must be (", u.size(2), "), got ",
              bias.sizes());
  for (const at::Tensor* t : {&u, &bias})
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": all inputs must share x's dtype ", x.scalar_type());
  const auto layout = x.suggest_memory_format();
  const auto last = at::MemoryFormat::ChannelsLast;
  at::Tensor y = at::empty({x.size(0), u.size(2), x.size(2), x.size(3)}, x.options().memory_format(last));
  const at::Tensor r = checked_residual(residual, y, last, op);
  if (y.numel() == 0) return y.contiguous(layout);
  const at::Tensor xl = x.contiguous(last), b = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_bias_silu_winograd_forward",
                             [&] { winograd<scalar_t>(xl, u, b, r.defined() ? &r : nullptr, y); });
  return y.contiguous(layout);
}

TORCH_LIBRARY_IMPL(provg, CPU, m) {
  m.impl("conv3x3_winograd_weight", &conv3x3_winograd_weight_cpu);
  m.impl("conv3x3_bias_silu_winograd_forward", &conv3x3_bias_silu_winograd_forward_cpu);
}

}  // namespace provg
