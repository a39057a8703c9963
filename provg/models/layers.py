"""Small building blocks shared by the ProVG modules: conv-BN-activation and token/map layouts.

Visual features travel as tokens (B, P, C) with P = H·W, channels last (DESIGN §2). A token tensor
viewed as a map is a channels-last (B, C, H, W) tensor, so converting between the two copies nothing.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNAct", "map_to_tokens", "resize_to", "tokens_to_map"]


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) → BatchNorm2d → SiLU (or no activation with ``act=False``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, act: bool = True
    ):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.SiLU() if act else nn.Identity(),
        )


def tokens_to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H·W, C) tokens → (B, C, H, W) map; a view when the tokens are contiguous."""
    batch, positions, channels = tokens.shape
    if positions != height * width:
        raise ValueError(f"{positions} tokens cannot form a {height}×{width} map")
    return tokens.transpose(1, 2).reshape(batch, channels, height, width)


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
