"""RRSIS-D-style referring expressions for synthrs targets, with their gold decomposition.

A description is built around one *discriminating* cue that no other object of the target's category
satisfies — its colour, its size (clearly the smallest or largest), its cell ("on the upper left"),
or a relation to a landmark ("on the left of the storage tank") — and may add further true cues, as
people do. Attribute cues name the size, colour and category ("small red ship"); spatial cues are the
position and relation phrases, landmark included. The gold `Decomposition` marks exactly those spans.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from provg.parsers import Decomposition

from .scene import Scene, SceneObject
from .shapes import CATEGORIES

__all__ = ["describe"]

SIZE_RATIO = 1.3
_CELL_PHRASES = {
    (0, 0): ("on the upper left", "in the upper left corner", "at the top left"),
    (0, 1): ("on the top", "at the top", "in the upper middle"),
    (0, 2): ("on the upper right", "in the upper right corner", "at the top right"),
    (1, 0): ("on the left", "on the left side", "in the middle left"),
    (1, 1): ("in the middle", "in the center", "in the center of the image"),
    (1, 2): ("on the right", "on the right side", "in the middle right"),
    (2, 0): ("on the lower left", "in the lower left corner", "at the bottom left"),
    (2, 1): ("on the bottom", "at the bottom", "in the lower middle"),
    (2, 2): ("on the lower right", "in the lower right corner", "at the bottom right"),
}
# relation -> (phrases, (row offset, col offset) of the target from the landmark)
_RELATIONS = {
    "left": (("on the left of", "to the left of", "at the left of"), (0, -1)),
    "right": (("on the right of", "to the right of", "at the right of"), (0, 1)),
    "above": (("above", "on the top of", "at the top of"), (-1, 0)),
    "below": (("below", "under", "on the bottom of"), (1, 0)),
}


def _size_word(target: SceneObject, peers: Sequence[SceneObject]) -> str | None:
    others = [p.scale for p in peers if p.index != target.index]
    if all(target.scale >= SIZE_RATIO * s for s in others):
        return "large"
    if all(target.scale * SIZE_RATIO <= s for s in others):
        return "small"
    return None


def _landmark_phrase(landmark: SceneObject, scene: Scene) -> str | None:
    """A phrase naming ``landmark`` uniquely ("the storage tank", "the red storage tank"), or None."""
    same = [o for o in scene.objects if o.category == landmark.category]
    name = CATEGORIES[landmark.category].phrase
    if len(same) == 1:
        return f"the {name}"
    if sum(o.colour == landmark.colour for o in same) == 1:
        return f"the {landmark.colour} {name}"
    return None


def _relations(target: SceneObject, scene: Scene, peers: Sequence[SceneObject]) -> list[tuple[str, str]]:
    """(relation, landmark phrase) pairs true of the target and of no other peer."""
    found = []
    for landmark in scene.objects:
        if landmark.category == target.category:
            continue
        phrase = _landmark_phrase(landmark, scene)
        if phrase is None:
            continue
        for relation, (_, (dr, dc)) in _RELATIONS.items():

            def holds(o: SceneObject, dr=dr, dc=dc, lm=landmark) -> bool:
                return (o.row - lm.row, o.col - lm.col) == (dr, dc)

            if holds(target) and not any(holds(p) for p in peers if p.index != target.index):
                found.append((relation, phrase))
    return found


def describe(scene: Scene, target: SceneObject, rng: np.random.Generator) -> Decomposition:
    """A referring expression for ``target`` that no other object of its category fits."""
    peers = [o for o in scene.objects if o.category == target.category]
    colour_unique = sum(p.colour == target.colour for p in peers) == 1
    size = _size_word(target, peers)
    relations = _relations(target, scene, peers)
    weights = {
        "cell": 3.0,
        "relation": 1.5 if relations else 0.0,
        "colour": 3.0 if colour_unique else 0.0,
        "size": 2.0 if size else 0.0,
    }
    names = list(weights)
    total = sum(weights.values())
    core = names[int(rng.choice(len(names), p=[weights[n] / total for n in names]))]

    use_colour = core == "colour" or rng.random() < 0.35
    use_size = size is not None and (core == "size" or rng.random() < 0.3)
    use_cell = core == "cell" or (core in ("colour", "size") and rng.random() < 0.25)
    relation = relations[int(rng.integers(len(relations)))] if core == "relation" else None
    if relation is None and core == "cell" and relations and rng.random() < 0.2:
        relation = relations[int(rng.integers(len(relations)))]

    words = ([size] if use_size else []) + ([target.colour] if use_colour else [])
    attribute = " ".join([*words, CATEGORIES[target.category].phrase])
    spatial = []
    if use_cell:
        phrases = _CELL_PHRASES[(target.row, target.col)]
        spatial.append(phrases[int(rng.integers(len(phrases)))])
    if relation is not None:
        phrases = _RELATIONS[relation[0]][0]
        spatial.append(f"{phrases[int(rng.integers(len(phrases)))]} {relation[1]}")
    return _assemble(attribute, spatial, rng)


def _assemble(attribute: str, spatial: list[str], rng: np.random.Generator) -> Decomposition:
    """Wrap the cues in a sentence template and record their character spans."""
    determiner = str(rng.choice(["The", "the", "A", "a"]))
    pieces: list[tuple[str, str | None]] = []
    template = int(rng.integers(4)) if spatial else 0
    if template == 3:
        pieces += [("find ", None), (determiner.lower() + " ", None)]
    else:
        pieces.append((determiner + " ", None))
    pieces.append((attribute, "A"))
    for position, phrase in enumerate(spatial):
        if position == 0:
            pieces.append((" is " if template == 2 else " ", None))
        else:
            pieces.append((" and it is ", None))
        pieces.append((phrase, "S"))
    text, spans = "", {"A": [], "S": []}
    for piece, label in pieces:
        if label is not None:
            spans[label].append((len(text), len(text) + len(piece)))
        text += piece
    return Decomposition.from_spans(text, spatial=spans["S"], attributes=spans["A"])
