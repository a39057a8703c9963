// C++ test of the provg operators through libtorch, without Python: hand-worked boxes, the dispatcher
// path, and agreement with a brute-force scan on random masks of odd shapes.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <tuple>

#include "mask_to_box.h"

namespace {

int failures = 0;

void check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

// Brute force: visit every pixel.
std::tuple<at::Tensor, at::Tensor> scan(const at::Tensor& masks) {
  const int64_t batch = masks.size(0), height = masks.size(1), width = masks.size(2);
  auto boxes = torch::zeros({batch, 4});
  auto valid = torch::zeros({batch}, torch::kBool);
  auto m = masks.accessor<bool, 3>();
  for (int64_t b = 0; b < batch; ++b) {
    int64_t x0 = width, y0 = height, x1 = -1, y1 = -1;
    for (int64_t r = 0; r < height; ++r) {
      for (int64_t c = 0; c < width; ++c) {
        if (m[b][r][c]) {
          x0 = std::min(x0, c);
          y0 = std::min(y0, r);
          x1 = std::max(x1, c);
          y1 = std::max(y1, r);
        }
      }
    }
    if (x1 >= 0) {
      boxes[b][0] = static_cast<float>(x0);
      boxes[b][1] = static_cast<float>(y0);
      boxes[b][2] = static_cast<float>(x1 + 1);
      boxes[b][3] = static_cast<float>(y1 + 1);
      valid[b] = true;
    }
  }
  return {boxes, valid};
}

}  // namespace

int main() {
  // Hand-worked: rows 1-2, cols 2-4 -> (2, 1, 5, 3); an empty mask -> zeros, invalid.
  auto masks = torch::zeros({2, 5, 7}, torch::kBool);
  masks.index_put_({0, torch::indexing::Slice(1, 3), torch::indexing::Slice(2, 5)}, true);
  auto [boxes, valid] = provg::mask_to_box_cpu(masks);
  check(torch::equal(boxes[0], torch::tensor({2.f, 1.f, 5.f, 3.f})), "hand-worked box");
  check(torch::equal(boxes[1], torch::zeros({4})), "empty mask gives zeros");
  check(valid[0].item<bool>() && !valid[1].item<bool>(), "validity flags");

  // Through the dispatcher, as torch.ops.provg.mask_to_box is called.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("provg::mask_to_box", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  auto [dispatched, dispatched_valid] = op.call(masks);
  check(torch::equal(dispatched, boxes) && torch::equal(dispatched_valid, valid), "dispatcher path");

  torch::manual_seed(0);
  const int64_t shapes[][3] = {{0, 3, 3}, {1, 1, 1}, {3, 1, 97}, {4, 97, 1}, {7, 13, 31}, {2, 801, 800}};
  for (const auto& s : shapes) {
    auto random = torch::rand({s[0], s[1], s[2]}) < 0.003;
    auto [got, got_valid] = provg::mask_to_box_cpu(random);
    auto [want, want_valid] = scan(random);
    check(torch::equal(got, want) && torch::equal(got_valid, want_valid), "random masks vs brute force");
    auto [from_bytes, from_bytes_valid] = provg::mask_to_box_cpu(random.to(torch::kByte) * 255);
    check(torch::equal(from_bytes, want) && torch::equal(from_bytes_valid, want_valid), "uint8 masks");
  }
  if (failures == 0) std::printf("provg C++ ops: all checks passed\n");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
