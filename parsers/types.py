"""The values every expression parser returns: character-exact cues and a decomposition.

ProVG (Sec. 4.1) splits a referring expression into spatial cues (where the target is) and attribute
cues (what it looks like); the whole expression is the global context. A `Cue` is a span of the
original text, so the text is never altered and every cue can be traced back to the characters it
came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

__all__ = ["Cue", "Decomposition"]

_MARK = re.compile(r"\{([AS]):")


@dataclass(frozen=True)
class Cue:
    """A span ``text == expression[start:end]`` of an expression."""

    text: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Cue.text must be str, got {type(self.text).__name__}")
        if not (0 <= self.start <= self.end):
            raise ValueError(f"Cue offsets must satisfy 0 <= start <= end, got ({self.start}, {self.end})")
        if self.end - self.start != len(self.text):
            raise ValueError(
                f"Cue {self.text!r} has {len(self.text)} characters but spans [{self.start}, {self.end})"
            )

    @classmethod
    def from_span(cls, expression: str, start: int, end: int) -> Cue:
        """The cue covering ``expression[start:end]``."""
        return cls(expression[start:end], start, end)


def _check_cues(text: str, kind: str, cues: tuple[Cue, ...]) -> None:
    for cue in cues:
        if not isinstance(cue, Cue):
            raise TypeError(f"{kind} cues must be Cue instances, got {type(cue).__name__}")
        if cue.end > len(text) or text[cue.start : cue.end] != cue.text:
            raise ValueError(f"{kind} cue {cue.text!r} at [{cue.start}, {cue.end}) is not a span of {text!r}")
    for previous, current in pairwise(cues):
        if current.start < previous.end:
            raise ValueError(
                f"{kind} cues must be disjoint and in order: {previous.text!r} "
                f"[{previous.start}, {previous.end}) then {current.text!r} [{current.start}, {current.end})"
            )


@dataclass(frozen=True)
class Decomposition:
    """An expression split into spatial and attribute cues (the context is the whole text).

    Cues of each kind are disjoint and in text order, and no spatial cue overlaps an attribute cue.
    Construction validates this, so any `Decomposition` a parser returns is well formed.
    """

    text: str
    spatial: tuple[Cue, ...] = ()
    attributes: tuple[Cue, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Decomposition.text must be str, got {type(self.text).__name__}")
        object.__setattr__(self, "spatial", tuple(self.spatial))
        object.__setattr__(self, "attributes", tuple(self.attributes))
        _check_cues(self.text, "spatial", self.spatial)
        _check_cues(self.text, "attribute", self.attributes)
        _check_cues(self.text, "all", tuple(sorted(self.spatial + self.attributes, key=lambda c: c.start)))

    @property
    def context(self) -> str:
        """The global context L_c is encoded from: the whole expression."""
        return self.text

    @property
    def spatial_text(self) -> str:
        """The spatial cues joined by single spaces (the text the `separate` encoder mode reads)."""
        return " ".join(cue.text for cue in self.spatial)

    @property
    def attribute_text(self) -> str:
        """The attribute cues joined by single spaces."""
        return " ".join(cue.text for cue in self.attributes)

    @classmethod
    def from_spans(
        cls,
        text: str,
        spatial: Iterable[tuple[int, int]] = (),
        attributes: Iterable[tuple[int, int]] = (),
    ) -> Decomposition:
        """Build from ``(start, end)`` character spans of ``text``."""
        return cls(
            text,
            tuple(Cue.from_span(text, s, e) for s, e in spatial),
            tuple(Cue.from_span(text, s, e) for s, e in attributes),
        )

    def to_marked(self) -> str:
        """The bracket-marked form, e.g. ``{A:The tennis court} is {S:on the right of the field}``."""
        labelled = sorted(
            [(c, "S") for c in self.spatial] + [(c, "A") for c in self.attributes], key=lambda x: x[0].start
        )
        pieces, position = [], 0
        for cue, label in labelled:
            pieces.append(self.text[position : cue.start])
            pieces.append(f"{{{label}:{cue.text}}}")
            position = cue.end
        pieces.append(self.text[position:])
        return "".join(pieces)

    @classmethod
    def from_marked(cls, marked: str) -> Decomposition:
        """Parse the bracket-marked form written by `to_marked` (cues may not nest or contain braces)."""
        text_parts: list[str] = []
        spans: dict[str, list[tuple[int, int]]] = {"S": [], "A": []}
        length, position = 0, 0
        for match in _MARK.finditer(marked):
            if match.start() < position:
                raise ValueError(f"nested or overlapping marks in {marked!r}")
            plain = marked[position : match.start()]
            if "{" in plain or "}" in plain:
                raise ValueError(f"unbalanced braces before offset {match.start()} in {marked!r}")
            close = marked.find("}", match.end())
            if close < 0:
                raise ValueError(f"mark opened at offset {match.start()} is never closed in {marked!r}")
            body = marked[match.end() : close]
            if "{" in body:
                raise ValueError(f"nested mark inside offset {match.start()} of {marked!r}")
            text_parts.append(plain)
            length += len(plain)
            spans[match.group(1)].append((length, length + len(body)))
            text_parts.append(body)
            length += len(body)
            position = close + 1
        tail = marked[position:]
        if "{" in tail or "}" in tail:
            raise ValueError(f"unbalanced braces after offset {position} in {marked!r}")
        text_parts.append(tail)
        return cls.from_spans("".join(text_parts), spatial=spans["S"], attributes=spans["A"])
