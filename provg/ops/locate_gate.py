"""Locate gate (Eq. 3–4): ``x ⊙ σ(Attn(x·w + b, k, v))`` with scalar queries, keys and values.

x: (B, P, C); w: (C,) and b: scalar — the 1×1 conv C→1 giving the spatial saliency s, with the query
weight w_q folded in; k, v: (B, N) projected spatial-cue tokens; key_mask: (B, N) bool. The attention
scale is 1. The per-position gate broadcasts over channels.

Backends: ``torch`` (`locate_gate_reference`), ``cpp``, ``cuda``, ``triton``. The fused kernels read
each row of x once in the forward (query, attention and gated row from one load) and once in the
backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fused import FusedGate
from ._gate_api import check_keys, choose_backend, kernels, promote
from .masked_softmax import masked_softmax

__all__ = ["locate_gate", "locate_gate_reference", "locate_gate_values"]


def locate_gate_values(x: Tensor, w: Tensor, b: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    """The per-position gate σ(Attn(x·w + b, k, v)), (B, P)."""
    query = torch.matmul(x, w) + b  # (B, P)
    scores = query[:, :, None] * k[:, None, :]  # (B, P, N)
    weights = masked_softmax(scores, key_mask[:, None, :])
    attention = (weights * v[:, None, :]).sum(dim=-1)  # (B, P)
    return torch.sigmoid(attention)


def locate_gate_reference(x: Tensor, w: Tensor, b: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    """PyTorch reference of `locate_gate`."""
    return x * locate_gate_values(x, w, b, k, v, key_mask)[:, :, None]


def _forward(backend: str, x, w, b, k, v, key_mask):
    return kernels("locate_gate", backend)[0](x, w, b, k, v, key_mask)


def _backward(backend: str, grad, x, w, b, k, v, key_mask):
    return kernels("locate_gate", backend)[1](grad, x, w, b, k, v, key_mask)


_FUSED = FusedGate(
    "locate_gate",
    "Tensor x, Tensor w, Tensor b, Tensor k, Tensor v, Tensor key_mask",
    ("x", "w", "b", "k", "v"),
    _forward,
    _backward,
)


def locate_gate(
    x: Tensor, w: Tensor, b: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, backend: str | None = None
) -> Tensor:
    """Gate every position of ``x`` by sigmoid of scalar attention over the spatial cue tokens."""
    check_keys("locate_gate", x, key_mask, k)
    if w.shape != (x.shape[2],) or b.numel() != 1:
        raise ValueError(
            f"locate_gate: w must be (C,) = ({x.shape[2]},) and b a scalar, "
            f"got {tuple(w.shape)} and {tuple(b.shape)}"
        )
    if k.dim() != 2 or k.shape[0] != x.shape[0] or v.shape != k.shape:
        raise ValueError(f"locate_gate: k and v must be (B, N), got {tuple(k.shape)} and {tuple(v.shape)}")
    x, w, b, k, v = promote(x, w, b, k, v)
    chosen = choose_backend("locate_gate", x, backend)
    if chosen == "torch":
        return locate_gate_reference(x, w, b, k, v, key_mask)
    return _FUSED(x, w, b, k, v, key_mask, backend=chosen)
