"""The `naive` strategy: attributes are the words before the first spatial preposition, spatial the rest.

It is the floor every real strategy must beat: "The small white vehicle on the upper left" gives
A = "The small white vehicle", S = "on the upper left"; an expression with no spatial preposition is
all attributes.
"""

from __future__ import annotations

import re

from .registry import ExpressionParser, register_parser
from .types import Cue, Decomposition

__all__ = ["SPATIAL_PREPOSITIONS", "NaiveParser"]

SPATIAL_PREPOSITIONS = frozenset(
    [
        "above",
        "across",
        "against",
        "along",
        "alongside",
        "among",
        "amongst",
        "around",
        "at",
        "atop",
        "behind",
        "below",
        "beneath",
        "beside",
        "besides",
        "between",
        "beyond",
        "by",
        "from",
        "in",
        "inside",
        "into",
        "near",
        "nearby",
        "nearest",
        "next",
        "off",
        "on",
        "onto",
        "opposite",
        "outside",
        "over",
        "past",
        "through",
        "to",
        "toward",
        "towards",
        "under",
        "underneath",
        "upon",
        "within",
    ]
)

_WORD = re.compile(r"\w+(?:[-']\w+)*")


@register_parser("naive")
class NaiveParser(ExpressionParser):
    """Split at the first spatial preposition (see `SPATIAL_PREPOSITIONS`); no options."""

    def _parse(self, text: str) -> Decomposition:
        words = list(_WORD.finditer(text))
        split = next(
            (i for i, w in enumerate(words) if w.group().lower() in SPATIAL_PREPOSITIONS), len(words)
        )
        attributes = _span(text, words[:split])
        spatial = _span(text, words[split:])
        return Decomposition(text, spatial=spatial, attributes=attributes)


def _span(text: str, words: list[re.Match]) -> tuple[Cue, ...]:
    if not words:
        return ()
    return (Cue.from_span(text, words[0].start(), words[-1].end()),)
