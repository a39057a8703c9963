"""Survey gate (Eq. 1–2): ``x ⊙ σ(Attn(q, k, v))``, multi-head, scale 1/√(C/heads).

x, q: (B, P, C) visual tokens and their queries; k, v: (B, N, C) projected context tokens;
key_mask: (B, N) bool, True = a valid token. The heads split C into equal slices; the concatenated
head outputs A^c ∈ R^{P×C} gate x element-wise. A query with no valid key gets attention 0 (gate 0.5).

Backends: ``torch`` (`survey_gate_reference`, the ground truth), ``cpp`` (csrc/cpu), ``cuda``
(csrc/cuda), ``triton`` (`provg.ops.triton.survey_gate`). The fused backends read x and q once and
write the output once; their backward recomputes the attention instead of storing it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fused import FusedGate
from ._gate_api import check_keys, choose_backend, kernels, promote
from .masked_softmax import masked_softmax

__all__ = ["survey_gate", "survey_gate_reference", "survey_gate_values"]


def survey_gate_values(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int = 1) -> Tensor:
    """The gate σ(Attn(q, k, v)) itself, (B, P, C) (what `provg.engine.explain` renders)."""
    batch, positions, channels = q.shape
    tokens = k.shape[1]
    width = channels // heads
    qh = q.reshape(batch, positions, heads, width).transpose(1, 2)  # (B, h, P, d)
    kh = k.reshape(batch, tokens, heads, width).transpose(1, 2)  # (B, h, N, d)
    vh = v.reshape(batch, tokens, heads, width).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * width**-0.5  # (B, h, P, N)
    weights = masked_softmax(scores, key_mask[:, None, None, :])
    attention = torch.matmul(weights, vh).transpose(1, 2).reshape(batch, positions, channels)
    return torch.sigmoid(attention)


def survey_gate_reference(
    x: Tensor, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int = 1
) -> Tensor:
    """PyTorch reference of `survey_gate`."""
    return x * survey_gate_values(q, k, v, key_mask, heads)


def _forward(backend: str, x, q, k, v, key_mask, heads):
    return kernels("survey_gate", backend)[0](x, q, k, v, key_mask, heads)


def _backward(backend: str, grad, x, q, k, v, key_mask, heads):
    return kernels("survey_gate", backend)[1](grad, x, q, k, v, key_mask, heads)


_FUSED = FusedGate(
    "survey_gate",
    "Tensor x, Tensor q, Tensor k, Tensor v, Tensor key_mask, int heads",
    ("x", "q", "k", "v"),
    _forward,
    _backward,
)


def survey_gate(
    x: Tensor, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int = 1, backend: str | None = None
) -> Tensor:
    """Gate ``x`` by sigmoid of multi-head attention of queries ``q`` over context keys/values.

    ``backend`` forces "torch", "cpp", "cuda" or "triton"; by default the fastest available one for the
    inputs' device and dtype is used (a fallback to the reference is logged once).
    """
    check_keys("survey_gate", x, key_mask, k)
    if q.shape != x.shape:
        raise ValueError(f"survey_gate: q must have x's shape {tuple(x.shape)}, got {tuple(q.shape)}")
    if k.dim() != 3 or k.shape[0] != x.shape[0] or k.shape[2] != x.shape[2] or v.shape != k.shape:
        raise ValueError(
            f"survey_gate: k and v must be (B, N, C) = ({x.shape[0]}, N, {x.shape[2]}), "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if heads < 1 or x.shape[2] % heads:
        raise ValueError(f"survey_gate: {x.shape[2]} channels are not divisible by heads={heads}")
    x, q, k, v = promote(x, q, k, v)
    chosen = choose_backend("survey_gate", x, backend)
    if chosen == "torch":
        return survey_gate_reference(x, q, k, v, key_mask, heads)
    return _FUSED(x, q, k, v, key_mask, heads, backend=chosen)
