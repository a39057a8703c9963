// CPU kernel of provg::mask_to_box. One pass over each mask: every row is OR-reduced into a per-column
// accumulator and a per-row flag (both loops vectorize), then the first and last set column and row
// give the box. Masks run in parallel over the batch with at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "../mask_to_box.h"

namespace provg {
namespace {

void box_of_mask(const uint8_t* mask, int64_t height, int64_t width, float* box, bool* valid,
                 std::vector<uint8_t>& column_any) {
  std::fill(column_any.begin(), column_any.end(), uint8_t{0});
  int64_t first_row = -1, last_row = -1;
  for (int64_t r = 0; r < height; ++r) {
    const uint8_t* row = mask + r * width;
    uint8_t row_any = 0;
    for (int64_t c = 0; c < width; ++c) {
      column_any[c] |= row[c];
      row_any |= row[c];
    }
    if (row_any) {
      if (first_row < 0) first_row = r;
      last_row = r;
    }
  }
  if (first_row < 0) {
    box[0] = box[1] = box[2] = box[3] = 0.f;
    *valid = false;
    return;
  }
  int64_t first_col = 0, last_col = width - 1;
  while (!column_any[first_col]) ++first_col;
  while (!column_any[last_col]) --last_col;
  box[0] = static_cast<float>(first_col);
  box[1] = static_cast<float>(first_row);
  box[2] = static_cast<float>(last_col + 1);
  box[3] = static_cast<float>(last_row + 1);
  *valid = true;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mask_to_box_cpu(const at::Tensor& masks) {
  TORCH_CHECK(masks.device().is_cpu(), "mask_to_box_cpu: expected a CPU tensor, got ", masks.device());
  TORCH_CHECK(masks.dim() == 3, "mask_to_box: expected masks of shape (B, H, W), got ", masks.sizes());
  TORCH_CHECK(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kByte,
              "mask_to_box: expected bool or uint8 masks, got ", masks.scalar_type());
  const int64_t batch = masks.size(0), height = masks.size(1), width = masks.size(2);
  // Bool and uint8 are both one byte per pixel; any nonzero byte is foreground and stays nonzero under OR.
  const at::Tensor bytes = masks.contiguous();
  at::Tensor boxes = at::empty({batch, 4}, masks.options().dtype(at::kFloat));
  at::Tensor valid = at::empty({batch}, masks.options().dtype(at::kBool));
  if (batch == 0) return {boxes, valid};
  if (height == 0 || width == 0) {
    boxes.zero_();
    valid.fill_(false);
    return {boxes, valid};
  }
  const uint8_t* data = static_cast<const uint8_t*>(bytes.const_data_ptr());
  float* box_data = boxes.data_ptr<float>();
  bool* valid_data = valid.data_ptr<bool>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> column_any(static_cast<size_t>(width));
    for (int64_t b = begin; b < end; ++b) {
      box_of_mask(data + b * height * width, height, width, box_data + 4 * b, valid_data + b, column_any);
    }
  });
  return {boxes, valid};
}

TORCH_LIBRARY_IMPL(provg, CPU, m) { m.impl("mask_to_box", &mask_to_box_cpu); }

}  // namespace provg
