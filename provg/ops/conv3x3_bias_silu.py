"""Deploy-form RepVGG convolution (Sec. 4.3, DESIGN §2): ``SiLU(conv3×3(x; W, padding 1) + b) [+ r]``.

After `provg.reparameterize` a RepVGG block is one 3×3 convolution with bias and SiLU; the optional
residual ``r`` is the CSP block's add (``RepBlocks(conv1(x)) + conv2(x)``) folded into the last
block. Fused, the bias, activation and residual cost no pass of their own.

Backends: ``torch`` (`conv3x3_bias_silu_reference`); ``cpp`` (Winograd F(2×2, 3×3) or a oneDNN
convolution with SiLU as a post-op for float32, ATen's convolution and one fused OpenMP epilogue pass
for float64; see below); ``cuda``
(cuDNN convolution and one fused epilogue kernel; float32 follows ``torch.backends.cudnn.allow_tf32``
as `F.conv2d` does); ``triton`` (implicit GEMM over channels-last maps
with the epilogue in registers). The output has the memory format of ``x``. The backward (for
fine-tuning a deployed model) recomputes the pre-activation and uses ATen's convolution backward.
Under autocast the op computes in the autocast dtype, as `F.conv2d` would.

Algorithm of the cpp backend (``algorithm`` argument, else ``PROVG_CONV_ALGORITHM``, else automatic):
``winograd`` computes each 2×2 output tile as Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, 16 instead of 36 multiplies
per tile and channel pair, as 16 batched GEMMs, with bias, SiLU and residual in the output transform
(csrc/cpu/conv3x3_winograd_cpu.cpp); it differs from the direct convolution by rounding only (float32:
~4e-7 relative at 256 channels; float64: ~1e-15). The filter transform is computed once per weight
and version and cached. The GEMMs are oneDNN's matmul for float32 (ATen's bmm, i.e. MKL, runs AVX2
code on AMD processors, at half oneDNN's rate) and ATen's bmm for float64;
``PROVG_WINOGRAD_GEMM=onednn|blas`` forces one. ``direct`` is the oneDNN / ATen convolution.
Automatic: Winograd for float32 with at least 32 input and output channels (at the CFM's 256
channels, 1.5–2.0× the direct convolution on an AMD EPYC with oneDNN's matmul, 1.5–1.7× on an Intel
Xeon with MKL's, benchmarks/bench_repconv.py), direct otherwise.
"""

from __future__ import annotations

import importlib
import os
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from ._backend import select_backend
from ._gate_api import GATE_BACKENDS, GATE_DTYPES, memory_layout

__all__ = ["CONV_ALGORITHMS", "conv3x3_bias_silu", "conv3x3_bias_silu_reference"]

CONV_ALGORITHMS = ("direct", "winograd")
ALGORITHM_ENV_VAR = "PROVG_CONV_ALGORITHM"
_WINOGRAD_MIN_CHANNELS = 32

# NOTE: cuDNN's convolution with a fused epilogue is the automatic choice on GPU; the Triton implicit
# GEMM is there to be forced and benchmarked against it (benchmarks/bench_repconv.py).
_PREFERENCE = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}


def conv3x3_bias_silu_reference(
    x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None = None
) -> Tensor:
    """PyTorch reference of `conv3x3_bias_silu`."""
    y = F.silu(F.conv2d(x, weight, bias, padding=1))
    return y if residual is None else y + residual


def _forward_kernel(backend: str):
    if backend == "triton":
        return importlib.import_module("provg.ops.triton.conv3x3_bias_silu").forward
    return torch.ops.provg.conv3x3_bias_silu_forward


# id(weight) -> (weak reference, weight._version, filter transform): a deployed model's weights are
# transformed once, and again only after an in-place change (which bumps the version).
_winograd_weights: dict[int, tuple[weakref.ref, int, Tensor]] = {}


def _winograd_weight(weight: Tensor) -> Tensor:
    key = id(weight)
    entry = _winograd_weights.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == weight._version:
        return entry[2]
    u = torch.ops.provg.conv3x3_winograd_weight(weight.detach())
    reference = weakref.ref(weight, lambda _, key=key: _winograd_weights.pop(key, None))
    _winograd_weights[key] = (reference, weight._version, u)
    return u


