"""Language-guided Calibration Decoder (Sec. 4.4.1, Eq. 10–11), coarse → fine.

X_4 = Conv(V↑_4); X_i = Conv(Cat(V↑_i, V'_{i+1})) for i = 3, 2, 1 (Conv: 1×1 conv + BN + SiLU);
X̃_i = X_i + X_i ⊙ σ(MaskedMeanPool_tokens(Linear(L_c))) — the LCM gate, one weight per channel;
V'_i = Up(X̃_i), bilinear ×2 (to the next finer stage's size). ``lcm=False`` ("LCD w/o LCM", Table 4)
uses X̃_i = X_i. The decoder returns the calibrated maps X̃_1..X̃_4 (before the last up-sampling):
the heads up-sample what they need, which computes the same values for less memory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import ConvBNAct, resize_to

__all__ = ["LCD", "LCM", "masked_mean"]


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``tokens`` (B, N, D) over valid tokens (mask (B, N) bool); 0 for a row with none."""
    weights = mask.to(tokens.dtype)
    count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bnd,bn->bd", tokens, weights) / count


class LCM(nn.Module):
    """Eq. 11: X̃ = X + X ⊙ σ(MaskedMean(Linear(L_c)))."""

    def __init__(self, text_width: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(text_width, channels)

    def gate(self, context: Tensor, mask: Tensor) -> Tensor:
        """The channel gate (B, C) in (0, 1)."""
        return torch.sigmoid(masked_mean(self.linear(context), mask))

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        return x + x * self.gate(context, mask)[:, :, None, None]


class LCD(nn.Module):
    """Decodes the CFM maps V↑_1..V↑_4 (width ``in_width``) at width ``width`` with LCM gates."""

    def __init__(self, in_width: int, width: int, text_width: int, lcm: bool = True) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(
            [ConvBNAct(in_width + width, width, 1) for _ in range(3)] + [ConvBNAct(in_width, width, 1)]
        )
        self.lcm = nn.ModuleList(LCM(text_width, width) for _ in range(4)) if lcm else None

    def forward(self, features: list[Tensor], context: Tensor, context_mask: Tensor) -> list[Tensor]:
        """Returns X̃_1..X̃_4 (finest first); V'_i = Up(X̃_i) is what the next finer step concatenates."""
        calibrated: list[Tensor] = [None] * 4  # type: ignore[list-item]
        previous = None
        for i in (3, 2, 1, 0):
            if previous is None:
                x = self.reduce[i](features[i])
            else:
                up = resize_to(previous, features[i].shape[-2:], mode="bilinear")  # V'_{i+1}
                x = self.reduce[i](torch.cat([features[i], up], dim=1))
            if self.lcm is not None:
                x = self.lcm[i](x, context, context_mask)
            calibrated[i] = previous = x
        return calibrated
