"""Locate gate (Eq. 3–4): ``x ⊙ σ(Attn(x·w + b, k, v))`` with scalar queries, keys and values.

x: (B, P, C); w: (C,) and b: scalar — the 1×1 conv C→1 giving the spatial saliency s, with the query
weight w_q folded in; k, v: (B, N) projected spatial-cue tokens; key_mask: (B, N) bool. The attention
scale is 1. The per-position gate broadcasts over channels. This file holds the PyTorch reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masked_softmax import masked_softmax

__all__ = ["locate_gate"]


def locate_gate(x: Tensor, w: Tensor, b: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    """Gate every position of ``x`` by sigmoid of scalar attention over the spatial cue tokens."""
    query = torch.matmul(x, w) + b  # (B, P)
    scores = query[:, :, None] * k[:, None, :]  # (B, P, N)
    weights = masked_softmax(scores, key_mask[:, None, :])
    attention = (weights * v[:, None, :]).sum(dim=-1)  # (B, P)
    return x * torch.sigmoid(attention)[:, :, None]