def _choose_algorithm(requested: str | None, backend: str, x: Tensor, weight: Tensor) -> str:
    """The cpp backend's algorithm: the request (argument, else the environment), else automatic."""
    requested = requested or os.environ.get(ALGORITHM_ENV_VAR) or "auto"
    if requested not in (*CONV_ALGORITHMS, "auto"):
        raise ValueError(
            f"conv3x3_bias_silu: unknown algorithm {requested!r}; choose one of "
            f"{', '.join(CONV_ALGORITHMS)} or auto (argument or {ALGORITHM_ENV_VAR})"
        )
    if requested == "winograd" and backend != "cpp":
        raise ValueError(
            f"conv3x3_bias_silu: the winograd algorithm is a kernel of the cpp backend, but the backend is "
            f"{backend!r}; use backend='cpp' (CPU tensors) or algorithm='direct'"
        )
    if requested != "auto":
        return requested
    wide = min(weight.shape[0], weight.shape[1]) >= _WINOGRAD_MIN_CHANNELS
    return "winograd" if backend == "cpp" and x.dtype == torch.float32 and wide else "direct"


torch.library.define(
    "provg::conv3x3_bias_silu",
    "(Tensor x, Tensor weight, Tensor bias, Tensor? residual, str backend, str algorithm) -> Tensor",
)


@torch.library.impl("provg::conv3x3_bias_silu", "default")
def _forward(x, weight, bias, residual, backend, algorithm):
    if algorithm == "winograd":
        u = _winograd_weight(weight)
        return torch.ops.provg.conv3x3_bias_silu_winograd_forward(x, u, bias, residual)
    return _forward_kernel(backend)(x, weight, bias, residual)


@torch.library.register_fake("provg::conv3x3_bias_silu")
def _forward_fake(x, weight, bias, residual, backend, algorithm):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return x.new_empty(shape).contiguous(memory_format=memory_layout(x))


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, _, _ = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.has_residual = residual is not None


def _autograd_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    pre = F.conv2d(x, weight, bias, padding=1)
    sigmoid = torch.sigmoid(pre)
    dpre = grad * sigmoid * (1 + pre * (1 - sigmoid))
    dx, dweight, dbias = torch.ops.aten.convolution_backward(
        dpre,
        x,
        weight,
        [weight.shape[0]],
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        1,
        list(ctx.needs_input_grad[:3]),
    )
    return dx, dweight, dbias, grad if ctx.has_residual else None, None, None


torch.library.register_autograd("provg::conv3x3_bias_silu", _autograd_backward, setup_context=_setup_context)


def conv3x3_bias_silu(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    residual: Tensor | None = None,
    backend: str | None = None,
    algorithm: str | None = None,
) -> Tensor:
    """``SiLU(conv2d(x, weight, bias, padding=1)) [+ residual]`` for a (C_out, C_in, 3, 3) ``weight``.

    ``algorithm`` ("direct" or "winograd", cpp backend; default: ``PROVG_CONV_ALGORITHM``, else
    automatic) picks how the cpp backend convolves; see the module docstring."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"conv3x3_bias_silu: x must be a floating (B, C, H, W) tensor, got {getattr(x, 'shape', x)}"
        )
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise ValueError(
            f"conv3x3_bias_silu: weight must be (C_out, {x.shape[1]}, 3, 3) for x {tuple(x.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"conv3x3_bias_silu: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    out_shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"conv3x3_bias_silu: residual must be {out_shape}, got {tuple(residual.shape)}")
    for t in (weight, bias) + (() if residual is None else (residual,)):
        if t.device != x.device:
            raise ValueError(f"conv3x3_bias_silu: all inputs must be on {x.device}, got one on {t.device}")
    if torch.is_autocast_enabled(x.device.type):  # as F.conv2d under autocast: compute in its dtype
        dtype = torch.get_autocast_dtype(x.device.type)
        if residual is not None and residual.dtype != dtype:  # the add promotes, as eager's would
            return conv3x3_bias_silu(x, weight, bias, None, backend, algorithm) + residual
    else:
        dtype = x.dtype
        for t in (weight, bias) + (() if residual is None else (residual,)):
            dtype = torch.promote_types(dtype, t.dtype)
    chosen = select_backend(
        "conv3x3_bias_silu", x.device, GATE_BACKENDS, _PREFERENCE, backend, dtype, GATE_DTYPES
    )
    x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    if residual is not None:
        residual = residual.to(dtype).contiguous(memory_format=memory_layout(x))
    how = _choose_algorithm(algorithm, chosen, x, weight)
    if chosen == "torch":
        return conv3x3_bias_silu_reference(x, weight, bias, residual)
    return torch.ops.provg.conv3x3_bias_silu.default(
        x, weight.contiguous(), bias.contiguous(), residual, chosen, how
    )
