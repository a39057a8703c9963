"""The ProVG model: registry, input validation, every ablation switch, and the paper configuration."""

from __future__ import annotations

import pytest
import torch

import provg
from provg.models import ProVGConfig
from provg.parsers import Decomposition

TEXTS = ["the small red ship on the upper left", "a storage tank"]


@pytest.fixture(scope="module")
def tiny():
    return provg.create_model("provg_tiny").eval()


def test_registry():
    assert {"provg_tiny", "provg_swin_b", "provg_swin_t"} <= set(provg.list_models())
    with pytest.raises(KeyError, match="unknown model 'provg_huge'"):
        provg.create_model("provg_huge")
    with pytest.raises(TypeError, match=r"unknown ProVG config option\(s\) \['pcm_order'\]"):
        provg.create_model("provg_tiny", pcm_order="SLV")
    with pytest.raises(ValueError, match="pcm_mode"):
        ProVGConfig(pcm_mode="SLX")


def test_output_shapes_and_ranges(tiny):
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = tiny(images, TEXTS)
    assert out.boxes.shape == (2, 4) and ((out.boxes > 0) & (out.boxes < 1)).all()
    assert out.mask_logits.shape == (2, 2, 128, 128)
    assert out.masks().shape == (2, 128, 128) and out.masks().dtype == torch.bool
    cx, cy, w, h = out.boxes[0].tolist()
    assert out.boxes_xyxy()[0].tolist() == pytest.approx(
        [(cx - w / 2) * 128, (cy - h / 2) * 128, (cx + w / 2) * 128, (cy + h / 2) * 128]
    )


@pytest.mark.parametrize(
    ("images", "texts", "error", "message"),
    [
        (torch.randn(3, 128, 128), TEXTS[:1], ValueError, r"\(B, 3, H, W\)"),
        (torch.randn(1, 1, 128, 128), TEXTS[:1], ValueError, "3-channel"),
        (torch.zeros(1, 3, 128, 128, dtype=torch.uint8), TEXTS[:1], TypeError, "floating point"),
        (torch.randn(1, 3, 96, 128), TEXTS[:1], ValueError, "takes 128×128 images, got 96×128"),
        (torch.randn(1, 3, 128, 128), TEXTS[0], TypeError, "wrap it in a list"),
        (torch.randn(2, 3, 128, 128), ["ok", 7], TypeError, "expression 1 must be str"),
        (torch.randn(2, 3, 128, 128), ["ok", "  "], ValueError, "expression 1 is empty"),
        (torch.randn(2, 3, 128, 128), TEXTS[:1], ValueError, "2 images but 1 expressions"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny, images, texts, error, message):
    with pytest.raises(error, match=message):
        tiny(images, texts)


def test_gold_decompositions_bypass_the_parser(tiny):
    images = torch.randn(1, 3, 128, 128)
    # Deliberately swapped cues, so that they differ from what any parser returns.
    gold = [Decomposition.from_marked("the {S:small red ship} {A:on the upper left}")]
    parsed = tiny.parser.parse_batch(TEXTS[:1])
    assert gold != parsed
    with torch.no_grad():
        a = tiny(images, TEXTS[:1], decompositions=gold)
        b = tiny(images, TEXTS[:1])
    assert not torch.equal(a.mask_logits, b.mask_logits)
    with pytest.raises(ValueError, match="decompositions must be of the given expressions"):
        tiny(images, ["another text"], decompositions=gold)


@pytest.mark.parametrize(
    "overrides",
    [{"pcm_mode": mode} for mode in ("SLV", "SVL", "LVS", "VLS", "parallel", "sequential", "global", "none")]
    + [
        {"cfm": False},
        {"cfm_cascade_top_down": True, "cfm_cascade_bottom_up": True},
        {"lcm": False},
        {"fa": False},
        {"rec_pool": "mean"},
        {"rec_pool": "max"},
        {"text_mode": "shared"},
        {"pcm_feeds_backbone": False},
        {"pcm_heads": 4},
        {"rep_identity": True},
        {"cfm_blocks": 0},
        {"pcm_position": "sine"},
    ],
)
def test_every_variant_runs_and_differs_where_it_should(overrides):
    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", image_size=64, **overrides).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images, TEXTS)
    assert torch.isfinite(out.boxes).all() and torch.isfinite(out.mask_logits).all()
    if overrides.get("pcm_mode") == "none":
        assert not any(p.survey or p.locate or p.verify for p in model.pcm)
    if overrides.get("cfm") is False:
        assert not hasattr(model.cfm, "top_down")


def test_expressions_are_parsed_once(tiny, monkeypatch):
    calls = []
    original = tiny.parser.parse_batch
    monkeypatch.setattr(
        tiny.parser, "parse_batch", lambda texts: calls.append(list(texts)) or original(texts)
    )
    first = tiny.parse(["a red car", "a blue ship on the left", "a red car"])
    again = tiny.parse(["a blue ship on the left", "a tank beside the dam"])
    assert calls == [["a red car", "a blue ship on the left"], ["a tank beside the dam"]]
    assert first[0] is first[2] and again[0] is first[1]
    assert first[1] == original(["a blue ship on the left"])[0]


def test_language_changes_the_prediction(tiny):
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = tiny(images, ["the red ship on the left"])
        b = tiny(images, ["the large white storage tank at the bottom right"])
    assert not torch.allclose(a.mask_logits, b.mask_logits)


@pytest.mark.slow
def test_paper_configuration_forward():
    model = provg.create_model("provg_swin_b").eval()
    assert model.backbone.channels == [128, 256, 512, 1024]
    assert model.config.image_size == 480 and model.config.cfm_width == 256 and model.config.cfm_blocks == 3
    with torch.no_grad():
        out = model(torch.randn(1, 3, 480, 480), TEXTS[:1])
    assert out.boxes.shape == (1, 4) and out.mask_logits.shape == (1, 2, 480, 480)
    assert torch.isfinite(out.mask_logits).all()
