"""Triton kernels of provg::survey_gate (Eq. 1–2).

One program per (batch item · head, block of positions): the scores over the few context tokens stay
in registers; x and q are read once and y written once in the forward. The backward recomputes the
attention, writes dx and dq, and writes per-block partial sums of dk and dv that are then summed in
block order (no atomics: deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import (
    acc_dtype,
    float64_factor,
    masked_softmax_rows,
    matmul,
    multiprocessors,
    next_power_of_2,
    use_dot,
)

__all__ = ["backward", "forward"]


@triton.jit
def _attention(
    q_ptr,
    k_ptr,
    mask_ptr,
    b,
    h,
    offs_p,
    P,
    C,
    N,
    D,
    scale,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    """Attention weights (BLOCK_P, BLOCK_N) of one block of positions and one head."""
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    n_ok = offs_n < N
    valid = (tl.load(mask_ptr + b * N + offs_n, mask=n_ok, other=0) != 0) & n_ok
    q_rows = (b * P + offs_p) * C + h * D  # int64 offsets
    k_rows = (b * N + offs_n) * C + h * D
    scores = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=p_ok[:, None] & d_ok[None, :], other=0.0)
        k = tl.load(k_ptr + k_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        scores += matmul(q.to(ACC), tl.trans(k.to(ACC)), USE_DOT, "ieee")
    return masked_softmax_rows(scores * scale, valid)


@triton.jit
def _forward_kernel(
    x_ptr,  # (B, P, C)
    q_ptr,  # (B, P, C)
    k_ptr,  # (B, N, C)
    v_ptr,  # (B, N, C)
    mask_ptr,  # (B, N) bool
    y_ptr,  # (B, P, C) out
    P,
    C,
    N,
    H,
    D,
    scale,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    scale = float64_factor(scale, D, ACC, True)
    weights = _attention(
        q_ptr, k_ptr, mask_ptr, b, h, offs_p, P, C, N, D, scale, ACC, BLOCK_P, BLOCK_N, BLOCK_D, USE_DOT
    )
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    rows = (b * P + offs_p) * C + h * D
    v_rows = (b * N + offs_n) * C + h * D
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        v = tl.load(
            v_ptr + v_rows[:, None] + offs_d[None, :], mask=(offs_n < N)[:, None] & d_ok[None, :], other=0.0
        )
        attention = matmul(weights, v.to(ACC), USE_DOT, "ieee")
        tile = p_ok[:, None] & d_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] + offs_d[None, :], mask=tile, other=0.0).to(ACC)
        y = x * tl.sigmoid(attention)
        tl.store(y_ptr + rows[:, None] + offs_d[None, :], y.to(y_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _backward_kernel(
    grad_ptr,  # (B, P, C)
    x_ptr,  # (B, P, C)
    q_ptr,  # (B, P, C)
    k_ptr,  # (B, N, C)
    v_ptr,  # (B, N, C)
    mask_ptr,  # (B, N) bool
    dx_ptr,  # (B, P, C) out
    dq_ptr,  # (B, P, C) out
    dk_part_ptr,  # (B, blocks, N, C) out, float32/float64
    dv_part_ptr,  # (B, blocks, N, C) out
    P,
    C,
    N,
    H,
    D,
    scale,
    blocks,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    block = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    scale = float64_factor(scale, D, ACC, True)
    weights = _attention(
        q_ptr, k_ptr, mask_ptr, b, h, offs_p, P, C, N, D, scale, ACC, BLOCK_P, BLOCK_N, BLOCK_D, USE_DOT
    )
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    n_ok = offs_n < N
    rows = (b * P + offs_p) * C + h * D
    kv_rows = (b * N + offs_n) * C + h * D
    part_rows = ((b * blocks + block) * N + offs_n) * C + h * D
    dweights = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        tile = p_ok[:, None] & d_ok[None, :]
        v = tl.load(
            v_ptr + kv_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0
        ).to(ACC)
        gate = tl.sigmoid(matmul(weights, v, USE_DOT, "ieee"))
        g = tl.load(grad_ptr + rows[:, None] + offs_d[None, :], mask=tile, other=0.0).to(ACC)
        x = tl.load(x_ptr + rows[:, None] + offs_d[None, :], mask=tile, other=0.0).to(ACC)
        tl.store(dx_ptr + rows[:, None] + offs_d[None, :], (g * gate).to(dx_ptr.dtype.element_ty), mask=tile)
        dattention = g * x * gate * (1.0 - gate)
        dweights += matmul(dattention, tl.trans(v), USE_DOT, "ieee")
        dv = matmul(tl.trans(weights), dattention, USE_DOT, "ieee")
        tl.store(dv_part_ptr + part_rows[:, None] + offs_d[None, :], dv, mask=n_ok[:, None] & d_ok[None, :])
    dscores = weights * (dweights - tl.sum(weights * dweights, axis=1)[:, None]) * scale
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        tile = p_ok[:, None] & d_ok[None, :]
        k = tl.load(
            k_ptr + kv_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0
        ).to(ACC)
        tl.store(
            dq_ptr + rows[:, None] + offs_d[None, :],
            matmul(dscores, k, USE_DOT, "ieee").to(dq_ptr.dtype.element_ty),
            mask=tile,
        )
        q = tl.load(q_ptr + rows[:, None] + offs_d[None, :], mask=tile, other=0.0).to(ACC)
        dk = matmul(tl.trans(dscores), q, USE_DOT, "ieee")
        tl.store(dk_part_ptr + part_rows[:, None] + offs_d[None, :], dk, mask=n_ok[:, None] & d_ok[None, :])


def _config(x: Tensor, keys: int, width: int) -> dict:
    # NOTE: tiles and warps chosen so that nothing spills to the stack on sm_90 with Triton 3.6 or 3.8
    # (as listed by tests/triton_compile_check.py): at 4 warps and 64 × 64 tiles the backward put 7.7 KB
    # per thread on the stack.
    batch, positions, channels = x.shape
    block_n = next_power_of_2(keys, 16)
    block_d = min(32, next_power_of_2(width, 16))
    block_p = 64 if block_n <= 32 else 32
    # A program per block of positions and head: on small maps, smaller blocks until every multiprocessor
    # has one (stage 4 at B = 8, 225 positions: 32 programs of 64 positions for 132 multiprocessors on an
    # H200, 120 of 16).
    programs = batch * (channels // width)
    while block_p > 16 and programs * triton.cdiv(positions, block_p) < multiprocessors(x.device):
        block_p //= 2
    return dict(
        ACC=acc_dtype(x.dtype),
        BLOCK_P=block_p,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        USE_DOT=use_dot(x.dtype, block_p, block_n, block_d),
        num_warps=8,
    )


def forward(x: Tensor, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int) -> Tensor:
    x, q, k, v, key_mask = (t.contiguous() for t in (x, q, k, v, key_mask))
    batch, positions, channels = x.shape
    keys, width = k.shape[1], channels // heads
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    config = _config(x, keys, width)
    grid = (triton.cdiv(positions, config["BLOCK_P"]), batch * heads)
    _forward_kernel[grid](
        x, q, k, v, key_mask, y, positions, channels, keys, heads, width, width**-0.5, **config
    )
    return y


def backward(grad: Tensor, x: Tensor, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int):
    grad, x, q, k, v, key_mask = (t.contiguous() for t in (grad, x, q, k, v, key_mask))
    batch, positions, channels = x.shape
    keys, width = k.shape[1], channels // heads
    dx, dq = torch.empty_like(x), torch.empty_like(q)
    config = _config(x, keys, width)
    blocks = triton.cdiv(positions, config["BLOCK_P"])
    part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # NOTE: when the kernel runs, every (item, block, token, channel) partial is written, so no zero fill
    # is needed; when it does not, the sums must come out zero.
    new = torch.empty if x.numel() > 0 else torch.zeros
    dk_part = new(batch, blocks, keys, channels, dtype=part_dtype, device=x.device)
    dv_part = new(batch, blocks, keys, channels, dtype=part_dtype, device=x.device)
    if x.numel() > 0:
        grid = (blocks, batch * heads)
        _backward_kernel[grid](
            grad,
            x,
            q,
            k,
            v,
            key_mask,
            dx,
            dq,
            dk_part,
            dv_part,
            positions,
            channels,
            keys,
            heads,
            width,
            width**-0.5,
            blocks,
            **config,
        )
    return dx, dq, dk_part.sum(1).to(k.dtype), dv_part.sum(1).to(v.dtype)
