"""Verify gate (Eq. 5–7): ``x ⊙ σ(Attn(w_q · mean_P(x), k, v))`` with one scalar query per channel.

x: (B, P, C); k, v: (B, N) projected attribute-cue tokens; key_mask: (B, N) bool; w_q: scalar query
weight. Each channel's mean over positions is a query token (the transpose of Eq. 5); the per-channel
gate broadcasts over positions. The attention scale is 1. This file holds the PyTorch reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masked_softmax import masked_softmax

__all__ = ["verify_gate"]


def verify_gate(x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor) -> Tensor:
    """Gate every channel of ``x`` by sigmoid of scalar attention over the attribute cue tokens."""
    query = w_q * x.mean(dim=1)  # (B, C)
    scores = query[:, :, None] * k[:, None, :]  # (B, C, N)
    weights = masked_softmax(scores, key_mask[:, None, :])
    attention = (weights * v[:, None, :]).sum(dim=-1)  # (B, C)
    return x * torch.sigmoid(attention)[:, None, :]
