"""Triton kernels of provg::verify_gate (Eq. 5–7).

The channel means need every position before any gate exists: a first kernel sums x (forward) or
grad·x (backward) over blocks of positions into per-block partials; the per-channel attention over the
attribute tokens is a few hundred numbers per batch item and runs as PyTorch operations; a second
kernel writes y = x·gate (forward) or dx = grad·gate + dmean/P (backward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import acc_dtype, next_power_of_2

__all__ = ["backward", "forward"]


@triton.jit
def _column_sums_kernel(
    a_ptr,  # (B, P, C)
    b_ptr,  # (B, P, C) multiplied in when HAS_B
    out_ptr,  # (B, blocks, C) partial sums
    P,
    C,
    blocks,
    HAS_B: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1).to(tl.int64)
    offs_c = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    tile = (offs_p < P)[:, None] & (offs_c < C)[None, :]
    ptrs = (b * P + offs_p)[:, None] * C + offs_c[None, :]
    a = tl.load(a_ptr + ptrs, mask=tile, other=0.0).to(ACC)
    if HAS_B:
        a = a * tl.load(b_ptr + ptrs, mask=tile, other=0.0).to(ACC)
    tl.store(out_ptr + (b * blocks + block) * C + offs_c, tl.sum(a, axis=0), mask=offs_c < C)


@triton.jit
def _scale_kernel(
    a_ptr,  # (B, P, C)
    scale_ptr,  # (B, C)
    shift_ptr,  # (B, C) added when HAS_SHIFT
    out_ptr,  # (B, P, C)
    P,
    C,
    HAS_SHIFT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    tile = (offs_p < P)[:, None] & c_ok[None, :]
    ptrs = (b * P + offs_p)[:, None] * C + offs_c[None, :]
    out = (
        tl.load(a_ptr + ptrs, mask=tile, other=0.0).to(ACC)
        * tl.load(scale_ptr + b * C + offs_c, mask=c_ok)[None, :]
    )
    if HAS_SHIFT:
        out = out + tl.load(shift_ptr + b * C + offs_c, mask=c_ok)[None, :]
    tl.store(out_ptr + ptrs, out.to(out_ptr.dtype.element_ty), mask=tile)


def _blocks(x: Tensor) -> tuple[int, int]:
    block_c = min(128, next_power_of_2(x.shape[2]))
    return max(1, 4096 // block_c), block_c


def _column_sums(a: Tensor, b: Tensor | None) -> Tensor:
    """Σ_p a (· b) per channel, (B, C) in the accumulation dtype."""
    batch, positions, channels = a.shape
    block_p, block_c = _blocks(a)
    blocks = triton.cdiv(positions, block_p)
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    partial = torch.zeros(batch, blocks, channels, dtype=acc, device=a.device)
    grid = (batch, blocks, triton.cdiv(channels, block_c))
    _column_sums_kernel[grid](
        a,
        b if b is not None else a,
        partial,
        positions,
        channels,
        blocks,
        HAS_B=b is not None,
        ACC=acc_dtype(a.dtype),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
    )
    return partial.sum(1)


def _scale(a: Tensor, scale: Tensor, shift: Tensor | None) -> Tensor:
    batch, positions, channels = a.shape
    block_p, block_c = _blocks(a)
    out = torch.empty_like(a)
    grid = (batch, triton.cdiv(positions, block_p), triton.cdiv(channels, block_c))
    _scale_kernel[grid](
        a,
        scale,
        shift if shift is not None else scale,
        out,
        positions,
        channels,
        HAS_SHIFT=shift is not None,
        ACC=acc_dtype(a.dtype),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
    )
    return out


def _channel_attention(means: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor):
    """Per-channel query, attention weights (B, C, N) and gate (B, C), in the accumulation dtype."""
    query = w_q.to(means.dtype) * means
    scores = (query[:, :, None] * k.to(means.dtype)[:, None, :]).masked_fill(
        ~key_mask[:, None, :], float("-inf")
    )
    top = scores.amax(dim=2, keepdim=True).nan_to_num(neginf=0.0).clamp_min(torch.finfo(means.dtype).min)
    e = torch.exp(scores - top) * key_mask[:, None, :]
    total = e.sum(dim=2, keepdim=True)
    weights = e / torch.where(total == 0, torch.ones_like(total), total)
    gate = torch.sigmoid((weights * v.to(means.dtype)[:, None, :]).sum(dim=2))
    return query, weights, gate


def forward(x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor) -> Tensor:
    x = x.contiguous()
    if x.numel() == 0:
        return torch.empty_like(x)
    means = _column_sums(x, None) / x.shape[1]
    _, _, gate = _channel_attention(means, k, v, key_mask, w_q)
    return _scale(x, gate, None)


def backward(grad: Tensor, x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor):
    grad, x = grad.contiguous(), x.contiguous()
    positions = x.shape[1]
    if x.numel() == 0:
        return torch.empty_like(x), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(w_q)
    means = _column_sums(x, None) / positions
    products = _column_sums(grad, x)  # Σ_p grad · x
    query, weights, gate = _channel_attention(means, k, v, key_mask, w_q)
    acc = means.dtype
    dattention = products * gate * (1 - gate)  # (B, C)
    dweights = dattention[:, :, None] * v.to(acc)[:, None, :]
    dscores = weights * (dweights - (weights * dweights).sum(dim=2, keepdim=True))
    dquery = (dscores * k.to(acc)[:, None, :]).sum(dim=2)  # (B, C)
    dk = (dscores * query[:, :, None]).sum(dim=1)
    dv = (weights * dattention[:, :, None]).sum(dim=1)
    dw_q = (dquery * means).sum()
    dx = _scale(grad, gate, w_q.to(acc) * dquery / positions)
    return dx, dk.to(k.dtype), dv.to(v.dtype), dw_q.reshape(w_q.shape).to(w_q.dtype)
