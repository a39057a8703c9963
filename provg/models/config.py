"""`ProVGConfig`: every architectural choice of ProVG, including the ablations of Tables 1 and 4.

Named configurations (``provg_tiny``, ``provg_swin_b``, …) live in `provg.models.registry`; any field
can be overridden by keyword (``create_model("provg_swin_b", pcm_mode="VLS", fa=False)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from provg.text import DEFAULT_TEXT_ENCODER

from .pcm import normalize_pcm_mode

__all__ = ["ProVGConfig"]


@dataclass
class ProVGConfig:
    """Architecture of a ProVG model.

    Backbone:
        backbone: timm model name; backbone_kwargs: passed to ``timm.create_model``;
        backbone_pretrained_file: local checkpoint of the backbone (hub downloads are never used).
        image_size: the network input side (the paper: 480).
    Language:
        parser / parser_options: expression decomposition strategy (`provg.parsers.get_parser`).
        text_encoder: Hugging Face model name or local path; text_mode: "separate" | "shared";
        max_context_tokens, max_cue_tokens: token limits; text_trainable: fine-tune the encoder;
        text_cache_size: features of this many decompositions kept when the encoder is frozen.
    PCM (Table 1): pcm_mode: an order of "S", "L", "V" (default "SLV"), "parallel", "none",
        or an alias "global" / "sequential" / "progressive"; pcm_heads: survey-attention heads;
        pcm_feeds_backbone: Ṽ_i feeds stage i+1 (LAVT-style) rather than only the decoder;
        pcm_position: "none" (as written) or "sine": survey queries W_q(Conv(V) + PE), see
        `provg.models.position`.
    CFM (Table 4): cfm: on/off; cfm_width; cfm_blocks: RepVGG blocks per FusionBlock;
        cfm_cascade_top_down / cfm_cascade_bottom_up; rep_identity: RepVGG identity branch.
    LCD and heads (Table 4): decoder_width; lcm: on/off; fa: stage weighting of the box head on/off;
        rec_pool: "mask" | "attention" | "mean" | "max" (see `provg.models.heads`); rec_width: C of the
        stacked stage vectors.
    """

    backbone: str = "swin_base_patch4_window12_384"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_pretrained_file: str | None = None
    image_size: int = 480

    parser: str = "spacy"
    parser_options: dict[str, Any] = field(default_factory=dict)
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_mode: str = "separate"
    max_context_tokens: int = 40
    max_cue_tokens: int = 20
    text_trainable: bool = True
    text_cache_size: int = 0

    pcm_mode: str = "SLV"
    pcm_heads: int = 1
    pcm_feeds_backbone: bool = True
    pcm_position: str = "none"

    cfm: bool = True
    cfm_width: int = 256
    cfm_blocks: int = 3
    cfm_cascade_top_down: bool = False
    cfm_cascade_bottom_up: bool = False
    rep_identity: bool = False

    decoder_width: int = 256
    lcm: bool = True
    fa: bool = True
    rec_pool: str = "mask"
    rec_width: int = 256

    def __post_init__(self) -> None:
        self.pcm_mode = normalize_pcm_mode(self.pcm_mode)
        if self.text_mode not in ("separate", "shared"):
            raise ValueError(f"text_mode must be 'separate' or 'shared', got {self.text_mode!r}")
        for name in ("image_size", "cfm_width", "decoder_width", "rec_width", "pcm_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.image_size < 32:
            raise ValueError(
                f"image_size must be at least 32 (4 stages down to stride 32), got {self.image_size}"
            )
        if self.cfm_blocks < 0:
            raise ValueError(f"cfm_blocks must be >= 0, got {self.cfm_blocks}")

    def replace(self, **overrides: Any) -> ProVGConfig:
        """A copy with ``overrides`` applied; unknown names raise with the list of valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown ProVG config option(s) {unknown}; valid options: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProVGConfig:
        return cls().replace(**values)
