"""2-D sine–cosine position embedding (as in DETR), for the optional position-aware survey queries.

The paper's PCM queries carry no absolute position (Swin has relative biases only); with
``pcm_position="sine"`` the survey queries become W_q(Conv(V) + PE), so expressions such as "on the upper
left" can be matched to positions directly.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["sine_position_embedding"]


@functools.lru_cache(maxsize=32)
def _embedding(height: int, width: int, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    quarter = channels // 4
    frequencies = torch.exp(-math.log(1000.0) * torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    y = ys[:, None, None] * frequencies * 2 * math.pi  # (H, 1, Q)
    x = xs[None, :, None] * frequencies * 2 * math.pi  # (1, W, Q)
    parts = [
        x.sin().expand(height, width, quarter),
        x.cos().expand(height, width, quarter),
        y.sin().expand(height, width, quarter),
        y.cos().expand(height, width, quarter),
    ]
    embedding = torch.cat(parts, dim=-1).reshape(height * width, 4 * quarter)
    if embedding.shape[1] < channels:  # channels not divisible by 4: zero-pad
        embedding = torch.nn.functional.pad(embedding, (0, channels - embedding.shape[1]))
    return embedding.to(device=device, dtype=dtype)


def sine_position_embedding(height: int, width: int, channels: int, like: Tensor) -> Tensor:
    """(H·W, channels) embedding in ``like``'s device and dtype, token order row-major."""
    return _embedding(height, width, channels, like.device, like.dtype)
