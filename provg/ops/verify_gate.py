"""Verify gate (Eq. 5–7): ``x ⊙ σ(Attn(w_q · mean_P(x), k, v))`` with one scalar query per channel.

x: (B, P, C); k, v: (B, N) projected attribute-cue tokens; key_mask: (B, N) bool; w_q: scalar query
weight. Each channel's mean over positions is a query token (the transpose of Eq. 5); the per-channel
gate broadcasts over positions. The attention scale is 1.

Backends: ``torch`` (`verify_gate_reference`), ``cpp``, ``cuda``, ``triton``. The channel means need
every position before any gate exists, so the fused forward reads x twice (means, gated write) and
writes once; the backward reads grad and x once for Σ_p grad·x and writes dx.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fused import FusedGate
from ._gate_api import check_keys, choose_backend, kernels, promote
from .masked_softmax import masked_softmax

__all__ = ["verify_gate", "verify_gate_reference", "verify_gate_values"]


def verify_gate_values(x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor) -> Tensor:
    """The per-channel gate σ(Attn(w_q·mean_P(x), k, v)), (B, C)."""
    query = w_q * x.mean(dim=1)  # (B, C)
    scores = query[:, :, None] * k[:, None, :]  # (B, C, N)
    weights = masked_softmax(scores, key_mask[:, None, :])
    attention = (weights * v[:, None, :]).sum(dim=-1)  # (B, C)
    return torch.sigmoid(attention)


def verify_gate_reference(x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor) -> Tensor:
    """PyTorch reference of `verify_gate`."""
    return x * verify_gate_values(x, k, v, key_mask, w_q)[:, None, :]


def _forward(backend: str, x, k, v, key_mask, w_q):
    return kernels("verify_gate", backend)[0](x, k, v, key_mask, w_q)


def _backward(backend: str, grad, x, k, v, key_mask, w_q):
    return kernels("verify_gate", backend)[1](grad, x, k, v, key_mask, w_q)


_FUSED = FusedGate(
    "verify_gate",
    "Tensor x, Tensor k, Tensor v, Tensor key_mask, Tensor w_q",
    ("x", "k", "v", "w_q"),
    _forward,
    _backward,
)


def verify_gate(
    x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, w_q: Tensor, backend: str | None = None
) -> Tensor:
    """Gate every channel of ``x`` by sigmoid of scalar attention over the attribute cue tokens."""
    check_keys("verify_gate", x, key_mask, k)
    if k.dim() != 2 or k.shape[0] != x.shape[0] or v.shape != k.shape:
        raise ValueError(f"verify_gate: k and v must be (B, N), got {tuple(k.shape)} and {tuple(v.shape)}")
    if w_q.numel() != 1:
        raise ValueError(f"verify_gate: w_q must be a scalar tensor, got shape {tuple(w_q.shape)}")
    x, k, v, w_q = promote(x, k, v, w_q)
    chosen = choose_backend("verify_gate", x, backend)
    if chosen == "torch":
        return verify_gate_reference(x, k, v, key_mask, w_q)
    return _FUSED(x, k, v, key_mask, w_q, backend=chosen)
