"""Cross-scale Fusion Module (Sec. 4.3, Eq. 8–9): top-down then bottom-up fusion of the 4 PCM outputs.

Every stage is first projected to a common width (1×1 conv + BN). Top-down, for i = 3, 2, 1:
V↓_i = FusionBlock(Ṽ_i + Up(Ṽ_{i+1})), V↓_4 = Ṽ_4. Bottom-up, for i = 2, 3, 4:
V↑_i = FusionBlock(V↓_i + Down(V↓_{i−1})), V↑_1 = V↓_1, Down = 3×3 conv stride 2 (+ BN, SiLU).
As written the two directions do not cascade (each reads the un-fused neighbour); ``cascade_top_down``
uses Up(V↓_{i+1}) and ``cascade_bottom_up`` uses Down(V↑_{i−1}) instead. Up is nearest interpolation
to the finer stage's size, so odd sizes work. With ``enabled=False`` ("w/o CFM", Table 4) the
projected features pass through unchanged.

`FusionBlock` is the RT-DETR CSP block: ``conv3(RepBlocks(conv1(x)) + conv2(x))`` with conv1–3 1×1
conv + BN + SiLU and RepBlocks a sequence of `RepVGGBlock`s.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import ConvBNAct, resize_to
from .repvgg import RepVGGBlock

__all__ = ["CFM", "FusionBlock"]


class FusionBlock(nn.Module):
    """CSP block of ``num_blocks`` RepVGG blocks at width ``channels`` (hidden width × ``expansion``)."""

    def __init__(self, channels: int, num_blocks: int = 3, expansion: float = 1.0, identity: bool = False):
        super().__init__()
        hidden = int(channels * expansion)
        self.conv1 = ConvBNAct(channels, hidden, 1)
        self.conv2 = ConvBNAct(channels, hidden, 1)
        self.blocks = nn.Sequential(*[RepVGGBlock(hidden, identity) for _ in range(num_blocks)])
        self.conv3 = ConvBNAct(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.conv1(x)
        if len(self.blocks) == 0:
            return self.conv3(hidden + self.conv2(x))
        for block in self.blocks[:-1]:
            hidden = block(hidden)
        # NOTE: the last block adds conv2's branch itself (fused into its convolution once deployed).
        return self.conv3(self.blocks[-1](hidden, residual=self.conv2(x)))


class CFM(nn.Module):
    """Projects 4 stages to ``width`` and fuses them top-down then bottom-up (Eq. 8–9)."""

    def __init__(
        self,
        in_channels: list[int],
        width: int = 256,
        num_blocks: int = 3,
        enabled: bool = True,
        cascade_top_down: bool = False,
        cascade_bottom_up: bool = False,
        rep_identity: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"CFM expects 4 stages, got channels {in_channels}")
        self.enabled = enabled
        self.cascade_top_down = cascade_top_down
        self.cascade_bottom_up = cascade_bottom_up
        self.inputs = nn.ModuleList(ConvBNAct(c, width, 1, act=False) for c in in_channels)
        if enabled:
            self.top_down = nn.ModuleList(
                FusionBlock(width, num_blocks, identity=rep_identity) for _ in range(3)
            )
            self.downs = nn.ModuleList(ConvBNAct(width, width, 3, stride=2) for _ in range(3))
            self.bottom_up = nn.ModuleList(
                FusionBlock(width, num_blocks, identity=rep_identity) for _ in range(3)
            )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """(B, C_i, H_i, W_i) maps, finest first → the 4 fused maps V↑_1..V↑_4 at ``width``."""
        projected = [proj(f) for proj, f in zip(self.inputs, features)]
        if not self.enabled:
            return projected
        down = [None, None, None, projected[3]]  # V↓_i, index i-1
        for i in (2, 1, 0):  # stages 3, 2, 1
            coarser = down[i + 1] if self.cascade_top_down else projected[i + 1]
            down[i] = self.top_down[i](projected[i] + resize_to(coarser, projected[i].shape[-2:]))
        up = [down[0], None, None, None]  # V↑_i
        for i in (1, 2, 3):  # stages 2, 3, 4
            finer = up[i - 1] if self.cascade_bottom_up else down[i - 1]
            up[i] = self.bottom_up[i - 1](down[i] + resize_to(self.downs[i - 1](finer), down[i].shape[-2:]))
        return up
