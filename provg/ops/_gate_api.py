"""What the fused operators share: input checks, kernel lookup per backend, backend choice, layout.

The PCM gates and `rep_bn_add_silu` have the same backends and dtypes; `conv3x3_bias_silu` prefers
cuDNN on GPU and keeps its own choice.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import Tensor

from ._backend import select_backend

__all__ = [
    "GATE_BACKENDS",
    "GATE_DTYPES",
    "check_keys",
    "choose_backend",
    "differentiable_once",
    "kernels",
    "memory_layout",
    "promote",
]

GATE_BACKENDS = ("torch", "cpp", "triton", "cuda")
# On GPU the CUDA kernels come first: their C++ entry points keep a call's host work small, and called
# as the model calls them (eager, B = 8) they beat the Triton ones at every stage but survey's first,
# and at every CFM size of the tail (H200, 2026-11-28, benchmarks/RESULTS.md: summed over the four
# stages, survey 2.52 against 3.17 ms; verify and locate 1.6-2.0x faster per stage; the tail 1.6-1.8x).
# Triton's kernels run faster on the device alone at some stages (CUDA-graph replays): force them with
# backend="triton".
_PREFERENCE = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}
_FLOAT = (torch.float32, torch.float64)
_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
GATE_DTYPES = {"torch": _ALL, "cpp": _FLOAT, "cuda": _ALL, "triton": _ALL}


def check_keys(op: str, x: Tensor, key_mask: Tensor, keys: Tensor) -> None:
    """Shared checks: x is (B, P, C) floating point; key_mask is (B, N) bool matching the keys."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{op}: x must be a (B, P, C) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be floating point, got {x.dtype}")
    if key_mask.dtype != torch.bool:
        raise TypeError(f"{op}: key_mask must be bool (True = a valid token), got {key_mask.dtype}")
    if key_mask.dim() != 2 or key_mask.shape[0] != x.shape[0] or key_mask.shape[1] != keys.shape[1]:
        raise ValueError(
            f"{op}: key_mask must be (B, N) = ({x.shape[0]}, {keys.shape[1]}), got {tuple(key_mask.shape)}"
        )
    for tensor in (keys, key_mask):
        if tensor.device != x.device:
            raise ValueError(f"{op}: all inputs must be on {x.device}, got one on {tensor.device}")


def promote(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Floating inputs in their common dtype (as PyTorch's own ops promote, e.g. under autocast)."""
    floating = [t for t in tensors if t.is_floating_point()]
    dtype = floating[0].dtype
    if all(t.dtype == dtype for t in floating):
        return tensors  # the common case, and no `.to` calls (host time counts at small stages)
    for t in floating[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


def choose_backend(op: str, x: Tensor, backend: str | None) -> str:
    return select_backend(op, x.device, GATE_BACKENDS, _PREFERENCE, backend, x.dtype, GATE_DTYPES)


def kernels(op: str, backend: str):
    """(forward, backward) callables of ``op``'s kernels for ``backend`` ("cpp", "cuda" or "triton")."""
    if backend == "triton":
        module = importlib.import_module(f"provg.ops.triton.{op}")
        return module.forward, module.backward
    return getattr(torch.ops.provg, f"{op}_forward"), getattr(torch.ops.provg, f"{op}_backward")


def differentiable_once(op: str, gradients: Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    """The gradients a fused kernel's backward returned, made safe for ``create_graph=True``.

    The kernels have no derivative of their own; without this, a second derivative through them would
    silently miss their terms. Under grad mode (``create_graph=True``) the gradients come back behind a
    node that raises, naming the fix, if anything differentiates them again (as
    `torch.autograd.function.once_differentiable` does, but whichever gradients flow in).
    """
    if not torch.is_grad_enabled():
        return tuple(gradients)
    error = torch._C._functions.DelayedError(
        f"{op}: the fused kernels are differentiable once; a second derivative (through "
        "create_graph=True) needs backend='torch'".encode(),
        len(gradients),
    )
    wrapped = error(*[None if g is None else g.detach().requires_grad_() for g in gradients])
    return wrapped if isinstance(wrapped, tuple) else (wrapped,)


def memory_layout(x: Tensor) -> torch.memory_format:
    """channels-last when the (B, C, H, W) ``x`` is laid out so (and not also plainly contiguous), else
    NCHW: the layout the RepVGG kernels compute in and return."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
