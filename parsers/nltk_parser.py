"""The `nltk` strategy: lexicon tagging and a chunk grammar, with no downloaded NLTK data.

1. Tokens with character offsets (a regular expression; no punkt), and multi-word category names
   ("ground track field") merged into one token with NLTK's `MWETokenizer`.
2. Tags from a lexicon of remote-sensing vocabulary (`parsers.lexicon`) with a regular-expression
   tagger as backoff (`UnigramTagger` → `RegexpTagger` → `DefaultTagger`). With
   ``tagger="perceptron"`` NLTK's averaged-perceptron tagger, when its data is installed, tags the
   words the lexicon does not know.
3. A `RegexpParser` grammar (`GRAMMAR`) chunks locations ("the upper left corner"), noun phrases
   (coordinated modifiers included: "green and orange"), spatial and relational prepositional phrases
   with their landmark ("next to a white van"), and spatial relative clauses ("that are on the far
   right").
4. A left-to-right pass over the chunks labels them: the first noun phrase is the target (its words
   are attribute cues, its ordinals and positional superlatives spatial cues); a spatial phrase is a
   spatial cue together with what describes its landmark (`of` chains, coordinated landmarks "and a
   parking lot", relative clauses, "with" phrases); predicates, "with" phrases and appositive
   descriptions of the target are attribute cues.
"""

from __future__ import annotations

import functools

from nltk.chunk import RegexpParser
from nltk.tag import DefaultTagger, RegexpTagger, UnigramTagger
from nltk.tokenize import MWETokenizer
from nltk.tree import Tree

from . import lexicon as lx
from .registry import ExpressionParser, register_parser
from .tokens import Token, decomposition_from_labels, tokenize
from .types import Decomposition

__all__ = ["GRAMMAR", "NltkParser", "perceptron_available"]

_JOIN = "\u2063"  # joins the words of a merged name (an invisible separator)
_CATEGORY_SET = frozenset(lx.CATEGORY_PHRASES)

# <MOD> stands for any tag that can modify a noun (expanded below).
_MODIFIERS = "JJ|JJS|CD|VBN|VBG|ST|ADJT|NN|CAT|SPJ|ORD|SUP|RB|CLR"
GRAMMAR = r"""
LOC: {<DT>?<SPJ|SUP|JJ|CD>*<SPN>+<NN|CAT>*}
NP:  {<DT|CD|PRPS>*<RB>?(<JJ|CLR|JJS|VBN|ST|ADJT|CD><AND>)*<MOD>*<CAT|NN>|<DT><ORD|SUP>}
PP:  {<RB>?<SP|TO>+<LOC|NP>|<RB>?<ADJT|RL><TO|SP|BY>+<LOC|NP>|<RB>?<RL><LOC|NP>}
RELCL: {<WDT><COP>*<PP|LOC>}
""".replace("<MOD>", f"<{_MODIFIERS}>")

_LEXICON: dict[str, str] = {}
for _tag, _words in (
    ("CAT", lx.CATEGORY_WORDS),
    ("SPN", lx.SPATIAL_NOUNS),
    ("SPJ", lx.SPATIAL_ADJECTIVES - lx.SPATIAL_NOUNS),
    ("SUP", lx.SPATIAL_SUPERLATIVES),
    ("ORD", lx.ORDINALS),
    ("SP", lx.SPATIAL_PREPOSITIONS),
    (
        "RL",
        lx.RELATION_LEADS
        - lx.SPATIAL_NOUNS
        - {"next", "adjacent", "close", "closer", "nearby", "parallel", "perpendicular"},
    ),
    ("ADJT", {"next", "adjacent", "close", "closer", "nearby"}),
    ("COP", lx.COPULAS),
    ("VBI", lx.IMPERATIVES),
    ("APV", lx.APPEARANCE_VERBS - {"covered", "filled", "painted"}),
    ("ST", lx.STATES - {"partially", "partly", "under"}),
    ("CLR", lx.COLOURS),
    ("DT", lx.DETERMINERS - {"that", "its", "their"}),
    ("PRP", {"it", "they", "them"}),
    ("PRPS", {"its", "their"}),
    ("WDT", {"that", "which", "who", "where"}),
):
    for _word in _words:
        _LEXICON.setdefault(_word, _tag)
