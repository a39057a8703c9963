"""The ProVG model (Fig. 4): parser + text encoder, a staged timm backbone with a PCM at every stage,
CFM, LCD and the multi-task heads.

``model(images, expressions)`` takes images (B, 3, H, W) normalized as the backbone expects and B
expressions, and returns a `GroundingOutput` with boxes (B, 4: normalized cx, cy, w, h) and mask
logits (B, 2, H, W).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from provg.parsers import Decomposition, get_parser
from provg.text import LanguageFeatures, TextEncoder

from .backbone import StagedBackbone
from .cfm import CFM
from .config import ProVGConfig
from .heads import BoxHead, MaskHead
from .layers import tokens_to_map
from .lcd import LCD
from .pcm import PCM
from .pretrained import load_pretrained, save_pretrained

__all__ = ["GroundingOutput", "ProVG", "boxes_to_xyxy", "cxcywh_to_xyxy"]

_IMG_SIZE_FAMILIES = ("swin", "vit", "deit", "eva", "beit")


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(…, 4) boxes (cx, cy, w, h) → (x0, y0, x1, y1) in the same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def boxes_to_xyxy(boxes: Tensor, height: int, width: int) -> Tensor:
    """Normalized (cx, cy, w, h) → pixel (x0, y0, x1, y1)."""
    return cxcywh_to_xyxy(boxes) * boxes.new_tensor([width, height, width, height])


@dataclass
class GroundingOutput:
    """What ProVG predicts for a batch."""

    boxes: Tensor  # (B, 4) normalized (cx, cy, w, h) in [0, 1]
    mask_logits: Tensor  # (B, 2, H, W): background / foreground logits at the input size

    def masks(self) -> Tensor:
        """Predicted masks (B, H, W) bool: foreground logit above background."""
        return self.mask_logits[:, 1] > self.mask_logits[:, 0]

    def boxes_xyxy(self) -> Tensor:
        """Predicted boxes as pixel (x0, y0, x1, y1) at the input size."""
        height, width = self.mask_logits.shape[-2:]
        return boxes_to_xyxy(self.boxes, height, width)


class ProVG(nn.Module):
    """ProVG for RSREC and RSRES; build named variants with `provg.create_model`."""

    def __init__(self, config: ProVGConfig) -> None:
        super().__init__()
        self.config = config
        self.parser = get_parser(config.parser, **config.parser_options)
        # Parsers are deterministic: each expression is parsed once (least recently used dropped).
        self._parsed: OrderedDict[str, Decomposition] = OrderedDict()
        self.parse_cache_size = 65536
        self.text_encoder = TextEncoder(
            config.text_encoder,
            mode=config.text_mode,
            max_context_tokens=config.max_context_tokens,
            max_cue_tokens=config.max_cue_tokens,
            trainable=config.text_trainable,
            cache_size=config.text_cache_size,
        )
        backbone_kwargs = dict(config.backbone_kwargs)
        if config.backbone.startswith(_IMG_SIZE_FAMILIES):
            backbone_kwargs.setdefault("img_size", config.image_size)
        self.backbone = StagedBackbone(config.backbone, config.backbone_pretrained_file, **backbone_kwargs)
        text_width = self.text_encoder.width
        self.pcm = nn.ModuleList(
            PCM(channels, text_width, config.pcm_mode, config.pcm_heads, config.pcm_position)
            for channels in self.backbone.channels
        )
        self.cfm = CFM(
            self.backbone.channels,
            config.cfm_width,
            config.cfm_blocks,
            enabled=config.cfm,
            cascade_top_down=config.cfm_cascade_top_down,
            cascade_bottom_up=config.cfm_cascade_bottom_up,
            rep_identity=config.rep_identity,
        )
        self.lcd = LCD(config.cfm_width, config.decoder_width, text_width, lcm=config.lcm)
        self.mask_head = MaskHead(config.decoder_width)
        self.box_head = BoxHead(config.decoder_width, config.rec_width, config.rec_pool, config.fa)

    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Save as ``directory/config.json`` + ``model.safetensors`` (see `provg.models.pretrained`)."""
        return save_pretrained(self, directory, metadata)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", **overrides: Any
    ) -> ProVG:
        """Load a model saved by `save_pretrained` (a local directory; nothing is downloaded)."""
        return load_pretrained(directory, device, **overrides)

    def _check_inputs(self, images: Tensor, expressions: Sequence[str]) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a tensor (B, 3, H, W), got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must have shape (B, 3, H, W), got {tuple(images.shape)}; "
                "add a batch dimension with images[None] or convert to 3-channel RGB"
            )
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point (normalized), got {images.dtype}")
        size = self.config.image_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(
                f"this model takes {size}×{size} images, got {images.shape[-2]}×{images.shape[-1]}; "
                "resize them (provg.data.transforms.Resize) or build the model with image_size="
                f"{images.shape[-1]}"
            )
        if isinstance(expressions, str) or not isinstance(expressions, Sequence):
            raise TypeError(
                "expressions must be a list of str, one per image; got "
                + (
                    f"a single str {expressions!r}: wrap it in a list"
                    if isinstance(expressions, str)
                    else type(expressions).__name__
                )
            )
        for index, text in enumerate(expressions):
            if not isinstance(text, str):
                raise TypeError(f"expression {index} must be str, got {type(text).__name__}: {text!r}")
            if not text.strip():
                raise ValueError(f"expression {index} is empty; every image needs a referring expression")
        if len(expressions) != images.shape[0]:
            raise ValueError(
                f"got {images.shape[0]} images but {len(expressions)} expressions; "
                "pass one expression per image"
            )

    def parse(self, expressions: Sequence[str]) -> list[Decomposition]:
        """Decompositions of ``expressions`` by the configured parser, through a bounded cache."""
        missing = [text for text in dict.fromkeys(expressions) if text not in self._parsed]
        if missing:
            self._parsed.update(zip(missing, self.parser.parse_batch(missing)))
        for text in expressions:
            self._parsed.move_to_end(text)
        while len(self._parsed) > self.parse_cache_size:
            self._parsed.popitem(last=False)
        return [self._parsed[text] for text in expressions]

    def encode_text(
        self, expressions: Sequence[str], decompositions: Sequence[Decomposition] | None = None
    ) -> LanguageFeatures:
        """Parse (unless ``decompositions`` are given) and encode the expressions."""
        if decompositions is None:
            decompositions = self.parse(expressions)
        elif [d.text for d in decompositions] != list(expressions):
            raise ValueError("decompositions must be of the given expressions, in the same order")
        return self.text_encoder(list(decompositions))

    def forward(
        self,
        images: Tensor,
        expressions: Sequence[str],
        decompositions: Sequence[Decomposition] | None = None,
    ) -> GroundingOutput:
        """Ground ``expressions`` in ``images``; ``decompositions`` bypass the parser (e.g. gold ones)."""
        self._check_inputs(images, expressions)
        return self.ground(images, self.encode_text(expressions, decompositions))

    def ground(self, images: Tensor, language: LanguageFeatures) -> GroundingOutput:
        """The vision path of `forward` for already-encoded expressions: tensors only, so it compiles
        into one graph (``torch.compile(model.ground, fullgraph=True)``) with the fused PCM ops inside."""
        stages = self.backbone(
            images,
            hook=lambda index, tokens, size: self.pcm[index](tokens, language, size),
            feed_back=self.config.pcm_feeds_backbone,
        )
        maps = [tokens_to_map(tokens, *size) for tokens, size in stages]
        calibrated = self.lcd(self.cfm(maps), language.context, language.context_mask)
        low_resolution = self.mask_head.low_resolution(calibrated[0])
        foreground = (
            torch.softmax(low_resolution.detach(), dim=1)[:, 1] if self.config.rec_pool == "mask" else None
        )
        boxes = self.box_head(calibrated, foreground)
        return GroundingOutput(boxes, self.mask_head.upsample(low_resolution, tuple(images.shape[-2:])))
