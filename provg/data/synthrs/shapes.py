"""Aerial-looking object shapes of DIOR categories for the synthrs benchmark.

Each category draws a distinct silhouette (the mask) and interior detail (image only) with PIL, in
local coordinates scaled by a size in pixels, rotated and translated. The named colour is the
object's dominant fill, so "the red ship" is what a person would call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageDraw

__all__ = ["CATEGORIES", "COLOURS", "Placement", "draw_object"]

# name -> RGB of the object's main fill
COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 232),
    "gray": (128, 130, 134),
    "black": (28, 28, 32),
    "red": (200, 42, 38),
    "blue": (38, 84, 204),
    "yellow": (228, 200, 36),
}

Polygon = list[tuple[float, float]]


def _circle(cx: float, cy: float, r: float, n: int = 24) -> Polygon:
    return [
        (cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)) for i in range(n)
    ]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _capsule(half_length: float, radius: float, n: int = 10) -> Polygon:
    right = [
        (half_length + radius * math.cos(a), radius * math.sin(a))
        for a in (-math.pi / 2 + math.pi * i / n for i in range(n + 1))
    ]
    left = [(-x, -y) for x, y in right]
    return right + left


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in colour)  # type: ignore[return-value]


# Silhouettes (mask) and details (image only) per category, in units of the object's size.
def _airplane() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    body = [(-1.0, -0.12), (0.85, -0.12), (1.0, 0.0), (0.85, 0.12), (-1.0, 0.12)]
    wing_l = [(0.3, -0.1), (-0.15, -0.95), (-0.4, -0.95), (-0.2, -0.1)]
    wing_r = [(x, -y) for x, y in wing_l]
    tail_l = [(-0.75, -0.1), (-0.95, -0.42), (-1.08, -0.42), (-0.98, -0.1)]
    tail_r = [(x, -y) for x, y in tail_l]
    return [body, wing_l, wing_r, tail_l, tail_r], [(_rect(0.5, -0.06, 0.8, 0.06), 0.6)]


def _ship() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    hull = [(-1.0, -0.24), (0.55, -0.24), (1.0, 0.0), (0.55, 0.24), (-1.0, 0.24)]
    return [hull], [(_rect(-0.75, -0.12, 0.2, 0.12), 0.7), (_rect(-0.95, -0.08, -0.8, 0.08), 0.5)]


def _vehicle() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    return [_rect(-1.0, -0.5, 1.0, 0.5)], [
        (_rect(0.3, -0.42, 0.58, 0.42), 0.45),
        (_rect(-0.85, -0.4, -0.65, 0.4), 0.7),
    ]


def _storage_tank() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    return [_circle(0, 0, 1.0)], [(_circle(0, 0, 0.72), 0.82), (_circle(0, 0, 0.2), 0.6)]


def _tennis_court() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    court = _rect(-1.0, -0.58, 1.0, 0.58)
    lines = [
        (_rect(-0.86, -0.46, 0.86, -0.4), 1.8),
        (_rect(-0.86, 0.4, 0.86, 0.46), 1.8),
        (_rect(-0.03, -0.46, 0.03, 0.46), 1.8),
    ]
    return [court], lines


def _baseball_field() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    apex = (-0.75, 0.75)
    fan = [apex] + [
        (apex[0] + 1.65 * math.cos(-a), apex[1] + 1.65 * math.sin(-a))
        for a in (math.pi / 2 * i / 12 for i in range(13))
    ]
    diamond = [(-0.75, 0.75), (-0.2, 0.55), (-0.35, 0.2), (-0.55, 0.35)]
    return [fan], [(diamond, 0.6)]


def _ground_track_field() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    return [_capsule(0.5, 0.6)], [(_capsule(0.5, 0.42), 0.55)]


def _windmill() -> tuple[list[Polygon], list[tuple[Polygon, float]]]:
    blades = []
    for k in range(3):
        a = 2 * math.pi * k / 3
        c, s = math.cos(a), math.sin(a)
        local = [(0.0, -0.1), (1.0, -0.04), (1.0, 0.04), (0.0, 0.1)]
        blades.append([(x * c - y * s, x * s + y * c) for x, y in local])
    return [*blades, _circle(0, 0, 0.2, 12)], [(_circle(0, 0, 0.1, 8), 0.5)]


@dataclass(frozen=True)
class _Category:
    name: str  # DIOR category name
    phrase: str  # how expressions name it
    plural: str
    base_size: float  # half-extent in pixels at a 128-pixel image
    shape: object


CATEGORIES: dict[str, _Category] = {
    c.name: c
    for c in (
        _Category("airplane", "airplane", "airplanes", 14.0, _airplane),
        _Category("ship", "ship", "ships", 13.5, _ship),
        _Category("vehicle", "vehicle", "vehicles", 10.0, _vehicle),
        _Category("storagetank", "storage tank", "storage tanks", 10.5, _storage_tank),
        _Category("tenniscourt", "tennis court", "tennis courts", 13.0, _tennis_court),
        _Category("baseballfield", "baseball field", "baseball fields", 12.5, _baseball_field),
        _Category("groundtrackfield", "ground track field", "ground track fields", 14.0, _ground_track_field),
        _Category("windmill", "windmill", "windmills", 13.0, _windmill),
    )
}


@dataclass(frozen=True)
class Placement:
    """Where and how one object is drawn."""

    category: str
    colour: str
    cx: float
    cy: float
    size: float  # half-extent in pixels
    angle: float  # radians


def _transform(polygon: Polygon, placement: Placement) -> Polygon:
    c, s = math.cos(placement.angle), math.sin(placement.angle)
    return [
        (placement.cx + placement.size * (x * c - y * s), placement.cy + placement.size * (x * s + y * c))
        for x, y in polygon
    ]


def draw_object(
    image_draw: ImageDraw.ImageDraw, mask_draw: ImageDraw.ImageDraw, placement: Placement
) -> None:
    """Draw ``placement`` onto an RGB image and its silhouette onto an "L" mask (value 255)."""
    silhouettes, details = CATEGORIES[placement.category].shape()
    fill = COLOURS[placement.colour]
    # A thin darker outline plays the part of the object's shadow and edge.
    edge = _shade(fill, 0.55) if placement.colour != "black" else (70, 70, 76)
    for polygon in silhouettes:
        points = _transform(polygon, placement)
        image_draw.polygon(points, fill=fill, outline=edge)
        mask_draw.polygon(points, fill=255, outline=255)
    for polygon, factor in details:
        shade = _shade(fill, factor) if factor < 1.5 else (245, 245, 245)
        if placement.colour == "white" and factor >= 1.5:
            shade = (60, 120, 70)
        image_draw.polygon(_transform(polygon, placement), fill=shade)
