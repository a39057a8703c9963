"""`torch.export` of ProVG's vision path (`ProVG.ground`): images and encoded expressions in, boxes and
mask logits out, one graph with the fused operators (PCM gates, RepVGG convolutions) inside.

Export the deploy form (`provg.reparameterize` first) for inference. The text side (parser and encoder)
stays in Python: encode with `ProVG.encode_text`. The exported program takes the images and the six
tensors of the `LanguageFeatures` in field order (`language_tensors`) and returns ``(boxes,
mask_logits)``; it calls ``torch.ops.provg.*`` operators, so the process that runs it imports provg::

    program = export_ground(model, images, language)
    boxes, mask_logits = program.module()(images, *language_tensors(language))

``dynamic=True`` makes the batch size and the token lengths symbolic (one program for any batch).
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


def export_ground(
    model: ProVG, images: Tensor, language: LanguageFeatures, dynamic: bool = False
) -> torch.export.ExportedProgram:
    """Export ``model.ground`` traced at the example ``images`` and ``language``.

    With ``dynamic=False`` the program accepts only the examples' shapes. With ``dynamic=True`` the batch
    size (1 to 1024) and each of the three token lengths (context, spatial, attribute cues; 1 to 512) are
    symbolic, so one program serves any batch of expressions; the image size stays the example's.
    """
    if model.training:
        raise RuntimeError(
            "export_ground exports inference; call model.eval() (and provg.reparameterize) first"
        )
    tensors = language_tensors(language)
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1024)
        per_tensor = []
        for i in range(0, len(tensors), 2):  # (features, mask) pairs share their token axis
            tokens = torch.export.Dim(f"tokens_{i // 2}", min=1, max=512)
            per_tensor += [{0: batch, 1: tokens}, {0: batch, 1: tokens}]
        shapes = ({0: batch}, tuple(per_tensor))
    with torch.no_grad():
        return torch.export.export(_Ground(model), (images, *tensors), dynamic_shapes=shapes)
