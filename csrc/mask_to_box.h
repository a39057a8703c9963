// mask_to_box: minimal enclosing rectangle of each mask in a batch (the b_m of ProVG Eq. 14 and the
// box of a mask in the RES metrics). Boxes use pixel-edge coordinates: a mask whose foreground spans
// rows r0..r1 and columns c0..c1 gives (x0, y0, x1, y1) = (c0, r0, c1 + 1, r1 + 1); an empty mask gives
// (0, 0, 0, 0) and valid = false.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace provg {

std::tuple<at::Tensor, at::Tensor> mask_to_box_cpu(const at::Tensor& masks);
#ifdef PROVG_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> mask_to_box_cuda(const at::Tensor& masks);
#endif

}  // namespace provg
