"""Grounding datasets in their real on-disk formats, transforms and batching.

``load_dataset(name, root, split, **options)``: ``"rrsisd"`` (REFER pickle + COCO instances) and
``"synthrs"`` (the generated benchmark in the same format). Items are dicts with ``image`` (3×H×W
float), ``text``, ``box`` (xyxy pixels) and ``mask`` (H×W bool). ``image_size=N`` resizes to the
network input and normalizes (`transforms.model_transform`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .rrsisd import RRSISD
from .synthrs import SynthRS
from .transforms import model_transform

__all__ = ["DATASETS", "RRSISD", "SynthRS", "collate", "load_dataset"]

DATASETS = {"rrsisd": RRSISD, "synthrs": SynthRS}


def load_dataset(name: str, root: str | Path, split: str, image_size: int | None = None, **options: Any):
    """The ``split`` of benchmark ``name`` stored under ``root``.

    ``image_size`` adds the network-input transform (resize + normalize); other ``options`` go to the
    dataset class (e.g. ``size_mismatch`` for RRSIS-D).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if image_size is not None:
        if "transform" in options:
            raise ValueError("pass either image_size or transform, not both")
        options["transform"] = model_transform(image_size)
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
