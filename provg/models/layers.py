"""Small building blocks shared by the ProVG modules: conv-BN-activation and token/map layouts.

Visual features travel as tokens (B, P, C) with P = H·W, channels last (DESIGN §2). A token tensor
viewed as a map is a channels-last (B, C, H, W) tensor, so converting between the two copies nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNAct", "fuse_conv_bn", "map_to_tokens", "resize_to", "tokens_to_map"]


def fuse_conv_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Kernel and bias of ``BN(conv(x))`` in eval mode as one convolution: t = γ/√(σ² + ε),
    W' = W·t, b' = β − μ·t."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) → BatchNorm2d → SiLU (or no activation with ``act=False``).

    `reparameterize` folds the batch norm into the convolution (deploy form: conv with bias → act),
    which saves a pass over the map and is exact in eval mode.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, act: bool = True
    ):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.SiLU() if act else nn.Identity(),
        )

    @property
    def deployed(self) -> bool:
        return isinstance(self[1], nn.Identity)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the batch norm into the convolution, in place (uses the running statistics)."""
        if self.deployed:
            return
        conv, bn = self[0], self[1]
        kernel, bias = fuse_conv_bn(conv.weight, bn)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
        ).to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self[0], self[1] = fused, nn.Identity()


def tokens_to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H·W, C) tokens → (B, C, H, W) map; for contiguous tokens a channels-last view with the
    canonical strides (batch stride H·W·C even at B = 1, which convolutions need to keep the layout)."""
    batch, positions, channels = tokens.shape
    if positions != height * width:
        raise ValueError(f"{positions} tokens cannot form a {height}×{width} map")
    return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def map_to_tokens(feature_map: Tensor) -> Tensor:
    """(B, C, H, W) map → (B, H·W, C) tokens; a view when the map is channels-last."""
    return feature_map.flatten(2).transpose(1, 2)


def resize_to(x: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Interpolate a (B, C, H, W) map to ``size`` (no-op when it already has it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)
