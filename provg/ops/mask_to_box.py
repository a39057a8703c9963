"""Minimal enclosing rectangle of masks: the b_m of the consistency loss (Eq. 14) and the mask box of
the RES metrics (DESIGN §3).

Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates: foreground spanning rows r0..r1 and columns
c0..c1 gives ``(c0, r0, c1 + 1, r1 + 1)``, so the box area equals the number of pixels it covers. An
empty mask gives ``(0, 0, 0, 0)`` and ``valid = False``.

Backends: ``torch`` (reference), ``cpp`` (``provg._C``, CPU), ``cuda`` (``provg._C``, CUDA).
`soft_mask_to_box` is the differentiable variant used when the consistency loss is configured to pass
gradients into the mask; it equals `mask_to_box` on binary masks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import select_backend
from ._extension import has_cpp

__all__ = ["mask_to_box", "mask_to_box_reference", "soft_mask_to_box"]

_IMPLEMENTED = ("torch", "cpp", "cuda")
_PREFERENCE = {"cpu": ("cpp",), "cuda": ("cuda",)}


def _check_masks(masks: Tensor) -> None:
    if not isinstance(masks, Tensor):
        raise TypeError(f"mask_to_box expects a tensor, got {type(masks).__name__}")
    if masks.dim() < 2:
        raise ValueError(f"mask_to_box expects masks of shape (..., H, W), got {tuple(masks.shape)}")
    if masks.dtype not in (torch.bool, torch.uint8):
        raise TypeError(
            f"mask_to_box expects bool or uint8 masks, got {masks.dtype}; threshold first, e.g. masks > 0.5"
        )


def mask_to_box_reference(masks: Tensor) -> tuple[Tensor, Tensor]:
    """PyTorch reference of `mask_to_box` for masks of shape (B, H, W)."""
    height, width = masks.shape[-2:]
    foreground = masks != 0
    rows = foreground.any(dim=2)  # (B, H)
    cols = foreground.any(dim=1)  # (B, W)
    valid = rows.any(dim=1)
    # NOTE: argmax over {0, 1} returns the first maximum, i.e. the first set index.
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return boxes * valid[:, None], valid


def mask_to_box(masks: Tensor, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Boxes (..., 4) float32 and validity (...) bool of masks (..., H, W) (bool or uint8).

    ``backend`` forces "torch", "cpp" or "cuda"; by default the compiled kernel for the masks' device
    is used when built, else the reference (the fallback is logged once).
    """
    _check_masks(masks)
    leading = masks.shape[:-2]
    flat = masks.reshape(-1, *masks.shape[-2:])
    chosen = select_backend("mask_to_box", masks.device, _IMPLEMENTED, _PREFERENCE, backend)
    if chosen == "torch":
        boxes, valid = mask_to_box_reference(flat)
    else:
        boxes, valid = torch.ops.provg.mask_to_box(flat)
    return boxes.reshape(*leading, 4), valid.reshape(leading)


def soft_mask_to_box(probabilities: Tensor) -> Tensor:
    """Differentiable enclosing box (..., 4) of foreground probabilities (..., H, W) in [0, 1].

    With column profile p(c) = max over rows, the left edge is the expected number of leading empty
    columns if columns were independent Bernoulli(p(c)): ``x0 = Σ_c Π_{c' ≤ c} (1 − p(c'))``; the right
    edge counts trailing empty columns the same way, and rows likewise. For a binary mask this is exactly
    the box of `mask_to_box` (an empty mask gives x0 = W, x1 = 0: a degenerate box).
    """
    if probabilities.dim() < 2:
        raise ValueError(f"soft_mask_to_box expects (..., H, W), got {tuple(probabilities.shape)}")
    height, width = probabilities.shape[-2:]
    column = probabilities.amax(dim=-2)
    row = probabilities.amax(dim=-1)

    def leading_empty(profile: Tensor) -> Tensor:
        return torch.cumprod(1 - profile, dim=-1).sum(dim=-1)

    x0 = leading_empty(column)
    x1 = width - leading_empty(column.flip(-1))
    y0 = leading_empty(row)
    y1 = height - leading_empty(row.flip(-1))
    return torch.stack([x0, y0, x1, y1], dim=-1)


if has_cpp():

    @torch.library.register_fake("provg::mask_to_box")
    def _mask_to_box_fake(masks: Tensor) -> tuple[Tensor, Tensor]:
        batch = masks.shape[0]
        return masks.new_empty((batch, 4), dtype=torch.float32), masks.new_empty((batch,), dtype=torch.bool)
