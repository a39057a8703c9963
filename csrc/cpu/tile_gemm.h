// A small register-blocked matrix product for the CPU gate kernels: the survey gate's attention is six
// skinny products (P positions × N ≤ 256 tokens × C channels) over tiles of a few dozen positions that
// stay in L1/L2, where a BLAS call per tile would cost more than the arithmetic.
//
//   out[r, 0:width] (+)= Σ_{i < inner} a[r·a_row + i·a_col] · b[i·b_row + 0:width]   for r < rows
//
// ``a`` is read one scalar at a time (any strides, so transposed operands need no copy); ``b`` and ``out``
// rows are read and written as whole vectors: ``width`` must be a multiple of Vectorized<T>::size() and
// the caller pads b's rows (and ignores out's padding columns).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace provg {
namespace cpu {

template <typename T>
constexpr int64_t vector_size() {
  return at::vec::Vectorized<T>::size();
}

// ``n`` rounded up to a whole number of vectors.
template <typename T>
inline int64_t padded(int64_t n) {
  const int64_t s = vector_size<T>();
  return (n + s - 1) / s * s;
}

template <typename T, int R, int V>
inline void tile_gemm_block(int64_t inner, const T* a, int64_t a_row, int64_t a_col, const T* b, int64_t b_row,
                            T* out, int64_t out_row, bool accumulate) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t S = Vec::size();
  Vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) acc[r][j] = accumulate ? Vec::loadu(out + r * out_row + j * S) : Vec(T(0));
  for (int64_t i = 0; i < inner; ++i) {
    const T* b_i = b + i * b_row;
    Vec bv[V];
    for (int j = 0; j < V; ++j) bv[j] = Vec::loadu(b_i + j * S);
    for (int r = 0; r < R; ++r) {
      const Vec ar(a[r * a_row + i * a_col]);
      for (int j = 0; j < V; ++j) acc[r][j] = at::vec::fmadd(ar, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) acc[r][j].store(out + r * out_row + j * S);
}

constexpr int kTileRows = 4;     // rows per register block
constexpr int kTileVectors = 4;  // vectors per register block (16 accumulators)

template <typename T, int R>
inline void tile_gemm_rows(int vectors, int64_t inner, const T* a, int64_t a_row, int64_t a_col, const T* b,
                           int64_t b_row, T* out, int64_t out_row, bool accumulate) {
  switch (vectors) {
    case 1: return tile_gemm_block<T, R, 1>(inner, a, a_row, a_col, b, b_row, out, out_row, accumulate);
    case 2: return tile_gemm_block<T, R, 2>(inner, a, a_row, a_col, b, b_row, out, out_row, accumulate);
    case 3: return tile_gemm_block<T, R, 3>(inner, a, a_row, a_col, b, b_row, out, out_row, accumulate);
    default: return tile_gemm_block<T, R, 4>(inner, a, a_row, a_col, b, b_row, out, out_row, accumulate);
  }
}

template <typename T>
void tile_gemm(int64_t rows, int64_t width, int64_t inner, const T* a, int64_t a_row, int64_t a_col, const T* b,
               int64_t b_row, T* out, int64_t out_row, bool accumulate) {
  constexpr int64_t S = vector_size<T>();
  for (int64_t col = 0; col < width; col += kTileVectors * S) {
    const int vectors = static_cast<int>(std::min<int64_t>(kTileVectors, (width - col) / S));
    // Narrow products take more rows per block, to keep 16 accumulators in flight.
    const int64_t step = vectors <= 2 ? 2 * kTileRows : kTileRows;
    for (int64_t r = 0; r < rows; r += step) {
      const T* a_r = a + r * a_row;
      T* out_r = out + r * out_row + col;
      switch (std::min<int64_t>(step, rows - r)) {
#define PROVG_TILE_ROWS(R) \
  case R:                  \
    tile_gemm_rows<T, R>(vectors, inner, a_r, a_row, a_col, b + col, b_row, out_r, out_row, accumulate); \
    break;
        PROVG_TILE_ROWS(1) PROVG_TILE_ROWS(2) PROVG_TILE_ROWS(3) PROVG_TILE_ROWS(4)
        PROVG_TILE_ROWS(5) PROVG_TILE_ROWS(6) PROVG_TILE_ROWS(7) PROVG_TILE_ROWS(8)
#undef PROVG_TILE_ROWS
      }
    }
  }
}

}  // namespace cpu
}  // namespace provg
