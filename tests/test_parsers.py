"""parsers/: the Cue and Decomposition types, the registry and the naive strategy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from provg.parsers import Cue, Decomposition, get_parser, list_parsers


def test_cue_offsets_must_match_text():
    assert Cue("red", 4, 7).text == "red"
    with pytest.raises(ValueError, match="has 3 characters"):
        Cue("red", 4, 8)
    with pytest.raises(ValueError):
        Cue("", 5, 4)


def test_decomposition_validates_spans_against_text():
    text = "the red ship on the left"
    d = Decomposition.from_spans(text, spatial=[(13, 24)], attributes=[(4, 12)])
    assert d.attributes[0].text == "red ship" and d.spatial[0].text == "on the left"
    with pytest.raises(ValueError, match="not a span"):
        Decomposition(text, attributes=(Cue("blue", 4, 8),))
    with pytest.raises(ValueError, match="disjoint"):
        Decomposition.from_spans(text, spatial=[(8, 20)], attributes=[(4, 12)])
    with pytest.raises(ValueError, match="disjoint and in order"):
        Decomposition.from_spans(text, spatial=[(13, 15), (4, 7)])
    with pytest.raises(TypeError):
        Decomposition(text, spatial=("on",))


def test_marked_round_trip_and_joined_cue_texts():
    marked = "find the {A:small red ship} {S:on the left} and it is {S:near the dock}"
    d = Decomposition.from_marked(marked)
    assert d.text == "find the small red ship on the left and it is near the dock"
    assert [c.text for c in d.spatial] == ["on the left", "near the dock"]
    assert d.spatial[1].start == d.text.index("near")
    assert d.spatial_text == "on the left near the dock"
    assert d.attribute_text == "small red ship"
    assert d.to_marked() == marked
    for bad in ("{A:open", "a } b", "{A:x {S:y}}"):
        with pytest.raises(ValueError):
            Decomposition.from_marked(bad)


@pytest.mark.parametrize(
    ("text", "attributes", "spatial"),
    [
        ("The small white vehicle on the upper left", ["The small white vehicle"], ["on the upper left"]),
        (
            "The tennis court is on the right of the green and orange baseball field",
            ["The tennis court is"],
            ["on the right of the green and orange baseball field"],
        ),
        ("a red ship", ["a red ship"], []),
        ("on the left", [], ["on the left"]),
        ("", [], []),
        ("  ,.  ", [], []),
        ("vehicle-1, near  the tank!", ["vehicle-1"], ["near  the tank"]),
    ],
)
def test_naive_splits_at_first_spatial_preposition(text, attributes, spatial):
    d = get_parser("naive").parse(text)
    assert [c.text for c in d.attributes] == attributes
    assert [c.text for c in d.spatial] == spatial
    for cue in d.attributes + d.spatial:
        assert text[cue.start : cue.end] == cue.text


def test_parse_rejects_non_strings_and_batch_matches_single():
    parser = get_parser("naive")
    with pytest.raises(TypeError, match="expects str"):
        parser.parse(3)
    with pytest.raises(TypeError, match="item 1"):
        parser.parse_batch(["ok", None])
    with pytest.raises(TypeError, match="single str"):
        parser.parse_batch("a ship")
    texts = ["a ship on the left", "the tank", ""]
    assert parser.parse_batch(texts) == [parser.parse(t) for t in texts]


def test_registry_lists_and_rejects_unknown_names():
    assert "naive" in list_parsers()
    with pytest.raises(KeyError, match="unknown parser 'nope'"):
        get_parser("nope")


def test_parsers_import_without_torch():
    code = "import sys, provg.parsers; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
