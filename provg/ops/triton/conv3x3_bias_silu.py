"""Triton implicit-GEMM kernel of provg::conv3x3_bias_silu, the deploy-form RepVGG convolution
(ProVG Sec. 4.3): ``y = SiLU(conv3×3(x; W, padding 1) + b) [+ r]``.

The convolution runs as a GEMM over channels-last maps without materializing the im2col matrix:
M = B·H·W output positions (rows of the (B·H·W, C_in) view of x), N = C_out, K = 9·C_in, with the
weight packed to a (9·C_in, C_out) matrix ordered (kh, kw, c_in). One program owns a
BLOCK_M × BLOCK_N output tile and walks K in a single loop over (tap, BLOCK_K channels): the A tile
is the input rows shifted by the tap, (kh − 1)·W + (kw − 1) positions, with the rows whose shifted
pixel falls outside its image masked to zero (the padding), the B tile a slice of the packed weight.
The epilogue adds the bias, applies SiLU s·σ(s) and adds the residual in the accumulator's precision,
then casts and stores the tile once. Float32 products use tf32 when
``torch.backends.cudnn.allow_tf32`` is set, as ``F.conv2d`` does.

The output is computed channels-last. A channels-last ``x`` is read in place and the result returned
as is; any other ``x`` is copied to channels-last first and the result copied back to NCHW (two
conversion passes; the model's fast path is channels-last in, channels-last out). The residual is
read channels-last too (copied to it first when it comes in another layout).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._gate_api import memory_layout
from .common import acc_dtype, matmul, next_power_of_2, use_dot

__all__ = ["forward"]


@triton.jit
def _conv3x3_bias_silu_kernel(
    x_ptr,  # (B·H·W, C_in) channels-last input
    w_ptr,  # (9·C_in, C_out) packed weight, rows ordered (kh, kw, c_in)
    bias_ptr,  # (C_out,)
    res_ptr,  # (B·H·W, C_out) channels-last residual, read when HAS_RESIDUAL
    out_ptr,  # (B·H·W, C_out) channels-last output
    M,
    H,
    W,
    C_in,
    C_out,
    HAS_RESIDUAL: tl.constexpr,
    ACC: tl.constexpr,
    USE_DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < C_out
    col = offs_m % W
    row = (offs_m // W) % H

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    k_tiles = tl.cdiv(C_in, BLOCK_K)
    for step in range(0, 9 * k_tiles):
        tap = step // k_tiles
        k0 = (step - tap * k_tiles) * BLOCK_K
        dh = tap // 3 - 1
        dw = tap % 3 - 1
        # NOTE: a pixel outside its image (zero padding) is masked; inside, it is the output row
        # shifted by dh·W + dw in the flat (B·H·W) index.
        in_image = m_ok & (row + dh >= 0) & (row + dh < H) & (col + dw >= 0) & (col + dw < W)
        ks = k0 + offs_k
        k_ok = ks < C_in
        a = tl.load(
            x_ptr + (offs_m + (dh * W + dw))[:, None] * C_in + ks[None, :],
            mask=in_image[:, None] & k_ok[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + (tap * C_in + ks).to(tl.int64)[:, None] * C_out + offs_n[None, :],
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        if not USE_DOT:
            a = a.to(ACC)
            b = b.to(ACC)
        acc += matmul(a, b, USE_DOT, PRECISION)

    tile = m_ok[:, None] & n_ok[None, :]
    s = acc + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(ACC)[None, :]
    y = s * tl.sigmoid(s)
    # NOTE: the residual shares the output's channels-last offsets: strided residual addresses (one
    # 64-bit address per tile element) spilled registers to the stack on sm_90.
    offsets = offs_m[:, None] * C_out + offs_n[None, :]
    if HAS_RESIDUAL:
        y += tl.load(res_ptr + offsets, mask=tile, other=0.0).to(ACC)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=tile)


def _config(dtype: torch.dtype, c_in: int, c_out: int) -> dict:
    """Tiles and launch options by dtype and channel counts (small tiles under the interpreter)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        block_m, block_n, block_k, warps, stages = 16, 16, 16, 4, 1
    elif dtype == torch.float64:
        # NOTE: no tl.dot for float64: the multiply-and-sum holds BLOCK_M·BLOCK_K·BLOCK_N products.
        block_m, block_n, block_k, warps, stages = 32, 32, 8, 4, 2
    else:
        # NOTE: 16 warps for float32: at 8, its 128 × 128 tile spills registers on sm_90 with Triton 3.6.
        block_m, warps, stages = 128, 16 if dtype == torch.float32 else 8, 3
        block_n = 128 if c_out > 64 else 64
        # NOTE: the K tile never spans far past C_in (one tap's channels), but stays ≥ 16 for tl.dot.
        block_k = min(32 if dtype == torch.float32 else 64, next_power_of_2(c_in, 16))
    return dict(
        ACC=acc_dtype(dtype),
        USE_DOT=use_dot(dtype, block_m, block_n, block_k),
        # NOTE: float32 follows torch.backends.cudnn.allow_tf32, as F.conv2d and the cuda backend's cuDNN
        # convolution do (on by default: tf32 tensor cores; off: full float32 on the FMA units).
        PRECISION="tf32" if torch.backends.cudnn.allow_tf32 else "ieee",
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
        num_stages=stages,
    )


def forward(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None) -> Tensor:
    """``SiLU(conv2d(x, weight, bias, padding=1)) [+ residual]`` in the memory format of ``x``."""
    batch, c_in, height, width = x.shape
    c_out = weight.shape[0]
    channels_last = memory_layout(x) == torch.channels_last
    y = torch.empty((batch, c_out, height, width), dtype=x.dtype, device=x.device).contiguous(
        memory_format=torch.channels_last
    )
    if y.numel() > 0:
        x_cl = x.contiguous(memory_format=torch.channels_last)
        w_packed = weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out).contiguous()
        positions = batch * height * width
        config = _config(x.dtype, c_in, c_out)
        grid = (triton.cdiv(positions, config["BLOCK_M"]), triton.cdiv(c_out, config["BLOCK_N"]))
        res = residual.contiguous(memory_format=torch.channels_last) if residual is not None else y
        _conv3x3_bias_silu_kernel[grid](
            x_cl,
            w_packed,
            bias.contiguous(),
            res,
            y,
            positions,
            height,
            width,
            c_in,
            c_out,
            HAS_RESIDUAL=residual is not None,
            **config,
        )
    return y if channels_last else y.contiguous()
