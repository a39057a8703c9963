"""Survey gate (Eq. 1–2): ``x ⊙ σ(Attn(q, k, v))``, multi-head, scale 1/√(C/heads).

x, q: (B, P, C) visual tokens and their queries; k, v: (B, N, C) projected context tokens;
key_mask: (B, N) bool, True = a valid token. The heads split C into equal slices; the concatenated
head outputs A^c ∈ R^{P×C} gate x element-wise. This file holds the PyTorch reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masked_softmax import masked_softmax

__all__ = ["survey_gate"]


def survey_gate(x: Tensor, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int = 1) -> Tensor:
    """Gate ``x`` by sigmoid of multi-head attention of queries ``q`` over context keys/values."""
    batch, positions, channels = x.shape
    tokens = k.shape[1]
    if channels % heads:
        raise ValueError(f"survey_gate: channels {channels} are not divisible by heads={heads}")
    width = channels // heads
    qh = q.reshape(batch, positions, heads, width).transpose(1, 2)  # (B, h, P, d)
    kh = k.reshape(batch, tokens, heads, width).transpose(1, 2)  # (B, h, N, d)
    vh = v.reshape(batch, tokens, heads, width).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * width**-0.5  # (B, h, P, N)
    weights = masked_softmax(scores, key_mask[:, None, None, :])
    attention = torch.matmul(weights, vh).transpose(1, 2).reshape(batch, positions, channels)
    return x * torch.sigmoid(attention)
