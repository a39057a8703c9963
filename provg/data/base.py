"""What every benchmark reader shares: the `Record` of one sample, the `GroundingDataset` base class, the
reader of ``<id> <phrase>`` files with image and mask folders (RISBench, RefSegRS), and the policy for
boxes written with x2 < x1 or y2 < y1.

A reader lists its samples when built (cheap: text and annotation files only) and resolves one sample
into a `Record` on demand: image path, text, box, mask and ids, without decoding the image. Items
(``dataset[i]``) are the record plus the decoded image, passed through the dataset's ``transform``;
`provg.data.index` writes records to JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import image_size, load_image, load_mask, mask_box, read_lines

__all__ = [
    "EMPTY_MASK_POLICIES",
    "INVERTED_BOX_POLICIES",
    "SPLITS",
    "GroundingDataset",
    "PhraseMaskDataset",
    "Record",
    "check_option",
    "order_box",
    "read_phrase_file",
]

SPLITS = ("train", "val", "test")
INVERTED_BOX_POLICIES = ("sort", "keep", "error")
EMPTY_MASK_POLICIES = ("error", "zero_box")

Box = tuple[float, float, float, float]


def check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True, eq=False)
class Record:
    """One sample before its image is decoded.

    ``box`` is xyxy in pixels of the image file; ``mask`` (H, W) bool or None for box-only benchmarks;
    ``ids`` are scalars copied into the item (e.g. ``image_id``, ``sent_id``).
    """

    image: Path
    text: str
    box: Box
    mask: np.ndarray | None = None
    ids: dict[str, Any] = field(default_factory=dict)

    def to_sample(self, image: torch.Tensor) -> dict[str, Any]:
        """The item dict: ``image``, ``text``, ``box`` (float32), ``mask`` (bool, when present), ids."""
        sample: dict[str, Any] = {
            "image": image,
            "text": self.text,
            "box": torch.tensor(self.box, dtype=torch.float32),
        }
        if self.mask is not None:
            sample["mask"] = torch.from_numpy(self.mask)
        sample.update(self.ids)
        return sample


class GroundingDataset(Dataset):
    """Base of the benchmark readers: split check, ``record(index)``, and items with decoded images.

    Subclasses set ``name`` and ``splits``, fill ``self.entries`` (one per sample) and implement
    `record`.
    """

    name: ClassVar[str] = ""
    splits: tuple[str, ...] = SPLITS

    def __init__(self, root: str | Path, split: str, transform: Callable[[dict], dict] | None = None) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name}: split must be one of {self.splits}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.entries: list[Any] = []

    def __len__(self) -> int:
        return len(self.entries)

    def record(self, index: int) -> Record:
        """Sample ``index`` without its decoded image."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.record(index)
        sample = record.to_sample(load_image(record.image))
        return self.transform(sample) if self.transform is not None else sample


def order_box(box: Box, policy: str, source: str) -> Box:
    """``box`` under the inverted-box ``policy``: "sort" swaps x1/x2 and y1/y2 where x2 < x1 or y2 < y1
    (the rectangle spanned by the two corners as written), "keep" returns it as written (what the peers'
    loaders do), "error" raises naming ``source``."""
    x1, y1, x2, y2 = box
    if (x1 <= x2 and y1 <= y2) or policy == "keep":
        return box
    if policy == "error":
        raise ValueError(
            f"{source}: box {list(box)} has x2 < x1 or y2 < y1; pass inverted_box='sort' or 'keep'"
        )
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def read_phrase_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, image id, phrase) of each line ``<id> <phrase>`` of ``path``, split at the first
    space. Blank lines are skipped; a line with an id and no phrase is an error."""
    entries = []
    for number, line in enumerate(read_lines(path, "phrase file"), start=1):
        line = line.strip()
        if not line:
            continue
        image_id, _, phrase = line.partition(" ")
        phrase = phrase.strip()
        if not phrase:
            raise ValueError(f"{path}, line {number}: no phrase after the image id {image_id!r}")
        entries.append((number, image_id, phrase))
    if not entries:
        raise ValueError(f"{path}: no samples")
    return entries


class PhraseMaskDataset(GroundingDataset):
    """Benchmarks stored as ``output_phrase_<split>.txt`` (lines ``<id> <phrase>``) with one image and one
    mask file per id, and no boxes: the box is the enclosing box of the mask (`io.mask_box`).

    Images and masks are looked up by the id as written in the phrase file, whatever the split (RISBench's
    val/test files name images whose ids start with ``train_``). A mask whose size differs from its
    image's raises naming both files. ``empty_mask``: "error" (default) raises naming the mask file;
    "zero_box" keeps the sample with box (0, 0, 0, 0), what `provg.ops.mask_to_box` gives an empty mask.

    Items carry ``image_id`` (the id as written) and ``sent_id`` (the 1-based line number in the phrase
    file).
    """

    image_dir: ClassVar[str]
    mask_dir: ClassVar[str]
    image_suffix: ClassVar[str]
    mask_suffix: ClassVar[str]
    mask_threshold: ClassVar[int]

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict], dict] | None = None,
        empty_mask: str = "error",
    ) -> None:
        super().__init__(root, split, transform)
        check_option("empty_mask", empty_mask, EMPTY_MASK_POLICIES)
        self.empty_mask = empty_mask
        self.phrase_file = self.root / f"output_phrase_{split}.txt"
        self.entries = read_phrase_file(self.phrase_file)

    def image_path(self, image_id: str) -> Path:
        return self.root / self.image_dir / f"{image_id}{self.image_suffix}"

    def mask_path(self, image_id: str) -> Path:
        return self.root / self.mask_dir / f"{image_id}{self.mask_suffix}"

    def record(self, index: int) -> Record:
        line, image_id, text = self.entries[index]
        image_path, mask_path = self.image_path(image_id), self.mask_path(image_id)
        mask = load_mask(mask_path, self.mask_threshold)
        height, width = image_size(image_path)
        if mask.shape != (height, width):
            raise ValueError(
                f"{mask_path}: mask is {mask.shape[0]}×{mask.shape[1]} but the image {image_path} is "
                f"{height}×{width}"
            )
        box = mask_box(mask)
        if box is None:
            if self.empty_mask == "error":
                raise ValueError(
                    f"{mask_path}: empty mask (no pixel above {self.mask_threshold}) for line {line} of "
                    f"{self.phrase_file}; pass empty_mask='zero_box' to keep such samples"
                )
            box = (0.0, 0.0, 0.0, 0.0)
        return Record(image_path, text, box, mask, {"image_id": image_id, "sent_id": line})
