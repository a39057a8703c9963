"""Triton kernels of provg::rep_bn_add_silu (ProVG Sec. 4.3): the fused tail of a RepVGG block,
y = SiLU(s), s = Σ_i (x_i − μ_i)·γ_i·rstd_i + β_i, rstd_i = 1/√(σ²_i + ε), for K = 1..3 branches.

Every (B, C, H, W) tensor is viewed as (R, C, Q) rows × channels × positions: NCHW as (B, C, H·W)
with strides (C·H·W, H·W, 1), channels-last as (1, C, B·H·W) with strides (0, 1, C). Tiles are
(channels, positions) for NCHW and (positions, channels) for channels-last, so that the contiguous
index varies fastest.

Forward: in training, a statistics kernel (grid: chunks of positions × blocks of channels) sums
x_i − k_i and (x_i − k_i)² per chunk, where the shift k_i is the channel's first value x_i[0, c, 0, 0];
the per-chunk partials are summed with PyTorch (no atomics: deterministic), and μ = k + S1/n,
σ² = max(S2/n − (S1/n)², 0) over n = B·H·W (biased variance). An elementwise kernel then reads the
branches again and writes y. In eval the given statistics are used and only the elementwise kernel runs.

Backward: s is recomputed, ds = grad·σ(s)·(1 + s·(1 − σ(s))). A reduction kernel (same grid as the
statistics) reads grad and every branch once for the per-chunk partials of Σ ds and Σ ds·(x_i − μ_i),
summed with PyTorch into dβ_i = Σ ds and dγ_i = rstd_i·Σ ds·(x_i − μ_i); an elementwise kernel reads
them again and writes dx_i = γ_i·rstd_i·(ds − Σ ds/n − (x_i − μ_i)·rstd_i²·Σ ds·(x_i − μ_i)/n) in
training, γ_i·rstd_i·ds in eval.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import acc_dtype, next_power_of_2

__all__ = ["backward", "forward"]

# Programs the reductions aim for (a few per streaming multiprocessor): sets the size of the chunks.
_PROGRAMS = 1024


@triton.jit
def _tile_index(offs_c, offs_q, CHANNELS_LAST: tl.constexpr):
    """Broadcastable 2D channel and position indices of a tile, the contiguous one along axis 1."""
    if CHANNELS_LAST:
        c2 = offs_c[None, :]
        q2 = offs_q[:, None]
    else:
        c2 = offs_c[:, None]
        q2 = offs_q[None, :]
    return c2, q2


@triton.jit
def _sum_positions(t, CHANNELS_LAST: tl.constexpr):
    """Per-channel sums (BLOCK_C,) of a tile."""
    return tl.sum(t, axis=0 if CHANNELS_LAST else 1)


@triton.jit
def _channel(ptr, branch, c2, c_ok, C):
    """Per-channel values of one branch from a (K, C) tensor, broadcastable over the tile."""
    return tl.load(ptr + branch * C + c2, mask=c_ok, other=0.0)


@triton.jit
def _centered(x_ptr, mean_ptr, branch, offs, mask, c2, c_ok, C, ACC: tl.constexpr):
    """x_i − μ_i over a tile, in the accumulation dtype."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    return x - _channel(mean_ptr, branch, c2, c_ok, C)


@triton.jit
def _branch_channels(ptr, c2, c_ok, C, K: tl.constexpr):
    """Per-channel values of the (K, C) ``ptr`` for the three branch slots (unused slots repeat branch 0)."""
    v0 = _channel(ptr, 0, c2, c_ok, C)
    v1 = v0
    v2 = v0
    if K > 1:
        v1 = _channel(ptr, 1, c2, c_ok, C)
    if K > 2:
        v2 = _channel(ptr, 2, c2, c_ok, C)
    return v0, v1, v2