_LEXICON.update(
    {
        "of": "OF",
        "to": "TO",
        "with": "WITH",
        "and": "AND",
        "or": "AND",
        "but": "AND",
        "than": "THAN",
        "for": "FOR",
        "partially": "RB",
        "partly": "RB",
        "under": "SP",
        "as": "AS",
        "like": "AS",
        "one": "CD",
        "two": "CD",
        "three": "CD",
        "four": "CD",
        "five": "CD",
        "six": "CD",
        "seven": "CD",
        "eight": "CD",
        "nine": "CD",
        "ten": "CD",
        "several": "CD",
        "many": "CD",
        "both": "CD",
        "few": "CD",
        "multiple": "CD",
        "pair": "NN",
        "group": "NN",
        "row": "NN",
        "cluster": "NN",
        "image": "NN",
        "picture": "NN",
        "photo": "NN",
        "scene": "NN",
        "largest": "JJS",
        "smallest": "JJS",
        "biggest": "JJS",
        "longest": "JJS",
        "shortest": "JJS",
        "widest": "JJS",
        "tallest": "JJS",
        "brightest": "JJS",
        "darkest": "JJS",
        "also": "RB",
        "directly": "RB",
        "just": "RB",
        "slightly": "RB",
        "very": "RB",
        "clearly": "RB",
        "mostly": "RB",
        "predominantly": "RB",
        "almost": "RB",
        "evenly": "RB",
    }
)

_SUFFIX_PATTERNS = [
    (r"^\d+$", "CD"),
    (r".*ly$", "RB"),
    (r".*ing$", "VBG"),
    (r".*ed$", "VBN"),
    (r".*(est)$", "JJ"),
    (r".*(ous|ful|ive|able|ible|al|ar|ic|ish|less|y)$", "JJ"),
    (r"^[^\w]+$", "PUNCT"),
]

# Penn Treebank tags (from the perceptron tagger) mapped to the grammar's tags.
_PENN = {
    "JJ": "JJ",
    "JJR": "JJ",
    "JJS": "JJS",
    "RB": "RB",
    "RBR": "RB",
    "RBS": "RB",
    "CD": "CD",
    "VBN": "VBN",
    "VBG": "VBG",
    "IN": "SP",
    "DT": "DT",
    "PRP": "PRP",
    "PRP$": "PRPS",
    "WDT": "WDT",
    "CC": "AND",
}


def perceptron_available() -> bool:
    """True when NLTK's averaged-perceptron tagger data is installed."""
    from nltk.data import find

    try:
        find("taggers/averaged_perceptron_tagger_eng/")
    except LookupError:
        return False
    return True


@functools.cache
def _perceptron():
    from nltk.tag.perceptron import PerceptronTagger

    return PerceptronTagger()


def _lexicon_tagger() -> UnigramTagger:
    return UnigramTagger(model=_LEXICON, backoff=RegexpTagger(_SUFFIX_PATTERNS, backoff=DefaultTagger("NN")))


