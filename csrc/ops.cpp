// Schemas of the operators in the `provg` library namespace. Kernels register themselves per device
// in csrc/cpu/ and csrc/cuda/; autograd and fake (meta) kernels are registered from Python.
#include <torch/library.h>

TORCH_LIBRARY(provg, m) {
  m.def("mask_to_box(Tensor masks) -> (Tensor boxes, Tensor valid)");
}
