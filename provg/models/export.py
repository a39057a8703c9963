"""`torch.export` of ProVG's vision path (`ProVG.ground`): images and encoded expressions in, boxes and
mask logits out, one graph with the fused operators (PCM gates, RepVGG convolutions) inside.

Export the deploy form (`provg.reparameterize` first) for inference. The text side (parser and encoder)
stays in Python: encode with `ProVG.encode_text`. The exported program takes the images and the six
tensors of the `LanguageFeatures` in field order (`language_tensors`) and returns ``(boxes,
mask_logits)``; it calls ``torch.ops.provg.*`` operators, so the process that runs it imports provg::

    program = export_ground(model, images, language)
    boxes, mask_logits = program.module()(images, *language_tensors(language))
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from provg.text.encoder import LanguageFeatures

from .provg import ProVG

__all__ = ["export_ground", "language_tensors"]


def language_tensors(language: LanguageFeatures) -> tuple[Tensor, ...]:
    """The tensors of ``language`` in field order (context, context_mask, spatial, …)."""
    return tuple(getattr(language, field.name) for field in dataclasses.fields(language))


class _Ground(nn.Module):
    """``model.ground`` over flat tensors (torch.export's guards mishandle dataclass fields whose names
    extend one another, such as ``context`` and ``context_mask``)."""

    def __init__(self, model: ProVG) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, *language: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.ground(images, LanguageFeatures(*language))
        return out.boxes, out.mask_logits


def export_ground(model: ProVG, images: Tensor, language: LanguageFeatures) -> torch.export.ExportedProgram:
    """Export ``model.ground`` traced at the example ``images`` and ``language`` (shapes fixed at theirs)."""
    if model.training:
        raise RuntimeError(
            "export_ground exports inference; call model.eval() (and provg.reparameterize) first"
        )
    with torch.no_grad():
        return torch.export.export(_Ground(model), (images, *language_tensors(language)))