@register_parser("nltk")
class NltkParser(ExpressionParser):
    """Chunk-grammar decomposition with NLTK and no downloaded data.

    Args:
        tagger: "lexicon" (default: lexicon + regular-expression backoff) or "perceptron" (NLTK's
            averaged-perceptron tagger for words outside the lexicon; needs its data installed).
        cache_size: tag sequences whose chunk trees are memoized (expressions of one dataset repeat
            a few dozen patterns); 0 disables.
    """

    def __init__(self, tagger: str = "lexicon", cache_size: int = 4096) -> None:
        if tagger not in ("lexicon", "perceptron"):
            raise ValueError(f"nltk parser: tagger must be 'lexicon' or 'perceptron', got {tagger!r}")
        if tagger == "perceptron" and not perceptron_available():
            raise LookupError(
                "nltk parser: tagger='perceptron' needs NLTK's averaged_perceptron_tagger_eng data "
                "(nltk.download('averaged_perceptron_tagger_eng')); use tagger='lexicon' without it"
            )
        self.tagger_name = tagger
        self._lexicon = _lexicon_tagger()
        # The lexicon and regular-expression taggers are context-free, so a word's tag can be memoized.
        self._tag_word = functools.lru_cache(maxsize=65536)(lambda word: self._lexicon.tag([word])[0][1])
        self._mwe = MWETokenizer(list(lx.CATEGORY_PHRASES) + list(lx.APPEARANCE_PHRASES), separator=_JOIN)
        self._chunker = RegexpParser(GRAMMAR)
        self._chunk = (
            functools.lru_cache(maxsize=cache_size)(self._chunk_tags) if cache_size else self._chunk_tags
        )

    # -- tokens and tags ------------------------------------------------------------------------
    def _merge(self, text: str, tokens: list[Token]) -> tuple[list[Token], dict[int, str]]:
        """Tokens with multi-word names merged, and the tags of the merged ones (by index)."""
        merged = self._mwe.tokenize([t.lower for t in tokens])
        out, tags, i = [], {}, 0
        for piece in merged:
            n = piece.count(_JOIN) + 1
            start, end = tokens[i].start, tokens[i + n - 1].end
            if n > 1:
                tags[len(out)] = "CAT" if tuple(piece.split(_JOIN)) in _CATEGORY_SET else "ST"
            out.append(Token(text[start:end], start, end))
            i += n
        return out, tags

    def _tags(self, tokens: list[Token], merged: dict[int, str]) -> list[str]:
        lowered = [t.lower for t in tokens]
        tags = [self._tag_word(word) for word in lowered]
        for i, token in enumerate(tokens):
            if i in merged:
                tags[i] = merged[i]
            elif not token.is_word:
                tags[i] = "PUNCT"
        if self.tagger_name == "perceptron":
            penn = _perceptron().tag([t.text for t in tokens])
            for i, (word, (_, tag)) in enumerate(zip(lowered, penn)):
                if word not in _LEXICON and i not in merged and tags[i] != "PUNCT":
                    tags[i] = _PENN.get(tag, "NN" if tag.startswith("NN") else tags[i])
        return tags

    # -- chunking ------------------------------------------------------------------------------
    def _chunk_tags(self, tags: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
        """Top-level units (label, first index, end index) of the chunked tag sequence."""
        tree = self._chunker.parse([(str(i), tag) for i, tag in enumerate(tags)])
        units = []
        for child in tree:
            if isinstance(child, Tree):
                leaves = child.leaves()
                units.append((child.label(), int(leaves[0][0]), int(leaves[-1][0]) + 1))
            else:
                units.append((child[1], int(child[0]), int(child[0]) + 1))
        return tuple(units)

    # -- labelling -----------------------------------------------------------------------------
    def _parse(self, text: str) -> Decomposition:
        tokens, merged = self._merge(text, tokenize(text))
        if not tokens:
            return Decomposition(text)
        tags = self._tags(tokens, merged)
        units = self._chunk(tuple(tags))
        labels = _Labeller(units, tags, tokens).run()
        return decomposition_from_labels(text, tokens, labels)


_LANDMARK = {"NP", "LOC"}
_PREDICATE = {"NP", "CLR", "JJ", "JJS", "ST", "RB", "VBN"}
_CLAUSE_BREAKS = frozenset(",;:.!?()")

Unit = tuple[str, int, int]  # chunk label (or tag), first token, end token


class _Labeller:
    """One left-to-right pass over the chunk units of an expression (see the module docstring)."""

    def __init__(self, units: tuple[Unit, ...], tags: list[str], tokens: list[Token]) -> None:
        self.units, self.tags, self.tokens = units, tags, tokens
        self.labels = ["O"] * len(tags)

    def kind(self, j: int) -> str:
        return self.units[j][0] if j < len(self.units) else ""

    def fill(self, j: int, label: str) -> None:
        _, first, end = self.units[j]
        for k in range(first, end):
            self.labels[k] = label

    def word(self, j: int) -> str:
        return self.tokens[self.units[j][1]].lower

    def starts_clause(self, j: int) -> bool:
        """The noun phrase at ``j`` is the subject of a new clause ("and the pool is ...")."""
        return self.kind(j + 1) == "COP"

    def target(self, j: int) -> None:
        """The target noun phrase: ordinals and positional superlatives are spatial, the rest attributes."""
        _, first, end = self.units[j]
        for k in range(first, end):
            tag = self.tags[k]
            if tag in ("ORD", "SUP"):
                self.labels[k] = "S"
            elif tag in ("DT", "PRPS") and (k == first or self.labels[k - 1] == "O"):
                self.labels[k] = "O"
            else:
                self.labels[k] = "A"

    def continue_coordination(self, j: int, label: str) -> int:
        """Extend ``label`` over "and NP" coordinations at ``j`` that do not open a clause."""
        while self.kind(j) == "AND" and self.kind(j + 1) == "NP" and not self.starts_clause(j + 1):
            self.fill(j, label)
            self.fill(j + 1, label)
            j += 2
        return j

    def spatial_phrase(self, j: int, opening: int = 1) -> int:
        """Label the spatial phrase whose first ``opening`` units start at ``j``, with everything that
        describes its landmark; return the index of the first unit after it."""
        for k in range(j, j + opening):
            self.fill(k, "S")
        return self.extend_spatial(j + opening)

    def extend_spatial(self, j: int) -> int:
        """Extend the spatial phrase that ends before unit ``j`` over its landmark's modifiers."""
        while j < len(self.units):
            kind, previous = self.kind(j), self.kind(j - 1)
            if kind == "OF" and self.kind(j + 1) in _LANDMARK | {"PP"}:
                self.fill(j, "S")
                self.fill(j + 1, "S")
                j += 2
            elif kind == "PP" and previous in _LANDMARK | {"PP", "RELCL"}:
                self.fill(j, "S")  # "at the harbor on the right", "in the row of cars along the road"
                j += 1
            elif (
                kind == "NP"
                and previous in ("LOC", "PP")
                and self.tags[self.units[j - 1][2] - 1] == "SPN"
                and not self.starts_clause(j)
            ):
                self.fill(j, "S")  # "on the lower right a ground track field" (a dropped "of")
                j += 1
            elif kind == "WITH" and self.kind(j + 1) == "NP":
                self.fill(j, "S")  # the landmark's own appearance: "the pool with blue water"
                self.fill(j + 1, "S")
                j += 2
            elif kind == "AND" and self.kind(j + 1) == "NP" and not self.starts_clause(j + 1):
                self.fill(j, "S")  # coordinated landmarks: "of a lake and a white building"
                self.fill(j + 1, "S")
                j += 2
            elif kind == "RELCL":
                self.fill(j, "S")  # "some pools that are on the far right" describes the landmark
                j += 1
            else:
                break
        return j

    def appearance_pp(self, j: int) -> bool:
        """A prepositional phrase that belongs to the target's description: an agent after a
        participle ("hidden by trees") or one about the target's own parts ("on its tail")."""
        _, first, end = self.units[j]
        if self.tokens[first].lower == "by" and j and self.kind(j - 1) in ("ST", "VBN"):
            return True
        return any(self.tags[k] == "PRPS" for k in range(first, end))

    def run(self) -> list[str]:
        n = len(self.units)
        target_done = False
        mode = "O"  # what the current clause adds to: "S", "A" or nothing
        clause_start = True
        i = 0
        while i < n:
            kind, first, _ = self.units[i]
            if kind == "PUNCT" and self.tokens[first].text in _CLAUSE_BREAKS:
                clause_start, mode = True, "O"
                i += 1
                continue
            if kind == "COP":
                if target_done and self.kind(i + 1) in _PREDICATE:
                    i = self.predicate(i + 1)  # "is white", "is a red sedan", "is parked"
                    mode = "A"
                    continue
                i += 1
                continue
            if kind == "RELCL":
                # "the ship that is on the top": pronoun and copula stay outside, the position is spatial.
                _, first, end = self.units[i]
                k = first
                while k < end and self.tags[k] in ("WDT", "COP"):
                    k += 1
                for position in range(k, end):
                    self.labels[position] = "S"
                i = self.extend_spatial(i + 1)
                mode, clause_start = "S", False
                continue
            if kind == "WDT":
                i += 1  # "which has a red roof": pronoun and copula stay outside the cues
                while self.kind(i) == "COP":
                    i += 1
                continue
            if kind in ("VBI", "PRP", "FOR", "AS"):
                i += 1
                clause_start = False
                continue
            if kind in ("ADJT", "RL") and self.kind(i + 1) not in ("PP", "NP", "LOC", "TO", "SP"):
                if target_done and mode == "A":
                    self.fill(i, "A")
                i += 1
                continue
            if kind in ("PP", "LOC", "ADJT", "RL") or (kind in ("SUP", "ORD") and target_done):
                if kind == "PP" and mode == "A" and self.appearance_pp(i):
                    self.fill(i, "A")
                    i += 1
                    continue
                i = self.spatial_phrase(i)
                mode, clause_start = "S", False
                continue
            if kind == "NP":
                if not target_done:
                    self.target(i)
                    target_done, mode, clause_start = True, "A", False
                    i = self.after_target(i)
                    continue
                if clause_start or mode == "A":
                    self.fill(i, "A")  # an appositive or predicate describing the target
                    mode = "A"
                i += 1
                clause_start = False
                continue
            if kind == "WITH" and self.kind(i + 1) == "NP":
                label = "S" if mode == "S" else "A"
                self.fill(i, label)
                self.fill(i + 1, label)
                i = self.continue_coordination(i + 2, label)
                continue
            if kind == "APV":
                if clause_start:
                    self.fill(i, "A")  # a stand-alone description: ", featuring a brown diamond"
                i += 1
                while self.kind(i) in ("NP", "AS", "JJ", "CLR", "RB", "WITH"):
                    self.fill(i, "O" if self.kind(i) == "AS" else "A")
                    i += 1
                i = self.continue_coordination(i, "A")
                mode, clause_start = "A", False
                continue
            if kind in ("ST", "JJ", "CLR", "RB", "VBN", "VBG", "JJS", "CD", "THAN"):
                if target_done and (mode == "A" or clause_start):
                    self.fill(i, "A")
                    mode = "A"
                elif not target_done and kind in ("JJ", "CLR", "JJS", "CD"):
                    self.fill(i, "A")
                i += 1
                clause_start = False
                continue
            i += 1
            clause_start = False
        return self.labels

    def after_target(self, i: int) -> int:
        """What follows the target noun phrase at ``i``: a group ("of some pools") after an ordinal or
        superlative is spatial; the members of a collective noun ("a cluster of tanks") are the target."""
        if self.kind(i + 1) == "OF" and self.kind(i + 2) == "NP":
            _, first, end = self.units[i]
            if any(self.tags[k] in ("ORD", "SUP") for k in range(first, end)):
                return self.spatial_phrase(i + 1, opening=2)
            head = self.tokens[end - 1].lower
            if head in lx.COLLECTIVE_NOUNS:
                self.fill(i + 1, "A")
                self.fill(i + 2, "A")
                return i + 3
        return i + 1

    def predicate(self, j: int) -> int:
        while self.kind(j) in _PREDICATE | {"WITH", "AND"}:
            if self.kind(j) == "AND" and self.kind(j + 1) not in _PREDICATE:
                break
            self.fill(j, "A")
            j += 1
        return j
