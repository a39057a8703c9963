"""Triton kernels of provg::verify_gate (Eq. 5–7).

The channel means need every position before any gate exists, so a first kernel sums x (forward), or
x and grad·x in the same pass (backward), over blocks of positions into per-block partials, which one
reduction adds up. The per-channel attention over the attribute tokens is a few hundred numbers per
batch item, computed inside the kernels that need it instead of as a chain of small PyTorch
operations (each a launch and a host round of its own, which cost more than the whole gate on a GPU):
the forward's scaling kernel recomputes the gate of its channels and writes y = x·gate; the backward's
attention kernel (one program per batch item) writes the gate, the shift dmean/P and the token
gradients, and the scaling kernel writes dx = grad·gate + shift. Forward: 3 launches; backward: 5
(float32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import acc_dtype, float64_factor, masked_softmax_rows, next_power_of_2

__all__ = ["backward", "forward"]


@triton.jit
def _column_sums_kernel(
    a_ptr,  # (B, P, C)
    b_ptr,  # (B, P, C) read when HAS_B
    out_ptr,  # (B, blocks, 1 or 2, C) partial sums of a (and of a·b)
    P,
    C,
    blocks,
    HAS_B: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    block = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    tile = (offs_p < P)[:, None] & (offs_c < C)[None, :]
    ptrs = (b * P + offs_p)[:, None] * C + offs_c[None, :]
    a = tl.load(a_ptr + ptrs, mask=tile, other=0.0).to(ACC)
    sums = 2 if HAS_B else 1
    row = (b * blocks + block) * sums * C
    tl.store(out_ptr + row + offs_c, tl.sum(a, axis=0), mask=offs_c < C)
    if HAS_B:
        product = a * tl.load(b_ptr + ptrs, mask=tile, other=0.0).to(ACC)
        tl.store(out_ptr + row + C + offs_c, tl.sum(product, axis=0), mask=offs_c < C)


@triton.jit
def _channel_attention(
    sums_ptr,  # (B, S, C): row 0 holds Σ_p x
    k_ptr,  # (B, N)
    v_ptr,  # (B, N)
    mask_ptr,  # (B, N) bool
    w_q_ptr,  # () scalar
    b,
    offs_c,
    C,
    N,
    S,
    inv_positions,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Means (BLOCK_C,), query (BLOCK_C,), attention weights (BLOCK_C, BLOCK_N), gate (BLOCK_C,), keys and
    values (BLOCK_N,) of a block of channels of batch item ``b``."""
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    valid = (tl.load(mask_ptr + b * N + offs_n, mask=n_ok, other=0) != 0) & n_ok
    keys = tl.load(k_ptr + b * N + offs_n, mask=n_ok, other=0.0).to(ACC)
    values = tl.load(v_ptr + b * N + offs_n, mask=n_ok, other=0.0).to(ACC)
    means = tl.load(sums_ptr + b * S * C + offs_c, mask=offs_c < C, other=0.0) * inv_positions
    query = tl.load(w_q_ptr).to(ACC) * means
    weights = masked_softmax_rows(query[:, None] * keys[None, :], valid)
    gate = tl.sigmoid(tl.sum(weights * values[None, :], axis=1))
    return means, query, weights, gate, keys, values


