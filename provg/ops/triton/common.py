"""Triton building blocks shared by the gate kernels: a matrix product that falls back to
multiply-and-sum where ``tl.dot`` cannot run (float64, tiny tiles), the masked row softmax, launch
helpers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "acc_dtype",
    "float64_factor",
    "masked_softmax_rows",
    "matmul",
    "multiprocessors",
    "next_power_of_2",
    "use_dot",
]

# Multiprocessors of an H100/H200 (SXM): what launches on CPU tensors (Triton's interpreter, the
# compile-only check) plan for, so that they take the configurations such a GPU would.
HOPPER_MULTIPROCESSORS = 132


@triton.jit
def matmul(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """(M, K) @ (K, N) in the accumulation dtype of ``a``; ``PRECISION`` is tl.dot's float32 input
    precision ("ieee": full float32, "tf32": the tensor cores' 10-bit mantissa).

    NOTE: callers pass PRECISION explicitly; Triton 3.6 hands a jit function's default value through as
    a plain str, not a constexpr, and the compile fails.
    """
    # NOTE: one return statement: Triton (3.6 and 3.8 alike) type-checks an early return inside a
    # constexpr branch against the one after it (a bf16 multiply-and-sum against tl.dot's float32) and
    # refuses to compile; the interpreter never notices.
    if USE_DOT:
        product = tl.dot(a, b, input_precision=PRECISION)
    else:
        product = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return product


@triton.jit
def masked_softmax_rows(scores, valid):
    """Softmax of each row of ``scores`` over the columns where ``valid`` (a row vector) is true;
    a row with no valid column is all zeros."""
    scores = tl.where(valid[None, :], scores, float("-inf"))
    top = tl.max(scores, axis=1)
    # NOTE: a fully masked row has top = -inf; shifting by 0 instead keeps exp() finite (and zero).
    top = tl.where(top == float("-inf"), 0.0, top)
    e = tl.where(valid[None, :], tl.exp(scores - top[:, None]), 0.0)
    total = tl.sum(e, axis=1)
    return e / tl.where(total == 0.0, 1.0, total)[:, None]


@triton.jit
def float64_factor(factor, n, ACC: tl.constexpr, SQRT: tl.constexpr):
    """``factor``, the host's 1/n (1/√n with ``SQRT``), recomputed from the integer ``n`` when ``ACC`` is
    float64.

    NOTE: a compiled kernel takes a Python float argument as float32, so such a factor came into the
    float64 kernels rounded to float32: on an H200 (2026-11-28) the survey and verify gates read 0.6–1.7e-9
    from the float64 reference, against under 1e-10 for the CUDA kernels. The interpreter keeps Python
    floats in float64 and never showed it. Other dtypes keep the host's factor (their kernels are as
    measured, with no extra live register).
    """
    if ACC == tl.float64:  # noqa: SIM300 (ACC is a kernel parameter, not a constant)
        value = tl.zeros([], ACC) + n
        if SQRT:
            value = tl.sqrt(value)  # correctly rounded in float64
        factor = 1.0 / value
    return factor


def acc_dtype(dtype: torch.dtype):
    """float64 accumulates in float64, everything else in float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def use_dot(dtype: torch.dtype, *dims: int) -> bool:
    """``tl.dot`` for float32-or-narrower inputs with tiles of at least 16; float64 multiplies and sums."""
    return dtype != torch.float64 and min(dims) >= 16


def next_power_of_2(n: int, minimum: int = 1) -> int:
    return max(minimum, triton.next_power_of_2(max(n, 1)))


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``'s GPU; `HOPPER_MULTIPROCESSORS` for a CPU tensor."""
    if device.type != "cuda":
        return HOPPER_MULTIPROCESSORS
    return torch.cuda.get_device_properties(device).multi_processor_count
