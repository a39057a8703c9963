"""Softmax over language tokens with a key-padding mask, where a row with no valid key is all zeros.

This is the attention weighting of every PCM gate (Eq. 1, 3, 6; DESIGN §2): masked keys get zero
weight, and a query whose keys are all masked attends to nothing, so its attention output is 0 (its
gate σ(0) = 0.5) — never NaN — and it passes no gradient to keys or values.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_softmax"]


def masked_softmax(scores: Tensor, key_mask: Tensor) -> Tensor:
    """Softmax of ``scores`` (..., N) over the last dim, restricted to ``key_mask`` (broadcastable, bool)."""
    # NOTE: a finite fill (not -inf) keeps fully masked rows finite; multiplying by the mask afterwards
    # zeroes them, and for other rows the masked weights are exp(min - max) = 0 already.
    filled = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * key_mask
