"""Progressive Cross-modal Modulator (Sec. 4.2, Eq. 1–7): survey → locate → verify at one backbone stage.

- `SurveyAttention` (Eq. 1–2): visual queries attend to the context tokens L_c; the P×C gate
  modulates the features, then a 1×1 projection.
- `LocateAttention` (Eq. 3–4): a scalar saliency per position attends to the spatial-cue tokens L_s;
  the P×1 gate modulates the features, then a 1×1 projection.
- `VerifyAttention` (Eq. 5–7): the channel means, one scalar query per channel, attend to the
  attribute-cue tokens L_a; the C×1 gate modulates every position.

`PCM` composes them in any order of the letters S, L, V (Table 1; default "SLV"), or runs locate and
verify in parallel on the same input (Fig. 2b: the mean of the two outputs, our reading of "parallel
injection"), or nothing ("none"). Aliases: "global" = "S" (Fig. 2a), "sequential" = "LV" (Fig. 2c),
"progressive" = "SLV" (Fig. 2d). 1×1 convolutions on tokens are `nn.Linear` layers.

Every Proj starts as the identity, so an untrained PCM only gates the backbone features (a pretrained
backbone keeps its features at the start of fine-tuning).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from provg.ops import locate_gate, survey_gate, verify_gate
from provg.text import LanguageFeatures

from .position import sine_position_embedding

__all__ = ["PCM", "LocateAttention", "SurveyAttention", "VerifyAttention", "normalize_pcm_mode"]

PCM_ALIASES = {"global": "S", "sequential": "LV", "progressive": "SLV"}


def normalize_pcm_mode(mode: str) -> str:
    """Canonical PCM mode: an order of distinct letters from "SLV", "parallel" or "none"."""
    if not isinstance(mode, str):
        raise TypeError(f"pcm_mode must be a str, got {type(mode).__name__}")
    canonical = PCM_ALIASES.get(mode.lower(), mode)
    if canonical in ("parallel", "none"):
        return canonical
    letters = canonical.upper()
    if not letters or set(letters) - set("SLV") or len(set(letters)) != len(letters):
        raise ValueError(
            f"pcm_mode {mode!r} is not valid: use an order of distinct letters S, L, V (e.g. 'SLV', 'VLS'), "
            f"'parallel', 'none', or an alias ({', '.join(PCM_ALIASES)})"
        )
    return letters


def _identity_linear(channels: int) -> nn.Linear:
    layer = nn.Linear(channels, channels)
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class SurveyAttention(nn.Module):
    """Eq. 1–2: V^c = Proj(V ⊙ σ(Attn(W_q Conv(V), W_k L̃_c, W_v L̃_c))), L̃_c = Conv(L_c)."""

    def __init__(self, channels: int, text_width: int, heads: int = 1, position: str = "none") -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"survey attention: {channels} channels not divisible by {heads} heads")
        if position not in ("none", "sine"):
            raise ValueError(f"pcm_position must be 'none' or 'sine', got {position!r}")
        self.heads = heads
        self.position = position
        self.visual = nn.Linear(channels, channels)
        self.text = nn.Linear(text_width, channels)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.proj = _identity_linear(channels)

    def gate_inputs(
        self, x: Tensor, language: Tensor, size: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (B, P, C), keys and values (B, N_c, C) of the survey gate."""
        text = self.text(language)
        visual = self.visual(x)
        if self.position == "sine":
            if size is None:
                raise ValueError("pcm_position='sine' needs the (H, W) of the tokens")
            visual = visual + sine_position_embedding(size[0], size[1], visual.shape[-1], visual)
        return self.query(visual), self.key(text), self.value(text)

    def forward(
        self, x: Tensor, language: Tensor, mask: Tensor, size: tuple[int, int] | None = None
    ) -> Tensor:
        q, k, v = self.gate_inputs(x, language, size)
        return self.proj(survey_gate(x, q, k, v, mask, self.heads))


class _ScalarAttention(nn.Module):
    """Shared parts of locate and verify: L̃ = proj(L) ∈ R^{N×1} and the scalar w_q, w_k, w_v."""

    def __init__(self, text_width: int) -> None:
        super().__init__()
        self.text = nn.Linear(text_width, 1)
        self.w_q = nn.Parameter(torch.ones(()))
        self.w_k = nn.Parameter(torch.ones(()))
        self.w_v = nn.Parameter(torch.ones(()))

    def keys_values(self, language: Tensor) -> tuple[Tensor, Tensor]:
        projected = self.text(language).squeeze(-1)  # (B, N)
        return self.w_k * projected, self.w_v * projected


class LocateAttention(_ScalarAttention):
    """Eq. 3–4: V^s = Proj(V^c ⊙ σ(Attn(w_q s, w_k L̃_s, w_v L̃_s))), s = Conv1×1(V^c) ∈ R^{P×1}."""

    def __init__(self, channels: int, text_width: int) -> None:
        super().__init__(text_width)
        self.saliency = nn.Linear(channels, 1)
        self.proj = _identity_linear(channels)

    def query_weights(self) -> tuple[Tensor, Tensor]:
        """(w, b) with the query w_q·s = x·w + b (w_q folded into the saliency conv)."""
        return self.w_q * self.saliency.weight[0], self.w_q * self.saliency.bias[0]

    def forward(self, x: Tensor, language: Tensor, mask: Tensor) -> Tensor:
        w, b = self.query_weights()
        k, v = self.keys_values(language)
        return self.proj(locate_gate(x, w, b, k, v, mask))


class VerifyAttention(_ScalarAttention):
    """Eq. 5–7: Ṽ = V^s ⊙ σ(Attn(w_q MeanPool(V^s)ᵀ, w_k L̃_a, w_v L̃_a))ᵀ."""

    def __init__(self, channels: int, text_width: int) -> None:
        super().__init__(text_width)

    def forward(self, x: Tensor, language: Tensor, mask: Tensor) -> Tensor:
        k, v = self.keys_values(language)
        return verify_gate(x, k, v, mask, self.w_q)


class PCM(nn.Module):
    """The modulator of one stage: its submodules run in ``mode`` order (see the module docstring)."""

    def __init__(
        self, channels: int, text_width: int, mode: str = "SLV", heads: int = 1, position: str = "none"
    ) -> None:
        super().__init__()
        self.mode = normalize_pcm_mode(mode)
        letters = "LV" if self.mode == "parallel" else ("" if self.mode == "none" else self.mode)
        self.survey = SurveyAttention(channels, text_width, heads, position) if "S" in letters else None
        self.locate = LocateAttention(channels, text_width) if "L" in letters else None
        self.verify = VerifyAttention(channels, text_width) if "V" in letters else None

    def _step(
        self, letter: str, x: Tensor, language: LanguageFeatures, size: tuple[int, int] | None
    ) -> Tensor:
        if letter == "S":
            return self.survey(x, language.context, language.context_mask, size)
        if letter == "L":
            return self.locate(x, language.spatial, language.spatial_mask)
        return self.verify(x, language.attributes, language.attribute_mask)

    def forward(self, x: Tensor, language: LanguageFeatures, size: tuple[int, int] | None = None) -> Tensor:
        """Modulate tokens ``x`` (B, H·W, C); ``size`` = (H, W) is needed with position-aware queries."""
        if self.mode == "none":
            return x
        if self.mode == "parallel":
            return 0.5 * (self._step("L", x, language, size) + self._step("V", x, language, size))
        for letter in self.mode:
            x = self._step(letter, x, language, size)
        return x
