"""Random aerial-like scenes for synthrs: a land-cover background and objects on a 3×3 grid of cells.

Every scene holds a target category with 2–3 instances (so the category alone never identifies the
target), sometimes a second repeated category, and 1–2 single objects of other categories that serve
as landmarks. One object per cell keeps positions such as "on the upper left" unambiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import CATEGORIES, COLOURS, Placement, draw_object

__all__ = ["GRID", "Scene", "SceneObject", "generate_scene"]

GRID = 3
_GROUND = [(118, 104, 80), (92, 108, 72), (140, 128, 104), (84, 94, 86), (104, 98, 90)]


@dataclass(frozen=True)
class SceneObject:
    """One drawn object with its grid cell and its mask (H×W bool)."""

    index: int
    placement: Placement
    row: int
    col: int
    scale: float  # size relative to the category's base size
    mask: np.ndarray

    @property
    def category(self) -> str:
        return self.placement.category

    @property
    def colour(self) -> str:
        return self.placement.colour


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    target_categories: list[str]  # categories with >= 2 instances, targets are drawn from them


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency blend of two ground colours, fine grain, and sometimes a road."""
    a, b = rng.choice(len(_GROUND), size=2, replace=False)
    coarse = rng.random((5, 5))
    field = (
        np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
            dtype=np.float32,
        )
        / 255.0
    )
    colour = (1 - field[..., None]) * np.array(_GROUND[a], np.float32) + field[..., None] * np.array(
        _GROUND[b], np.float32
    )
    colour += rng.normal(0, 6, size=(size, size, 1)) + rng.normal(0, 3, size=(size, size, 3))
    if rng.random() < 0.5:
        width = max(2, size // 40)
        position = int(rng.integers(size // 6, size - size // 6))
        road = (slice(position - width, position + width), slice(None))
        if rng.random() < 0.5:
            road = road[::-1]
        colour[road] = 0.35 * colour[road] + 0.65 * np.array((96, 96, 98), np.float32)
    return np.clip(colour, 0, 255).astype(np.uint8)


def generate_scene(rng: np.random.Generator, size: int = 128) -> Scene:
    """One scene; deterministic given ``rng``'s state."""
    names = list(CATEGORIES)
    order = rng.permutation(len(names))
    target = names[order[0]]
    counts = {target: int(rng.integers(2, 4))}
    if rng.random() < 0.4:
        counts[names[order[1]]] = 2
    remaining = [names[i] for i in order[len(counts) :]]
    for name in remaining[: int(rng.integers(1, 3))]:
        counts[name] = 1
    cells = rng.permutation(GRID * GRID)
    cell_size = size / GRID
    unit = size / 128.0
    canvas = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(canvas)
    objects: list[SceneObject] = []
    for category, count in counts.items():
        for _ in range(count):
            cell = int(cells[len(objects)])
            row, col = divmod(cell, GRID)
            scale = float(rng.uniform(0.7, 1.35))
            half = CATEGORIES[category].base_size * scale * unit
            reach = min(half * 1.05, cell_size / 2)
            slack = max(0.0, cell_size / 2 - reach)
            cx = (col + 0.5) * cell_size + float(rng.uniform(-slack, slack))
            cy = (row + 0.5) * cell_size + float(rng.uniform(-slack, slack))
            colour = str(rng.choice(list(COLOURS)))
            placement = Placement(category, colour, cx, cy, half, float(rng.uniform(0, 2 * math.pi)))
            mask_image = Image.new("L", (size, size), 0)
            draw_object(draw, ImageDraw.Draw(mask_image), placement)
            objects.append(SceneObject(len(objects), placement, row, col, scale, np.asarray(mask_image) > 0))
    # Later objects may overlap earlier ones at cell borders: keep each mask to what is visible.
    visible = np.zeros((size, size), dtype=bool)
    for i in range(len(objects) - 1, -1, -1):
        obj = objects[i]
        objects[i] = SceneObject(obj.index, obj.placement, obj.row, obj.col, obj.scale, obj.mask & ~visible)
        visible |= obj.mask
    return Scene(canvas, objects, [c for c, n in counts.items() if n >= 2])
