"""RSVG-HR reader (DESIGN §4; box only, no masks).

Layout under the root, following the LQVG repository (which released the annotations; the images are
those of the RSVG dataset of GeoVG, stored flat in one folder):

- ``Annotations/rsvg_hr_train.txt``, ``Annotations/rsvg_hr_test.txt``: one sample per line,
  ``<image>,<x1>,<y1>,<x2>,<y2>,<expression>`` (xyxy pixels); 2,151 and 499 lines. The release has no
  val split.
- ``images/<image>``.

Parsing and decisions:

- A line is split on its first five commas only, so an expression may contain commas (LQVG's loader
  splits on every comma and keeps the last field, which cuts such expressions).
- Decimal comma: the released train file has one line whose box reads ``170.0,774.0,216,00,803.21``
  (x2 written ``216,00``). When the five fields after the image and the start of the expression up to
  its first comma are all numbers, one coordinate was written with a decimal comma: the two adjacent
  fields ``<int>,<digits>`` that, joined as ``<int>.<digits>``, give the only box with x1 < x2 and
  y1 < y2 are joined (here 216.00), with a warning naming the line; no such pair, or more than one, is
  an error naming the file and line.
- Boxes with x2 < x1 or y2 < y1 (the train file has one, line 450) follow ``inverted_box``
  (`provg.data.base.order_box`); each is logged.
- Blank lines are skipped; a missing field, a non-numeric coordinate or an empty expression is an error
  naming the file and line.

Items carry ``image_id`` (the image file's stem) and ``sent_id`` (the 1-based line number).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from .base import INVERTED_BOX_POLICIES, GroundingDataset, Record, check_option, order_box
from .io import read_lines

__all__ = ["RSVGHR", "parse_rsvg_hr_line"]

logger = logging.getLogger("provg.data")

_INTEGER = re.compile(r"[+-]?\d+")
_DIGITS = re.compile(r"\d+")

Box = tuple[float, float, float, float]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _valid(box: list[float]) -> bool:
    return box[0] < box[2] and box[1] < box[3]


def _join_decimal_comma(fields: list[str], where: str) -> Box:
    """The box of six numeric fields of which two adjacent ones are one number with a decimal comma."""
    candidates = []
    for k in range(len(fields) - 1):
        whole, fraction = fields[k].strip(), fields[k + 1].strip()
        if _INTEGER.fullmatch(whole) and _DIGITS.fullmatch(fraction):
            joined = [*fields[:k], f"{whole}.{fraction}", *fields[k + 2 :]]
            box = [float(v) for v in joined]
            if _valid(box):
                candidates.append((box, f"{whole},{fraction}"))
    if len(candidates) != 1:
        raise ValueError(
            f"{where}: six numbers before the expression ({','.join(fields)}) and "
            f"{'no' if not candidates else 'more than one'} way to read one of them as a decimal comma"
        )
    (x1, y1, x2, y2), written = candidates[0]
    logger.warning("%s: read %r as a decimal comma: box (%s, %s, %s, %s)", where, written, x1, y1, x2, y2)
    return x1, y1, x2, y2


def parse_rsvg_hr_line(line: str, where: str) -> tuple[str, Box, str]:
    """(image file name, box as written, expression) of one annotation line; ``where`` names it in
    errors."""
    parts = line.split(",", 5)
    if len(parts) < 6:
        raise ValueError(
            f"{where}: expected <image>,<x1>,<y1>,<x2>,<y2>,<expression>, got {len(parts)} field(s)"
        )
    image, *coordinates, expression = (part.strip() for part in parts)
    if not image:
        raise ValueError(f"{where}: no image file name")
    values = [_number(v) for v in coordinates]
    for name, text, value in zip(("x1", "y1", "x2", "y2"), coordinates, values):
        if value is None:
            raise ValueError(f"{where}: {name} is not a number: {text!r}")
    head, comma, rest = expression.partition(",")
    if comma and _number(head) is not None:
        box = _join_decimal_comma([*coordinates, head], where)
        expression = rest.strip()
    else:
        x1, y1, x2, y2 = values
        box = (x1, y1, x2, y2)
    if not expression:
        raise ValueError(f"{where}: no expression")
    return image, box, expression


class RSVGHR(GroundingDataset):
    """RSVG-HR samples of one split: ``image``, ``text``, ``box``, ``image_id``, ``sent_id``.

    Args:
        root: folder holding ``Annotations/rsvg_hr_<split>.txt`` and ``images/``.
        split: "train" or "test".
        transform: applied to each sample dict.
        inverted_box: "sort" (default), "keep" or "error" (see `provg.data.base.order_box`).
    """

    name = "rsvg_hr"
    splits = ("train", "test")

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict], dict] | None = None,
        inverted_box: str = "sort",
    ) -> None:
        super().__init__(root, split, transform)
        check_option("inverted_box", inverted_box, INVERTED_BOX_POLICIES)
        self.annotation_file = self.root / "Annotations" / f"rsvg_hr_{split}.txt"
        image_dir = self.root / "images"
        for number, line in enumerate(read_lines(self.annotation_file), start=1):
            if not line.strip():
                continue
            where = f"{self.annotation_file}, line {number}"
            image, box, expression = parse_rsvg_hr_line(line, where)
            ordered = order_box(box, inverted_box, where)
            if ordered != box:
                logger.warning("%s: box %s has x2 < x1 or y2 < y1; using %s", where, list(box), list(ordered))
            self.entries.append(
                Record(
                    image=image_dir / image,
                    text=expression,
                    box=ordered,
                    ids={"image_id": Path(image).stem, "sent_id": number},
                )
            )
        if not self.entries:
            raise ValueError(f"{self.annotation_file}: no samples")

    def record(self, index: int) -> Record:
        return self.entries[index]
