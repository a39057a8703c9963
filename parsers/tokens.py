"""Word and punctuation tokens with exact character offsets, shared by the strategies and the scorer."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .types import Cue, Decomposition

__all__ = ["WORD", "Token", "cues_from_labels", "decomposition_from_labels", "tokenize", "words"]

WORD = re.compile(r"\w+(?:[-'’]\w+)*")
_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


class Token:
    """A token of an expression: ``text == expression[start:end]``; ``lower`` is its lower-case form."""

    __slots__ = ("end", "start", "text")

    def __init__(self, text: str, start: int, end: int) -> None:
        self.text, self.start, self.end = text, start, end

    def __repr__(self) -> str:
        return f"Token({self.text!r}, {self.start}, {self.end})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and (self.text, self.start, self.end) == (
            other.text,
            other.start,
            other.end,
        )

    def __hash__(self) -> int:
        return hash((self.text, self.start, self.end))

    @property
    def lower(self) -> str:
        return self.text.lower()

    @property
    def is_word(self) -> bool:
        """True for words (also merged multi-word tokens), False for punctuation."""
        return WORD.match(self.text) is not None


def tokenize(text: str) -> list[Token]:
    """Words (letters, digits, inner hyphens and apostrophes) and single punctuation marks."""
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def words(text: str) -> list[Token]:
    """Only the word tokens of ``text``."""
    return [Token(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def cues_from_labels(text: str, tokens: list[Token], labels: Iterable[str], kind: str) -> tuple[Cue, ...]:
    """Cues covering each maximal run of consecutive tokens labelled ``kind`` ("S" or "A").

    A run ends at a token with another label; punctuation at either end of a run is left out.
    """
    cues: list[Cue] = []
    run: list[Token] = []

    def close() -> None:
        while run and not run[-1].is_word:
            run.pop()
        while run and not run[0].is_word:
            run.pop(0)
        if run:
            cues.append(Cue.from_span(text, run[0].start, run[-1].end))
        run.clear()

    for token, label in zip(tokens, labels):
        if label == kind:
            run.append(token)
        else:
            close()
    close()
    return tuple(cues)


def decomposition_from_labels(text: str, tokens: list[Token], labels: list[str]) -> Decomposition:
    """The `Decomposition` whose cues are the runs of "S" and "A" labels over ``tokens``."""
    return Decomposition(
        text,
        spatial=cues_from_labels(text, tokens, labels, "S"),
        attributes=cues_from_labels(text, tokens, labels, "A"),
    )
