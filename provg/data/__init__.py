"""Grounding datasets in their real on-disk formats, transforms and batching.

``load_dataset(name, root, split, **options)`` with ``name`` one of (DESIGN §4):

- ``"rrsisd"``: RRSIS-D (REFER pickle + COCO instances), `rrsisd.RRSISD`;
- ``"synthrs"``: the generated benchmark in the RRSIS-D format, `synthrs.SynthRS`;
- ``"risbench"``: RISBench (phrase files, PNG images and masks), `risbench.RISBench`;
- ``"refsegrs"``: RefSegRS (phrase files, TIFF images and masks), `refsegrs.RefSegRS`;
- ``"dior_rsvg"``: DIOR-RSVG (VOC-like XML, split files of object indices; box only), `dior_rsvg.DIORRSVG`;
- ``"rsvg_hr"``: RSVG-HR (comma-separated annotation lines; box only), `rsvg_hr.RSVGHR`;
- ``"index"``: a JSON index written by `index.write_index` from any of the above, `index.IndexDataset`.

Every class takes ``(root, split, transform=None, **options)`` and raises ValueError naming the valid
splits. Items are dicts with ``image`` (3×H×W float in [0, 1]), ``text``, ``box`` (xyxy pixels,
float32), ``mask`` (H×W bool) where the benchmark has masks, and ids (``image_id``, ``sent_id``, …).
Boxes derived from masks use the pixel-edge convention of `provg.ops.mask_to_box`. ``image_size=N``
resizes to the network input and normalizes (`transforms.model_transform`); ``keep_original=True``
also keeps ``original_box`` and ``original_mask`` for evaluation at the original resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import GroundingDataset, Record
from .dior_rsvg import DIORRSVG
from .index import IndexDataset, write_index
from .refsegrs import RefSegRS
from .risbench import RISBench
from .rrsisd import RRSISD
from .rsvg_hr import RSVGHR
from .synthrs import SynthRS
from .transforms import model_transform

__all__ = [
    "DATASETS",
    "DIORRSVG",
    "RRSISD",
    "RSVGHR",
    "GroundingDataset",
    "IndexDataset",
    "RISBench",
    "Record",
    "RefSegRS",
    "SynthRS",
    "collate",
    "load_dataset",
    "write_index",
]

DATASETS: dict[str, type[GroundingDataset]] = {
    "synthrs": SynthRS,
    "rrsisd": RRSISD,
    "risbench": RISBench,
    "refsegrs": RefSegRS,
    "dior_rsvg": DIORRSVG,
    "rsvg_hr": RSVGHR,
    "index": IndexDataset,
}


def load_dataset(
    name: str,
    root: str | Path,
    split: str,
    image_size: int | None = None,
    keep_original: bool = False,
    **options: Any,
) -> GroundingDataset:
    """The ``split`` of benchmark ``name`` stored under ``root``.

    ``image_size`` adds the network-input transform (resize + normalize); with it, ``keep_original``
    keeps each sample's original-resolution ``original_box`` and ``original_mask``. Other ``options``
    go to the dataset class (e.g. ``size_mismatch`` for RRSIS-D, ``empty_mask`` for RISBench).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if keep_original and image_size is None:
        raise ValueError("keep_original needs image_size: without resizing, the sample is the original")
    if image_size is not None:
        if "transform" in options:
            raise ValueError("pass either image_size or transform, not both")
        options["transform"] = model_transform(image_size, keep_original=keep_original)
    return DATASETS[name](root, split, **options)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape (images, boxes, masks); keep everything else as lists."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
