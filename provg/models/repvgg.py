"""Re-parameterizable RepVGG block (Ding et al., 2021), the unit of the CFM FusionBlocks (Sec. 4.3).

Train form: ``SiLU(BN(conv3×3(x)) + BN(conv1×1(x)) [+ BN(x)])``. Deploy form: ``SiLU(conv3×3'(x) + b')``
with, per branch, t = γ/√(σ² + ε), W' = W·t, b' = β − μ·t; the 1×1 kernel is zero-padded to the 3×3
centre and the identity branch is a centred one-hot 3×3 kernel (DESIGN §2). The conversion uses the
running statistics, so it is exact in eval mode only; `reparameterize` refuses a model in train mode.
It also folds the batch norm of every `provg.models.layers.ConvBNAct` into its convolution.

The train form runs its tail through `provg.ops.rep_bn_add_silu_over` (batch norms, add and SiLU fused,
running statistics updated as `torch.nn.BatchNorm2d` does) and the deploy form through
`provg.ops.conv3x3_bias_silu`; with ``PROVG_BACKEND=torch`` both are the plain PyTorch modules' math.
An optional ``residual`` is added after the activation (the CSP block's add, fused in the deploy form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from provg.ops import conv3x3_bias_silu, rep_bn_add_silu_over

from .layers import ConvBNAct, fuse_conv_bn

__all__ = ["RepVGGBlock", "reparameterize"]


class RepVGGBlock(nn.Module):
    """3×3 + 1×1 (+ identity) convolution branches with batch norms, summed, then SiLU.

    Args:
        channels: input and output channels.
        identity: add the batch-normalised identity branch.
    """

    def __init__(self, channels: int, identity: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn_identity = nn.BatchNorm2d(channels) if identity else None
        self.fused: nn.Conv2d | None = None

    @property
    def deployed(self) -> bool:
        return self.fused is not None

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """``SiLU(block(x))``, plus ``residual`` (a map of the output's shape) when given."""
        if self.fused is not None:
            return conv3x3_bias_silu(x, self.fused.weight, self.fused.bias, residual)
        norms = [self.bn3, self.bn1] + ([self.bn_identity] if self.bn_identity is not None else [])
        branches = [self.conv3(x), self.conv1(x)] + ([x] if self.bn_identity is not None else [])
        y = rep_bn_add_silu_over(branches, norms)
        return y if residual is None else y + residual

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The single 3×3 kernel and bias that the eval-mode block equals."""
        kernel, bias = fuse_conv_bn(self.conv3.weight, self.bn3)
        kernel1, bias1 = fuse_conv_bn(F.pad(self.conv1.weight, [1, 1, 1, 1]), self.bn1)
        kernel, bias = kernel + kernel1, bias + bias1
        if self.bn_identity is not None:
            eye = torch.zeros_like(self.conv3.weight)
            eye[torch.arange(self.channels), torch.arange(self.channels), 1, 1] = 1
            kernel_id, bias_id = fuse_conv_bn(eye, self.bn_identity)
            kernel, bias = kernel + kernel_id, bias + bias_id
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place (drops the branches)."""
        if self.deployed:
            return
        kernel, bias = self.equivalent_kernel_bias()
        fused = nn.Conv2d(self.channels, self.channels, 3, padding=1, bias=True)
        fused.to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.fused = fused
        del self.conv3, self.bn3, self.conv1, self.bn1, self.bn_identity
        self.bn_identity = None


def reparameterize(model: nn.Module) -> nn.Module:
    """Convert ``model`` to its deploy form, in place; returns ``model``: every `RepVGGBlock` becomes
    one 3×3 convolution, and every `ConvBNAct` (the CFM and LCD projections) folds its batch norm into
    its convolution.

    The model must be in eval mode: the conversion folds the running statistics, which is what the
    eval-mode model computes (float64 agreement to round-off).
    """
    blocks = [m for m in model.modules() if isinstance(m, (RepVGGBlock, ConvBNAct))]
    training = [m for m in blocks if m.training and not m.deployed]
    if training:
        raise RuntimeError(
            "reparameterize folds running batch-norm statistics and is exact in eval mode only; "
            "call model.eval() first"
        )
    for block in blocks:
        block.reparameterize()
    return model