@triton.jit
def _forward_kernel(
    x_ptr,  # (B, P, C)
    sums_ptr,  # (B, 1, C) Σ_p x
    k_ptr,
    v_ptr,
    mask_ptr,
    w_q_ptr,
    y_ptr,  # (B, P, C) out
    P,
    C,
    N,
    inv_positions,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    inv_positions = float64_factor(inv_positions, P, ACC, False)
    _, _, _, gate, _, _ = _channel_attention(
        sums_ptr, k_ptr, v_ptr, mask_ptr, w_q_ptr, b, offs_c, C, N, 1, inv_positions, ACC, BLOCK_N
    )
    tile = (offs_p < P)[:, None] & (offs_c < C)[None, :]
    ptrs = (b * P + offs_p)[:, None] * C + offs_c[None, :]
    y = tl.load(x_ptr + ptrs, mask=tile, other=0.0).to(ACC) * gate[None, :]
    tl.store(y_ptr + ptrs, y.to(y_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _attention_backward_kernel(
    sums_ptr,  # (B, 2, C): Σ_p x, Σ_p grad·x
    k_ptr,
    v_ptr,
    mask_ptr,
    w_q_ptr,
    gate_ptr,  # (B, C) out
    shift_ptr,  # (B, C) out: w_q · dquery / P, the mean's share of dx
    dk_ptr,  # (B, N) out, accumulation dtype
    dv_ptr,  # (B, N) out
    dw_q_ptr,  # (B,) out: this item's share of dw_q
    P,
    C,
    N,
    inv_positions,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    w_q = tl.load(w_q_ptr).to(ACC)
    inv_positions = float64_factor(inv_positions, P, ACC, False)
    dk = tl.zeros((BLOCK_N,), dtype=ACC)
    dv = tl.zeros((BLOCK_N,), dtype=ACC)
    dw_q = tl.zeros((BLOCK_C,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        means, query, weights, gate, keys, values = _channel_attention(
            sums_ptr, k_ptr, v_ptr, mask_ptr, w_q_ptr, b, offs_c, C, N, 2, inv_positions, ACC, BLOCK_N
        )
        products = tl.load(sums_ptr + (b * 2 + 1) * C + offs_c, mask=c_ok, other=0.0)
        dattention = tl.where(c_ok, products * gate * (1 - gate), 0.0)
        dweights = dattention[:, None] * values[None, :]
        dscores = weights * (dweights - tl.sum(weights * dweights, axis=1)[:, None])
        dquery = tl.sum(dscores * keys[None, :], axis=1)
        dk += tl.sum(dscores * query[:, None], axis=0)
        dv += tl.sum(weights * dattention[:, None], axis=0)
        dw_q += dquery * means
        tl.store(gate_ptr + b * C + offs_c, gate, mask=c_ok)
        tl.store(shift_ptr + b * C + offs_c, w_q * dquery * inv_positions, mask=c_ok)
    n_ok = offs_n < N
    tl.store(dk_ptr + b * N + offs_n, dk, mask=n_ok)
    tl.store(dv_ptr + b * N + offs_n, dv, mask=n_ok)
    tl.store(dw_q_ptr + b, tl.sum(dw_q, axis=0))


@triton.jit
def _scale_kernel(
    a_ptr,  # (B, P, C)
    scale_ptr,  # (B, C)
    shift_ptr,  # (B, C)
    out_ptr,  # (B, P, C)
    P,
    C,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    tile = (offs_p < P)[:, None] & c_ok[None, :]
    ptrs = (b * P + offs_p)[:, None] * C + offs_c[None, :]
    scale = tl.load(scale_ptr + b * C + offs_c, mask=c_ok)
    shift = tl.load(shift_ptr + b * C + offs_c, mask=c_ok)
    out = tl.load(a_ptr + ptrs, mask=tile, other=0.0).to(ACC) * scale[None, :] + shift[None, :]
    tl.store(out_ptr + ptrs, out.to(out_ptr.dtype.element_ty), mask=tile)


def _blocks(x: Tensor) -> tuple[int, int]:
    block_c = min(128, next_power_of_2(x.shape[2]))
    return max(1, 4096 // block_c), block_c


def _column_sums(a: Tensor, b: Tensor | None) -> Tensor:
    """(B, 1, C) = Σ_p a per channel, or (B, 2, C) = Σ_p a and Σ_p a·b, in the accumulation dtype."""
    batch, positions, channels = a.shape
    block_p, block_c = _blocks(a)
    blocks = triton.cdiv(positions, block_p)
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    sums = 1 if b is None else 2
    partial = torch.empty(batch, blocks, sums, channels, dtype=acc, device=a.device)
    grid = (blocks, batch, triton.cdiv(channels, block_c))
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
        num_warps=8,  # NOTE: at 4, the two bf16 sums of the backward spill on sm_90 (Triton 3.6)
    )
    return partial.sum(1)


def _scale(a: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """a · scale + shift, with (B, C) scale and shift broadcast over positions."""
    batch, positions, channels = a.shape
    block_p, block_c = _blocks(a)
    out = torch.empty_like(a)
    grid = (triton.cdiv(positions, block_p), batch, triton.cdiv(channels, block_c))
    _scale_kernel[grid](
        a,
        scale,
        shift,
        out,
        positions,
        channels,
        ACC=acc_dtype(a.dtype),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
    )
    return out


def forward(x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor) -> Tensor:
    x, k, v, key_mask, w_q = (t.contiguous() for t in (x, k, v, key_mask, w_q))
    batch, positions, channels = x.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    sums = _column_sums(x, None)
    block_p, block_c = _blocks(x)
    grid = (triton.cdiv(positions, block_p), batch, triton.cdiv(channels, block_c))
    _forward_kernel[grid](
        x,
        sums,
        k,
        v,
        key_mask,
        w_q,
        y,
        positions,
        channels,
        k.shape[1],
        1.0 / positions,
        ACC=acc_dtype(x.dtype),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        BLOCK_N=next_power_of_2(k.shape[1], 2),  # NOTE: 1 fails to lower in Triton 3.6 (sm_90)
    )
    return y


def backward(grad: Tensor, x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor):
    grad, x, k, v, key_mask, w_q = (t.contiguous() for t in (grad, x, k, v, key_mask, w_q))
    batch, positions, channels = x.shape
    if x.numel() == 0:
        return torch.empty_like(x), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(w_q)
    sums = _column_sums(x, grad)  # Σ_p x and Σ_p grad·x
    acc = sums.dtype
    gate = torch.empty(batch, channels, dtype=acc, device=x.device)
    shift = torch.empty_like(gate)
    dk = torch.empty(k.shape, dtype=acc, device=x.device)
    dv = torch.empty_like(dk)
    dw_q = torch.empty(batch, dtype=acc, device=x.device)
    _attention_backward_kernel[(batch,)](
        sums,
        k,
        v,
        key_mask,
        w_q,
        gate,
        shift,
        dk,
        dv,
        dw_q,
        positions,
        channels,
        k.shape[1],
        1.0 / positions,
        ACC=acc_dtype(x.dtype),
        BLOCK_C=min(128, next_power_of_2(channels)),
        BLOCK_N=next_power_of_2(k.shape[1], 2),  # NOTE: 1 fails to lower in Triton 3.6 (sm_90)
    )
    dx = _scale(grad, gate, shift)
    return dx, dk.to(k.dtype), dv.to(v.dtype), dw_q.sum().reshape(w_q.shape).to(w_q.dtype)
