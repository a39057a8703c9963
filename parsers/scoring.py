"""Scoring decompositions against gold ones: token-level precision, recall and F1 per cue type.

Scored tokens are the word tokens other than a, an, the, is, are, it, they, and, located, situated,
positioned (case-insensitive). A token takes the label of the cue that overlaps it most (ties go to
the earlier cue), or none. An expression is an exact match when all its scored tokens agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .tokens import words
from .types import Decomposition

__all__ = ["IGNORED_WORDS", "Score", "agreement", "score", "token_labels"]

IGNORED_WORDS = frozenset("a an the is are it they and located situated positioned".split())


def token_labels(decomposition: Decomposition) -> list[str]:
    """Label ("S", "A" or "O") of each scored token of the expression."""
    cues = [(c, "S") for c in decomposition.spatial] + [(c, "A") for c in decomposition.attributes]
    cues.sort(key=lambda item: item[0].start)
    labels = []
    for token in words(decomposition.text):
        if token.lower in IGNORED_WORDS:
            continue
        best, overlap = "O", 0
        for cue, label in cues:
            shared = min(cue.end, token.end) - max(cue.start, token.start)
            if shared > overlap:
                best, overlap = label, shared
        labels.append(best)
    return labels


@dataclass
class Score:
    """Micro-averaged token scores over a set of expressions."""

    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: {"tp": 0, "fp": 0, "fn": 0} for k in ("S", "A")}
    )
    exact: int = 0
    expressions: int = 0

    def precision(self, kind: str) -> float:
        c = self.counts[kind]
        return c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0

    def recall(self, kind: str) -> float:
        c = self.counts[kind]
        return c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0

    def f1(self, kind: str) -> float:
        p, r = self.precision(kind), self.recall(kind)
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def exact_match(self) -> float:
        return self.exact / self.expressions if self.expressions else 0.0

    def as_dict(self) -> dict[str, float]:
        result = {}
        for kind in ("S", "A"):
            result[f"P({kind})"] = self.precision(kind)
            result[f"R({kind})"] = self.recall(kind)
            result[f"F1({kind})"] = self.f1(kind)
        result["exact"] = self.exact_match
        return result


def score(predicted: Sequence[Decomposition], gold: Sequence[Decomposition]) -> Score:
    """Score ``predicted`` against ``gold`` (same expressions, same order)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold expressions")
    result = Score()
    for p, g in zip(predicted, gold):
        if p.text != g.text:
            raise ValueError(f"prediction is for {p.text!r}, gold for {g.text!r}")
        p_labels, g_labels = token_labels(p), token_labels(g)
        for kind in ("S", "A"):
            c = result.counts[kind]
            for pl, gl in zip(p_labels, g_labels):
                c["tp"] += pl == kind and gl == kind
                c["fp"] += pl == kind and gl != kind
                c["fn"] += pl != kind and gl == kind
        result.exact += p_labels == g_labels
        result.expressions += 1
    return result


def agreement(first: Sequence[Decomposition], second: Sequence[Decomposition]) -> float:
    """Share of scored tokens on which two strategies give the same label."""
    same = total = 0
    for a, b in zip(first, second):
        la, lb = token_labels(a), token_labels(b)
        same += sum(x == y for x, y in zip(la, lb))
        total += len(la)
    return same / total if total else 1.0
