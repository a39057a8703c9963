"""Task heads (Sec. 4.4.2, Eq. 12–13): the RES mask head and the REC box head with stage weighting (FA).

RES: a 1×1 conv on the finest decoded map V'_1 = Up(X̃_1) gives 2-class logits, up-sampled to the
input size. A 1×1 conv commutes exactly with bilinear up-sampling (its weights sum to 1), so the head
convolves X̃_1 and then up-samples ×2 and to the input: the same logits without the wide V'_1 map.

REC ("FA"): each decoded map is pooled to a vector and projected to C, stacked F ∈ R^{B×4×C};
w = Softmax(Linear(Mean_C(F))); F_rec = Σ_i w_i F_i; a 3-layer MLP gives normalized (cx, cy, w, h)
through a sigmoid. ``fa=False`` ("w/o FA", Table 4) uses the finest stage's vector alone.

Pooling a map to a vector is left open by the paper; ``rec_pool`` chooses:

- ``"mask"`` (default): weights over positions are the RES head's foreground probability (detached),
  average-pooled to each stage's size and normalized — the box head looks where the mask head sees
  the referred object, at every scale (the multi-task coupling of the unified head);
- ``"attention"``: a 1×1 conv scores every position and a softmax over positions gives the weights;
- ``"mean"`` / ``"max"``: plain pooling of the features.

The weighted modes pool the features together with the coordinates x, y, x², y² (normalized to
[0, 1]), so the vector carries where the evidence is and how far it spreads (uniform weights over a box
of width w give E[x²] − E[x]² = w²/12). Pooling X̃_i rather than V'_i = Up(X̃_i) keeps the heads off the
up-sampled maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import resize_to

__all__ = ["POOLS", "BoxHead", "MaskHead", "StagePool"]

POOLS = ("mask", "attention", "mean", "max")
_MOMENTS = 4


class MaskHead(nn.Module):
    """2-class mask logits from X̃_1: `low_resolution` at X̃_1's size, `forward` at the input size."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(width, 2, 1)

    def low_resolution(self, finest: Tensor) -> Tensor:
        return self.classifier(finest)

    def upsample(self, logits: Tensor, image_size: tuple[int, int]) -> Tensor:
        doubled = (logits.shape[-2] * 2, logits.shape[-1] * 2)  # V'_1 = Up(X̃_1)
        return resize_to(resize_to(logits, doubled, "bilinear"), image_size, "bilinear")

    def forward(self, finest: Tensor, image_size: tuple[int, int]) -> Tensor:
        return self.upsample(self.low_resolution(finest), image_size)


def _coordinate_moments(height: int, width: int, like: Tensor) -> Tensor:
    """(4, H, W): pixel-centre x, y normalized to [0, 1], and their squares."""
    ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height
    xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width
    x, y = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([x, y, x * x, y * y])


class StagePool(nn.Module):
    """Pools one decoded map (B, C_in, H, W) to a vector and projects it to ``width``."""

    def __init__(self, in_width: int, width: int, mode: str = "mask") -> None:
        super().__init__()
        if mode not in POOLS:
            raise ValueError(f"rec_pool must be one of {POOLS}, got {mode!r}")
        self.mode = mode
        self.score = nn.Conv2d(in_width, 1, 1) if mode == "attention" else None
        weighted = mode in ("mask", "attention")
        self.proj = nn.Linear(in_width + (_MOMENTS if weighted else 0), width)

    def weights(self, x: Tensor, foreground: Tensor | None = None) -> Tensor:
        """Weights over positions (B, H·W) summing to 1 (the weighted modes)."""
        if self.mode == "attention":
            return torch.softmax(self.score(x).flatten(1), dim=1)
        if foreground is None:
            raise ValueError("rec_pool='mask' needs the foreground probability of the mask head")
        pooled = F.adaptive_avg_pool2d(foreground[:, None], x.shape[-2:]).flatten(1)
        return pooled / pooled.sum(dim=1, keepdim=True).clamp_min(1e-6)

    def forward(self, x: Tensor, foreground: Tensor | None = None) -> Tensor:
        if self.mode == "mean":
            pooled = x.mean(dim=(2, 3))
        elif self.mode == "max":
            pooled = x.amax(dim=(2, 3))
        else:
            weights = self.weights(x, foreground)
            coords = _coordinate_moments(x.shape[-2], x.shape[-1], x).flatten(1)  # (4, P)
            features = torch.einsum("bcp,bp->bc", x.flatten(2), weights)
            pooled = torch.cat([features, weights @ coords.T], dim=1)
        return self.proj(pooled)


class BoxHead(nn.Module):
    """Eq. 12–13 and the box MLP: 4 pooled stage vectors → weighted sum → (cx, cy, w, h) in [0, 1]."""

    def __init__(self, in_width: int, width: int, pool: str = "mask", fa: bool = True) -> None:
        super().__init__()
        self.fa = fa
        self.pool = pool
        self.pools = nn.ModuleList(StagePool(in_width, width, pool) for _ in range(4 if fa else 1))
        self.stage_weights = nn.Linear(4, 4) if fa else None
        self.mlp = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)
        )

    def weights(self, stacked: Tensor) -> Tensor:
        """Eq. 12: w = Softmax(Linear(Mean_C(F))) for F (B, 4, C)."""
        return F.softmax(self.stage_weights(stacked.mean(dim=2)), dim=1)

    def forward(self, calibrated: list[Tensor], foreground: Tensor | None = None) -> Tensor:
        """``calibrated``: X̃_1..X̃_4, finest first; ``foreground``: (B, H_1, W_1) probability for
        ``rec_pool="mask"``."""
        if self.fa:
            stacked = torch.stack([pool(x, foreground) for pool, x in zip(self.pools, calibrated)], dim=1)
            fused = (self.weights(stacked)[:, :, None] * stacked).sum(dim=1)  # Eq. 13
        else:
            fused = self.pools[0](calibrated[0], foreground)
        return torch.sigmoid(self.mlp(fused))