@triton.jit
def _pre_activation(
    x0_ptr,
    x1_ptr,
    x2_ptr,
    mean_ptr,
    scale0,
    scale1,
    scale2,
    bias,
    offs,
    mask,
    c2,
    c_ok,
    C,
    K: tl.constexpr,
    ACC: tl.constexpr,
):
    """s = Σ_i β_i + Σ_i (x_i − μ_i)·γ_i·rstd_i over a tile, and the centred branches x_i − μ_i
    (unused slots repeat branch 0)."""
    xc0 = _centered(x0_ptr, mean_ptr, 0, offs, mask, c2, c_ok, C, ACC)
    s = bias + xc0 * scale0
    xc1 = xc0
    xc2 = xc0
    if K > 1:
        xc1 = _centered(x1_ptr, mean_ptr, 1, offs, mask, c2, c_ok, C, ACC)
        s += xc1 * scale1
    if K > 2:
        xc2 = _centered(x2_ptr, mean_ptr, 2, offs, mask, c2, c_ok, C, ACC)
        s += xc2 * scale2
    return s, xc0, xc1, xc2


@triton.jit
def _reduction_tile(
    q_chunks,
    iters,
    stride_r,
    stride_c,
    C,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    """This reduction program's chunk, channel offsets, tile indices, first position and row/channel base."""
    chunk = tl.program_id(0).to(tl.int64)
    q_start = (chunk % q_chunks) * iters * BLOCK_Q
    offs_c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c2, q2 = _tile_index(offs_c, tl.arange(0, BLOCK_Q).to(tl.int64), CHANNELS_LAST)
    c_ok = c2 < C
    base = (chunk // q_chunks) * stride_r + c2 * stride_c
    return chunk, offs_c, c2, q2, c_ok, q_start, base


@triton.jit
def _elementwise_tile(
    q_blocks,
    Q,
    C,
    stride_r,
    stride_c,
    stride_q,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    """This elementwise program's tile: element offsets, mask, channel indices and their validity."""
    block = tl.program_id(0).to(tl.int64)
    offs_q = (block % q_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c2, q2 = _tile_index(offs_c, offs_q, CHANNELS_LAST)
    c_ok = c2 < C
    offs = (block // q_blocks) * stride_r + c2 * stride_c + q2 * stride_q
    return offs, c_ok & (q2 < Q), c2, c_ok


@triton.jit
def _elementwise_pre_activation(
    x0_ptr,
    x1_ptr,
    x2_ptr,
    mean_ptr,
    scale_ptr,
    bias_ptr,
    q_blocks,
    Q,
    C,
    stride_r,
    stride_c,
    stride_q,
    K: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    """This elementwise program's tile (offsets, mask, channel indices and validity) and its
    pre-activation s with the centred branches: how the forward and the input-gradient kernels open."""
    offs, mask, c2, c_ok = _elementwise_tile(
        q_blocks, Q, C, stride_r, stride_c, stride_q, BLOCK_C, BLOCK_Q, CHANNELS_LAST
    )
    scale0, scale1, scale2 = _branch_channels(scale_ptr, c2, c_ok, C, K)
    bias = tl.load(bias_ptr + c2, mask=c_ok, other=0.0)
    s, xc0, xc1, xc2 = _pre_activation(
        x0_ptr, x1_ptr, x2_ptr, mean_ptr, scale0, scale1, scale2, bias, offs, mask, c2, c_ok, C, K, ACC
    )
    return offs, mask, c2, c_ok, s, xc0, xc1, xc2


@triton.jit
def _stats_kernel(
    x0_ptr,  # (R, C, Q) branch 0
    x1_ptr,  # (R, C, Q) branch 1 when K > 1
    x2_ptr,  # (R, C, Q) branch 2 when K > 2
    shift_ptr,  # (K, C) per-channel shifts k_i
    partial_ptr,  # (K, 2, chunks, C) Σ (x_i − k_i), Σ (x_i − k_i)² per chunk of positions
    Q,
    C,
    q_chunks,
    chunks,
    iters,
    stride_r,
    stride_c,
    stride_q,
    K: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    chunk, offs_c, c2, q2, c_ok, q_start, base = _reduction_tile(
        q_chunks, iters, stride_r, stride_c, C, BLOCK_C, BLOCK_Q, CHANNELS_LAST
    )
    for branch in tl.static_range(K):
        if branch == 0:
            x_ptr = x0_ptr
        elif branch == 1:
            x_ptr = x1_ptr
        else:
            x_ptr = x2_ptr
        shift = _channel(shift_ptr, branch, c2, c_ok, C)
        s1 = tl.zeros((c2 + q2).shape, ACC)
        s2 = tl.zeros((c2 + q2).shape, ACC)
        for it in range(0, iters):
            q = q_start + it * BLOCK_Q + q2
            mask = c_ok & (q < Q)
            x = tl.load(x_ptr + base + q * stride_q, mask=mask, other=0.0).to(ACC)
            d = tl.where(mask, x - shift, 0.0)
            s1 += d
            s2 += d * d
        out = partial_ptr + (2 * branch * chunks + chunk) * C + offs_c
        tl.store(out, _sum_positions(s1, CHANNELS_LAST), mask=offs_c < C)
        tl.store(out + chunks * C, _sum_positions(s2, CHANNELS_LAST), mask=offs_c < C)


@triton.jit
def _forward_kernel(
    x0_ptr,  # (R, C, Q) branch 0
    x1_ptr,  # (R, C, Q) branch 1 when K > 1
    x2_ptr,  # (R, C, Q) branch 2 when K > 2
    y_ptr,  # (R, C, Q) output
    mean_ptr,  # (K, C) μ_i
    scale_ptr,  # (K, C) γ_i·rstd_i
    bias_ptr,  # (C,) Σ_i β_i
    Q,
    C,
    q_blocks,
    stride_r,
    stride_c,
    stride_q,
    K: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    offs, mask, _, _, s, _, _, _ = _elementwise_pre_activation(
        x0_ptr,
        x1_ptr,
        x2_ptr,
        mean_ptr,
        scale_ptr,
        bias_ptr,
        q_blocks,
        Q,
        C,
        stride_r,
        stride_c,
        stride_q,
        K,
        ACC,
        BLOCK_C,
        BLOCK_Q,
        CHANNELS_LAST,
    )
    tl.store(y_ptr + offs, (s * tl.sigmoid(s)).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_grad(grad, s):
    """d SiLU(s) / ds · grad."""
    sig = tl.sigmoid(s)
    return grad * sig * (1.0 + s * (1.0 - sig))


@triton.jit
def _backward_sums_kernel(
    grad_ptr,  # (R, C, Q) dL/dy
    x0_ptr,  # (R, C, Q) branch 0
    x1_ptr,  # (R, C, Q) branch 1 when K > 1
    x2_ptr,  # (R, C, Q) branch 2 when K > 2
    mean_ptr,  # (K, C) μ_i
    scale_ptr,  # (K, C) γ_i·rstd_i
    bias_ptr,  # (C,) Σ_i β_i
    partial_ptr,  # (K + 1, chunks, C) Σ ds, then Σ ds·(x_i − μ_i) per chunk of positions
    Q,
    C,
    q_chunks,
    chunks,
    iters,
    stride_r,
    stride_c,
    stride_q,
    K: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    chunk, offs_c, c2, q2, c_ok, q_start, base = _reduction_tile(
        q_chunks, iters, stride_r, stride_c, C, BLOCK_C, BLOCK_Q, CHANNELS_LAST
    )
    bias = tl.load(bias_ptr + c2, mask=c_ok, other=0.0)
    scale0, scale1, scale2 = _branch_channels(scale_ptr, c2, c_ok, C, K)
    sum_ds = tl.zeros((c2 + q2).shape, ACC)
    sum_0 = tl.zeros((c2 + q2).shape, ACC)
    if K > 1:
        sum_1 = tl.zeros((c2 + q2).shape, ACC)
    if K > 2:
        sum_2 = tl.zeros((c2 + q2).shape, ACC)
    for it in range(0, iters):
        q = q_start + it * BLOCK_Q + q2
        mask = c_ok & (q < Q)
        offs = base + q * stride_q
        # NOTE: masked lanes load grad = 0, so their ds (and every product with it) is 0.
        grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(ACC)
        s, xc0, xc1, xc2 = _pre_activation(
            x0_ptr, x1_ptr, x2_ptr, mean_ptr, scale0, scale1, scale2, bias, offs, mask, c2, c_ok, C, K, ACC
        )
        ds = _silu_grad(grad, s)
        sum_ds += ds
        sum_0 += ds * xc0
        if K > 1:
            sum_1 += ds * xc1
        if K > 2:
            sum_2 += ds * xc2
    out = partial_ptr + chunk * C + offs_c
    c_valid = offs_c < C
    tl.store(out, _sum_positions(sum_ds, CHANNELS_LAST), mask=c_valid)
    tl.store(out + chunks * C, _sum_positions(sum_0, CHANNELS_LAST), mask=c_valid)
    if K > 1:
        tl.store(out + 2 * chunks * C, _sum_positions(sum_1, CHANNELS_LAST), mask=c_valid)
    if K > 2:
        tl.store(out + 3 * chunks * C, _sum_positions(sum_2, CHANNELS_LAST), mask=c_valid)


@triton.jit
def _store_dx(
    dx_ptr,
    branch,
    ds,
    xc,
    scale_ptr,
    offset_ptr,
    slope_ptr,
    offs,
    mask,
    c2,
    c_ok,
    C,
    TRAINING: tl.constexpr,
):
    """dx_i = γ_i·rstd_i·ds, less offset_i + (x_i − μ_i)·slope_i in training."""
    dx = ds * _channel(scale_ptr, branch, c2, c_ok, C)
    if TRAINING:
        dx = dx - _channel(offset_ptr, branch, c2, c_ok, C) - xc * _channel(slope_ptr, branch, c2, c_ok, C)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_ptr,  # (R, C, Q) dL/dy
    x0_ptr,  # (R, C, Q) branch 0
    x1_ptr,  # (R, C, Q) branch 1 when K > 1
    x2_ptr,  # (R, C, Q) branch 2 when K > 2
    dx0_ptr,  # (R, C, Q) gradient of branch 0
    dx1_ptr,  # (R, C, Q) gradient of branch 1 when K > 1
    dx2_ptr,  # (R, C, Q) gradient of branch 2 when K > 2
    mean_ptr,  # (K, C) μ_i
    scale_ptr,  # (K, C) γ_i·rstd_i
    bias_ptr,  # (C,) Σ_i β_i
    offset_ptr,  # (K, C) γ_i·rstd_i·Σ ds / n, read when TRAINING
    slope_ptr,  # (K, C) γ_i·rstd_i³·Σ ds·(x_i − μ_i) / n, read when TRAINING
    Q,
    C,
    q_blocks,
    stride_r,
    stride_c,
    stride_q,
    K: tl.constexpr,
    TRAINING: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    offs, mask, c2, c_ok, s, xc0, xc1, xc2 = _elementwise_pre_activation(
        x0_ptr,
        x1_ptr,
        x2_ptr,
        mean_ptr,
        scale_ptr,
        bias_ptr,
        q_blocks,
        Q,
        C,
        stride_r,
        stride_c,
        stride_q,
        K,
        ACC,
        BLOCK_C,
        BLOCK_Q,
        CHANNELS_LAST,
    )
    ds = _silu_grad(tl.load(grad_ptr + offs, mask=mask, other=0.0).to(ACC), s)
    _store_dx(dx0_ptr, 0, ds, xc0, scale_ptr, offset_ptr, slope_ptr, offs, mask, c2, c_ok, C, TRAINING)
    if K > 1:
        _store_dx(dx1_ptr, 1, ds, xc1, scale_ptr, offset_ptr, slope_ptr, offs, mask, c2, c_ok, C, TRAINING)
    if K > 2:
        _store_dx(dx2_ptr, 2, ds, xc2, scale_ptr, offset_ptr, slope_ptr, offs, mask, c2, c_ok, C, TRAINING)


class _View:
    """(R, C, Q) view shared by same-layout (B, C, H, W) tensors, with its tiles and grids."""

    def __init__(self, tensors: list[Tensor]) -> None:
        first = tensors[0]
        batch, channels, height, width = first.shape
        plane = height * width
        # NOTE: with H·W == 1 (or C == 1) both layouts hold; H·W == 1 is read as channels-last (the
        # channels are then the contiguous run), C == 1 as NCHW.
        self.channels_last = plane == 1 or not first.is_contiguous()
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        assert all(
            t.shape == first.shape and t.dtype == first.dtype and t.is_contiguous(memory_format=layout)
            for t in tensors
        ), "rep_bn_add_silu: tensors must share shape, dtype and layout (NCHW or channels-last)"
        self.channels = channels
        if self.channels_last:
            self.rows, self.positions, self.strides = 1, batch * plane, (0, 1, channels)
        else:
            self.rows, self.positions, self.strides = batch, plane, (channels * plane, plane, 1)
        self.acc = acc_dtype(first.dtype)
        # float64 tiles hold half as many elements (the same registers).
        self.acc_elements = 2 if first.dtype == torch.float64 else 1

    def tiles(self, contiguous: int, elements: int) -> tuple[int, int]:
        """(BLOCK_C, BLOCK_Q): up to ``contiguous`` along the contiguous index, ``elements`` (float32
        accumulators; half as many in float64) in all."""
        elements //= self.acc_elements
        if self.channels_last:
            block_c = min(next_power_of_2(self.channels), contiguous)
            return block_c, min(next_power_of_2(self.positions), max(1, elements // block_c))
        block_q = min(next_power_of_2(self.positions), contiguous)
        return min(next_power_of_2(self.channels), max(1, elements // block_q)), block_q

    def reduction(self, elements: int) -> dict:
        """Tiles and chunking of the reductions: about ``_PROGRAMS`` programs, each summing ``iters``
        consecutive tiles of positions of one row."""
        block_c, block_q = self.tiles(64, elements)
        channel_blocks = triton.cdiv(self.channels, block_c)
        blocks = triton.cdiv(self.positions, block_q)
        wanted = max(1, _PROGRAMS // (self.rows * channel_blocks))
        iters = triton.cdiv(blocks, min(blocks, wanted))
        q_chunks = triton.cdiv(blocks, iters)
        return {
            "grid": (self.rows * q_chunks, channel_blocks),
            "q_chunks": q_chunks,
            "chunks": self.rows * q_chunks,
            "iters": iters,
            "BLOCK_C": block_c,
            "BLOCK_Q": block_q,
        }

    def elementwise(self) -> dict:
        """Tiles and grid of the elementwise kernels: one tile of about 1024 elements per program."""
        block_c, block_q = self.tiles(256, 1024)
        q_blocks = triton.cdiv(self.positions, block_q)
        return {
            "grid": (self.rows * q_blocks, triton.cdiv(self.channels, block_c)),
            "q_blocks": q_blocks,
            "BLOCK_C": block_c,
            "BLOCK_Q": block_q,
        }


def _branches(inputs: list[Tensor]) -> list[Tensor]:
    """The K inputs padded to three pointers (the unused ones gated off by K)."""
    assert 1 <= len(inputs) <= 3, f"rep_bn_add_silu: 1 to 3 branch inputs, got {len(inputs)}"
    return list(inputs) + [inputs[0]] * (3 - len(inputs))


def forward(
    inputs: list[Tensor], weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, training: bool, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): y like the inputs, the (K, C) statistics used (the batch's when ``training``)."""
    x0, x1, x2 = _branches(inputs)
    count = len(inputs)
    y = torch.empty_like(x0)
    if x0.numel() == 0:
        assert not training, "rep_bn_add_silu: batch statistics of an empty input"
        return y, mean.clone(), var.clone()
    view = _View(list(inputs))
    channels = view.channels
    if training:
        plan = view.reduction(2048)
        shift = torch.stack([x[0, :, 0, 0] for x in inputs]).to(weight.dtype)
        partial = torch.empty(count, 2, plan["chunks"], channels, dtype=weight.dtype, device=x0.device)
        _stats_kernel[plan["grid"]](
            x0,
            x1,
            x2,
            shift,
            partial,
            view.positions,
            channels,
            plan["q_chunks"],
            plan["chunks"],
            plan["iters"],
            *view.strides,
            K=count,
            ACC=view.acc,
            BLOCK_C=plan["BLOCK_C"],
            BLOCK_Q=plan["BLOCK_Q"],
            CHANNELS_LAST=view.channels_last,
            num_warps=8,
        )
        moments = partial.sum(2) / (view.rows * view.positions)  # (K, 2, C)
        mean = shift + moments[:, 0]
        var = (moments[:, 1] - moments[:, 0].square()).clamp_min(0)
    else:
        mean = mean.clone(memory_format=torch.contiguous_format)
        var = var.clone(memory_format=torch.contiguous_format)
    scale = (weight * torch.rsqrt(var + eps)).contiguous()
    plan = view.elementwise()
    _forward_kernel[plan["grid"]](
        x0,
        x1,
        x2,
        y,
        mean,
        scale,
        bias.sum(0),
        view.positions,
        channels,
        plan["q_blocks"],
        *view.strides,
        K=count,
        ACC=view.acc,
        BLOCK_C=plan["BLOCK_C"],
        BLOCK_Q=plan["BLOCK_Q"],
        CHANNELS_LAST=view.channels_last,
    )
    return y, mean, var


def backward(
    grad: Tensor,
    inputs: list[Tensor],
    weight: Tensor,
    bias: Tensor,
    mean: Tensor,
    var: Tensor,
    training: bool,
    eps: float,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """(dinputs, dweight, dbias) given the statistics the forward used: K tensors like the inputs and
    (K, C) parameter gradients."""
    x0, x1, x2 = _branches(inputs)
    count = len(inputs)
    dinputs = [torch.empty_like(x) for x in inputs]
    if x0.numel() == 0:
        return dinputs, torch.zeros_like(weight), torch.zeros_like(bias)
    view = _View([grad, *inputs])
    channels, elements = view.channels, view.rows * view.positions
    mean = mean.contiguous()
    rstd = torch.rsqrt(var + eps)
    scale = (weight * rstd).contiguous()
    bias_sum = bias.sum(0)
    # NOTE: K + 1 accumulators and K + 1 loaded tiles: half the statistics' tile keeps ~64-80 registers.
    plan = view.reduction(1024)
    partial = torch.empty(count + 1, plan["chunks"], channels, dtype=weight.dtype, device=x0.device)
    _backward_sums_kernel[plan["grid"]](
        grad,
        x0,
        x1,
        x2,
        mean,
        scale,
        bias_sum,
        partial,
        view.positions,
        channels,
        plan["q_chunks"],
        plan["chunks"],
        plan["iters"],
        *view.strides,
        K=count,
        ACC=view.acc,
        BLOCK_C=plan["BLOCK_C"],
        BLOCK_Q=plan["BLOCK_Q"],
        CHANNELS_LAST=view.channels_last,
        num_warps=8,
    )
    sums = partial.sum(1)  # (K + 1, C): Σ ds, then Σ ds·(x_i − μ_i)
    dweight = rstd * sums[1:]
    dbias = sums[:1].expand(count, channels).contiguous()
    if training:
        offset = scale * (sums[0] / elements)
        slope = (scale * rstd.square() * sums[1:] / elements).contiguous()
    else:
        offset = slope = scale  # not read
    plan = view.elementwise()
    dx0, dx1, dx2 = _branches(dinputs)
    _backward_kernel[plan["grid"]](
        grad,
        x0,
        x1,
        x2,
        dx0,
        dx1,
        dx2,
        mean,
        scale,
        bias_sum,
        offset,
        slope,
        view.positions,
        channels,
        plan["q_blocks"],
        *view.strides,
        K=count,
        TRAINING=training,
        ACC=view.acc,
        BLOCK_C=plan["BLOCK_C"],
        BLOCK_Q=plan["BLOCK_Q"],
        CHANNELS_LAST=view.channels_last,
    )
    return dinputs, dweight, dbias
