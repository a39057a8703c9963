"""A plain JSON index of a loaded dataset, and the reader that serves it as a dataset (``"index"``).

Purpose: convert an input that must not be loaded casually (RRSIS-D's refs pickle) once into plain
JSON, and freeze a benchmark's resolved samples (boxes derived from masks, size-mismatch policy applied)
into one file. `write_index` writes one split; `IndexDataset` yields the same items as the dataset it
was written from (same image decode, text, float32 box, bool mask, ids).

File format (``<split>.json``)::

    {"format": "provg-index", "version": 1, "dataset": "RRSISD", "split": "test",
     "image_root": "/abs/path/of/the/dataset/root",
     "samples": [{"image": "images/rrsisd/JPEGImages/00001.jpg",   # relative to image_root
                  "text": "...", "box": [x1, y1, x2, y2],           # xyxy pixels of the image file
                  "mask": {"size": [H, W], "counts": "..."},        # COCO RLE; absent: box-only
                  "ids": {"ref_id": 2, "sent_id": 20, ...}}, ...]}

Masks are stored as compressed COCO RLE (`provg.data.segmentation.encode_rle`), so the mask is exactly
the one the source dataset produced. The file is written atomically (temporary file in the same folder,
then ``os.replace``), so a reader never sees half an index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provg.files import atomic_write_text

from .base import GroundingDataset, Record
from .io import read_json
from .segmentation import decode_segmentation, encode_rle

__all__ = ["INDEX_FORMAT", "INDEX_VERSION", "IndexDataset", "write_index"]

INDEX_FORMAT = "provg-index"
INDEX_VERSION = 1
_SCALARS = (str, int, float, bool, type(None))


def _entry(record: Record, root: Path, source: str) -> dict[str, Any]:
    for key, value in record.ids.items():
        if not isinstance(value, _SCALARS):
            raise TypeError(f"{source}: id {key!r} is a {type(value).__name__}; an index stores scalars only")
    entry: dict[str, Any] = {
        "image": os.path.relpath(record.image, root),
        "text": record.text,
        "box": [float(v) for v in record.box],
        "ids": dict(record.ids),
    }
    if record.mask is not None:
        entry["mask"] = encode_rle(record.mask)
    return entry


def write_index(dataset: GroundingDataset, path: str | Path) -> Path:
    """Write the samples of ``dataset`` (one split) to the JSON index ``path``; return the path.

    Name it ``<folder>/<split>.json`` to read it back with ``load_dataset("index", folder, split)``.
    Only the record is stored (no ``transform``, no extra keys a subclass adds in ``__getitem__``).
    """
    path = Path(path)
    name = type(dataset).__name__
    samples = [
        _entry(dataset.record(i), dataset.root, f"{name} {dataset.split} sample {i}")
        for i in range(len(dataset))
    ]
    document = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "dataset": name,
        "split": dataset.split,
        "image_root": str(dataset.root.resolve()),
        "samples": samples,
    }
    atomic_write_text(path, json.dumps(document, allow_nan=False))
    return path


class IndexDataset(GroundingDataset):
    """The samples of a JSON index written by `write_index`: the same items as its source dataset.

    Args:
        root: folder holding ``<split>.json`` index files; the splits are the files there.
        split: which index file to read.
        transform: applied to each sample dict.
        image_root: where the images are now, when the dataset root moved since the index was written
            (default: the ``image_root`` stored in the index).
    """

    name = "index"

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict], dict] | None = None,
        image_root: str | Path | None = None,
    ) -> None:
        self.splits = tuple(sorted(p.stem for p in Path(root).glob("*.json")))
        if not self.splits:
            raise FileNotFoundError(f"no index files (<split>.json) in {root}")
        super().__init__(root, split, transform)
        self.index_file = self.root / f"{split}.json"
        document = read_json(self.index_file, "index file")
        if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
            raise ValueError(f'{self.index_file}: not a provg index (no "format": {INDEX_FORMAT!r})')
        if document.get("version") != INDEX_VERSION:
            raise ValueError(
                f"{self.index_file}: index version {document.get('version')!r}, this reader reads "
                f"{INDEX_VERSION}"
            )
        self.source = document.get("dataset")
        self.image_root = Path(image_root if image_root is not None else document.get("image_root", "."))
        samples = document.get("samples")
        if not isinstance(samples, list):
            raise ValueError(f'{self.index_file}: "samples" must be a list')
        for number, entry in enumerate(samples):
            self._check(entry, f"{self.index_file}, sample {number}")
        self.entries = samples

    @staticmethod
    def _check(entry: Any, where: str) -> None:
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = {"image", "text", "box", "ids"} - set(entry)
        if missing:
            raise ValueError(f"{where}: missing {sorted(missing)}")
        if not isinstance(entry["text"], str) or not entry["text"].strip():
            raise ValueError(f"{where}: empty or non-string text")
        box = entry["box"]
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        ):
            raise ValueError(f"{where}: box must be 4 numbers, got {box!r}")
        if not isinstance(entry["ids"], dict):
            raise ValueError(f"{where}: ids must be an object")

    def record(self, index: int) -> Record:
        entry = self.entries[index]
        mask = None
        if "mask" in entry:
            mask = decode_segmentation(entry["mask"], 0, 0, source=f"{self.index_file}, sample {index}")
        x1, y1, x2, y2 = (float(v) for v in entry["box"])
        return Record(self.image_root / entry["image"], entry["text"], (x1, y1, x2, y2), mask, entry["ids"])
