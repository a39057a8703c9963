"""Triton kernels of provg::locate_gate (Eq. 3–4).

One program per (batch item, block of positions) holds whole rows of x: the scalar query x·w + b,
the attention over the spatial-cue tokens and the gated row all come from one load, so the forward
reads x once and writes y once, and the backward reads grad and x once and writes dx. Gradients of
k, v, w and b are per-block partial sums, added in block order afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import acc_dtype, masked_softmax_rows, next_power_of_2

__all__ = ["backward", "forward"]


@triton.jit
def _gate(x, w, bias, k_ptr, v_ptr, mask_ptr, b, N, ACC: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query (BLOCK_P,), attention weights (BLOCK_P, BLOCK_N), gate (BLOCK_P,) and the token values."""
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    valid = (tl.load(mask_ptr + b * N + offs_n, mask=n_ok, other=0) != 0) & n_ok
    keys = tl.load(k_ptr + b * N + offs_n, mask=n_ok, other=0.0).to(ACC)
    values = tl.load(v_ptr + b * N + offs_n, mask=n_ok, other=0.0).to(ACC)
    query = tl.sum(x * w[None, :], axis=1) + bias
    weights = masked_softmax_rows(query[:, None] * keys[None, :], valid)
    gate = tl.sigmoid(tl.sum(weights * values[None, :], axis=1))
    return query, weights, gate, keys, values


@triton.jit
def _forward_kernel(
    x_ptr,  # (B, P, C)
    w_ptr,  # (C,)
    bias_ptr,  # () scalar
    k_ptr,  # (B, N)
    v_ptr,  # (B, N)
    mask_ptr,  # (B, N) bool
    y_ptr,  # (B, P, C) out
    P,
    C,
    N,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    tile = (offs_p < P)[:, None] & (offs_c < C)[None, :]
    ptrs = (b * P + offs_p)[:, None] * C + offs_c[None, :]
    x = tl.load(x_ptr + ptrs, mask=tile, other=0.0).to(ACC)
    w = tl.load(w_ptr + offs_c, mask=offs_c < C, other=0.0).to(ACC)
    bias = tl.load(bias_ptr).to(ACC)
    _, _, gate, _, _ = _gate(x, w, bias, k_ptr, v_ptr, mask_ptr, b, N, ACC, BLOCK_N)
    tl.store(y_ptr + ptrs, (x * gate[:, None]).to(y_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _backward_kernel(
    grad_ptr,  # (B, P, C)
    x_ptr,  # (B, P, C)
    w_ptr,  # (C,)
    bias_ptr,  # ()
    k_ptr,  # (B, N)
    v_ptr,  # (B, N)
    mask_ptr,  # (B, N) bool
    dx_ptr,  # (B, P, C) out
    dk_part_ptr,  # (B, blocks, N) out
    dv_part_ptr,  # (B, blocks, N) out
    dw_part_ptr,  # (B, blocks, C) out
    db_part_ptr,  # (B, blocks) out
    P,
    C,
    N,
    blocks,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    block = tl.program_id(0).to(tl.int64)
    offs_p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    tile = p_ok[:, None] & (offs_c < C)[None, :]
    ptrs = (b * P + offs_p)[:, None] * C + offs_c[None, :]
    x = tl.load(x_ptr + ptrs, mask=tile, other=0.0).to(ACC)
    g = tl.load(grad_ptr + ptrs, mask=tile, other=0.0).to(ACC)
    w = tl.load(w_ptr + offs_c, mask=offs_c < C, other=0.0).to(ACC)
    bias = tl.load(bias_ptr).to(ACC)
    query, weights, gate, keys, values = _gate(x, w, bias, k_ptr, v_ptr, mask_ptr, b, N, ACC, BLOCK_N)
    # Positions past P must not contribute to the partial sums.
    weights = tl.where(p_ok[:, None], weights, 0.0)
    dattention = tl.sum(g * x, axis=1) * gate * (1.0 - gate)
    dweights = dattention[:, None] * values[None, :]
    dscores = weights * (dweights - tl.sum(weights * dweights, axis=1)[:, None])
    dquery = tl.sum(dscores * keys[None, :], axis=1)
    tl.store(
        dx_ptr + ptrs,
        (g * gate[:, None] + dquery[:, None] * w[None, :]).to(dx_ptr.dtype.element_ty),
        mask=tile,
    )
    part = b * blocks + block
    n_ok = offs_n < N
    tl.store(dv_part_ptr + part * N + offs_n, tl.sum(weights * dattention[:, None], axis=0), mask=n_ok)
    tl.store(dk_part_ptr + part * N + offs_n, tl.sum(dscores * query[:, None], axis=0), mask=n_ok)
    tl.store(dw_part_ptr + part * C + offs_c, tl.sum(dquery[:, None] * x, axis=0), mask=offs_c < C)
    tl.store(db_part_ptr + part, tl.sum(dquery, axis=0))


def _config(x: Tensor, keys: int) -> dict:
    block_c = next_power_of_2(x.shape[2])
    block_p = max(1, min(128, 8192 // block_c))
    return dict(ACC=acc_dtype(x.dtype), BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_N=next_power_of_2(keys, 2))


def forward(x: Tensor, w: Tensor, b: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    x, w, b, k, v, key_mask = (t.contiguous() for t in (x, w, b, k, v, key_mask))
    batch, positions, channels = x.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    config = _config(x, k.shape[1])
    grid = (triton.cdiv(positions, config["BLOCK_P"]), batch)
    _forward_kernel[grid](x, w, b, k, v, key_mask, y, positions, channels, k.shape[1], **config)
    return y


def backward(grad: Tensor, x: Tensor, w: Tensor, b: Tensor, k: Tensor, v: Tensor, key_mask: Tensor):
    grad, x, w, b, k, v, key_mask = (t.contiguous() for t in (grad, x, w, b, k, v, key_mask))
    batch, positions, channels = x.shape
    keys = k.shape[1]
    config = _config(x, keys)
    blocks = triton.cdiv(positions, config["BLOCK_P"])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = torch.empty_like(x)
    # NOTE: when the kernel runs, every block writes its row of each partial, so no zero fill is needed;
    # with no channels it does not run and the sums must come out zero.
    new = torch.empty if x.numel() > 0 else torch.zeros
    dk_part = new(batch, blocks, keys, dtype=acc, device=x.device)
    dv_part = new(batch, blocks, keys, dtype=acc, device=x.device)
    dw_part = new(batch, blocks, channels, dtype=acc, device=x.device)
    db_part = new(batch, blocks, dtype=acc, device=x.device)
    if x.numel() > 0:
        _backward_kernel[(blocks, batch)](
            grad,
            x,
            w,
            b,
            k,
            v,
            key_mask,
            dx,
            dk_part,
            dv_part,
            dw_part,
            db_part,
            positions,
            channels,
            keys,
            blocks,
            # NOTE: at 4 warps the backward's rows (g and x held together) spill to the stack on sm_90
            # (56–144 bytes per thread at 128–512 channels); at 8 warps nothing spills.
            num_warps=8,
            **config,
        )
    return (
        dx,
        dw_part.sum((0, 1)).to(w.dtype),
        db_part.sum().reshape(b.shape).to(b.dtype),
        dk_part.sum(1).to(k.dtype),
        dv_part.sum(1).to(v.dtype),
    )
