"""Text encoder: separate and shared modes against direct Hugging Face computation, empty cues, and
truncation."""

from __future__ import annotations

import pytest
import torch

from provg.parsers import Decomposition
from provg.text import TextEncoder

DECOMPOSITIONS = [
    Decomposition.from_marked("The {A:small white vehicle} {S:on the upper left}"),
    Decomposition.from_marked("find the {A:tennis court} {S:on the left} and it is {S:near a parking lot}"),
    Decomposition.from_marked("a {A:red ship}"),  # no spatial cue
]


def _hidden(encoder: TextEncoder, text: str) -> tuple[torch.Tensor, list[tuple[int, int]], list[int]]:
    batch = encoder.tokenizer(
        [text], return_tensors="pt", return_offsets_mapping=True, return_special_tokens_mask=True
    )
    with torch.no_grad():
        hidden = encoder.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state[0]
    return hidden, batch["offset_mapping"][0].tolist(), batch["special_tokens_mask"][0].tolist()


def test_separate_mode_matches_direct_encoding(text_encoder):
    features = text_encoder(DECOMPOSITIONS)
    longest = max(len(text_encoder.tokenizer(d.text)["input_ids"]) for d in DECOMPOSITIONS)
    assert features.context.shape == (3, longest, text_encoder.width)  # padded to the longest
    assert features.spatial.shape == (3, 7, text_encoder.width)  # "on the left near a parking lot"
    for row, d in enumerate(DECOMPOSITIONS):
        hidden, _, _ = _hidden(text_encoder, d.text)
        n = hidden.shape[0]
        assert features.context_mask[row].sum() == n
        torch.testing.assert_close(features.context[row, :n], hidden, rtol=1e-4, atol=1e-5)
        for cue_text, values, mask in (
            (d.spatial_text, features.spatial, features.spatial_mask),
            (d.attribute_text, features.attributes, features.attribute_mask),
        ):
            if not cue_text:
                assert not mask[row].any()
                continue
            cue_hidden, _, special = _hidden(text_encoder, cue_text)
            inner = cue_hidden[[i for i, s in enumerate(special) if not s]]  # drop [CLS], [SEP]
            assert mask[row].tolist() == [True] * len(inner) + [False] * (mask.shape[1] - len(inner))
            torch.testing.assert_close(values[row, : len(inner)], inner, rtol=1e-4, atol=1e-5)


def test_shared_mode_gathers_the_cue_tokens_of_one_pass():
    encoder = TextEncoder(mode="shared", trainable=False)
    features = encoder(DECOMPOSITIONS)
    for row, d in enumerate(DECOMPOSITIONS):
        hidden, offsets, special = _hidden(encoder, d.text)
        for cues, values, mask in (
            (d.spatial, features.spatial, features.spatial_mask),
            (d.attributes, features.attributes, features.attribute_mask),
        ):
            picked = [
                i
                for i, ((s, e), sp) in enumerate(zip(offsets, special))
                if not sp and any(s < c.end and e > c.start for c in cues)
            ]
            assert int(mask[row].sum()) == len(picked)
            if picked:
                torch.testing.assert_close(values[row, : len(picked)], hidden[picked], rtol=1e-4, atol=1e-5)
    # "red ship" is two tokens, "on the upper left" four.
    assert features.attribute_mask[2].sum() == 2 and features.spatial_mask[0].sum() == 4
    assert not features.spatial_mask[2].any()


def test_empty_cues_give_one_all_masked_slot(text_encoder):
    features = text_encoder([Decomposition("ship"), Decomposition("tank")])
    assert features.spatial.shape[:2] == (2, 1) and not features.spatial_mask.any()
    shared = TextEncoder(mode="shared", trainable=False)([Decomposition("ship")])
    assert shared.attributes.shape[:2] == (1, 1) and not shared.attribute_mask.any()


def test_cue_limit_truncates_long_cues(text_encoder):
    many = Decomposition.from_marked("the {A:" + " ".join(["red"] * 30) + " ship}")
    features = text_encoder([many])
    assert features.attributes.shape[1] == 20 and features.attribute_mask.all()


def test_long_expression_is_truncated_with_a_warning(text_encoder):
    long = Decomposition.from_marked("the {A:ship} " + "{S:on the left of the tank} and " * 8 + "it")
    with pytest.warns(UserWarning, match="truncated to max_context_tokens=40"):
        features = text_encoder([long])
    assert features.context.shape[1] == 40 and features.context_mask.all()


def test_frozen_encoder_has_no_gradients_and_stays_in_eval(text_encoder):
    text_encoder.train()
    assert not text_encoder.model.training
    assert not any(p.requires_grad for p in text_encoder.parameters())


def test_bad_options():
    with pytest.raises(ValueError, match="mode"):
        TextEncoder(mode="joint")
    with pytest.raises(OSError, match="could not load text encoder 'no-such-model-anywhere' offline"):
        TextEncoder("no-such-model-anywhere")


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_feature_cache_returns_the_uncached_features(mode):
    plain = TextEncoder(mode=mode, trainable=False)
    cached = TextEncoder(mode=mode, trainable=False, cache_size=2)
    batch = [DECOMPOSITIONS[0], DECOMPOSITIONS[2], DECOMPOSITIONS[0]]
    expected = plain(batch)
    cached(DECOMPOSITIONS[1:])  # fills the cache with other padding than `batch` has
    for _ in range(2):
        got = cached(batch)
        masks = {"context": "context_mask", "spatial": "spatial_mask", "attributes": "attribute_mask"}
        for name, mask_name in masks.items():
            want_mask, got_mask = getattr(expected, mask_name), getattr(got, mask_name)
            assert torch.equal(got_mask, want_mask[:, : got_mask.shape[1]])
            assert not want_mask[:, got_mask.shape[1] :].any()
            torch.testing.assert_close(
                getattr(got, name)[got_mask], getattr(expected, name)[want_mask], rtol=1e-5, atol=1e-5
            )
    assert len(cached._cache) == 2 and DECOMPOSITIONS[1] not in cached._cache  # least recently used dropped
    cached.load_state_dict(cached.state_dict())
    assert len(cached._cache) == 0
