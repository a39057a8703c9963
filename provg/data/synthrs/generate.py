"""Writes the synthrs benchmark to disk in the RRSIS-D format (DESIGN §4), so the real-format reader
is what trains and evaluates on it.

Layout under ``root``: ``rrsisd/refs(unc).p`` (pickled plain refs), ``rrsisd/instances.json`` (COCO, every
object of every image, segmentation as compressed RLE from pycocotools), ``images/rrsisd/JPEGImages/``,
plus ``rrsisd/synthrs_gold.json`` (sent_id → bracket-marked gold decomposition) and
``rrsisd/synthrs_manifest.json`` (the generation parameters; an identical request reuses the files).
Image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``: the same seed
always gives the same benchmark, whatever the split sizes.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..segmentation import encode_rle
from .expressions import describe
from .scene import generate_scene
from .shapes import CATEGORIES

__all__ = ["DEFAULT_SIZES", "GENERATOR_VERSION", "generate"]

GENERATOR_VERSION = 2
DEFAULT_SIZES = {"train": 1600, "val": 150, "test": 400}
_SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
_MIN_TARGET_PIXELS = 12


def _bbox(mask: np.ndarray) -> list[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def generate(
    root: str | os.PathLike,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    image_size: int = 128,
    progress: bool = True,
) -> Path:
    """Generate synthrs under ``root`` (images per split in ``sizes``); returns ``root``."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(_SPLIT_INDEX)
    if unknown:
        raise ValueError(f"unknown synthrs split(s) {sorted(unknown)}; use train, val, test")
    root = Path(root)
    manifest = {"version": GENERATOR_VERSION, "seed": seed, "image_size": image_size, "sizes": sizes}
    manifest_path = root / "rrsisd" / "synthrs_manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()) == manifest:
        return root
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "rrsisd").mkdir(parents=True, exist_ok=True)
    category_ids = {name: i + 1 for i, name in enumerate(CATEGORIES)}
    images, annotations, refs, gold = [], [], [], {}
    total = sum(sizes.values())
    bar = tqdm(total=total, desc="synthrs", unit="img", disable=not progress)
    for split, count in sizes.items():
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_INDEX[split], i])
            scene = generate_scene(rng, image_size)
            image_id = len(images) + 1
            file_name = f"synthrs_{split}_{i:05d}.jpg"
            scene.image.save(image_dir / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
            ann_ids = {}
            for obj in scene.objects:
                if not obj.mask.any():
                    continue
                ann_ids[obj.index] = len(annotations) + 1
                annotations.append(
                    {
                        "id": ann_ids[obj.index],
                        "image_id": image_id,
                        "category_id": category_ids[obj.category],
                        "segmentation": encode_rle(obj.mask),
                        "bbox": _bbox(obj.mask),
                        "area": int(obj.mask.sum()),
                        "iscrowd": 0,
                    }
                )
            candidates = [
                o
                for o in scene.objects
                if o.category in scene.target_categories and o.mask.sum() >= _MIN_TARGET_PIXELS
            ]
            chosen = []
            for category in scene.target_categories:
                pool = [o for o in candidates if o.category == category]
                if pool:
                    chosen.append(pool[int(rng.integers(len(pool)))])
            if len(chosen) == 1 and rng.random() < 0.5:
                rest = [o for o in candidates if o.category == chosen[0].category and o is not chosen[0]]
                if rest:
                    chosen.append(rest[int(rng.integers(len(rest)))])
            for target in chosen:
                decomposition = describe(scene, target, rng)
                sent_id = ref_id = len(refs) + 1
                refs.append(
                    {
                        "ref_id": ref_id,
                        "ann_id": ann_ids[target.index],
                        "image_id": image_id,
                        "category_id": category_ids[target.category],
                        "split": split,
                        "sent_ids": [sent_id],
                        "sentences": [
                            {
                                "raw": decomposition.text,
                                "sent": decomposition.text,
                                "sent_id": sent_id,
                                "tokens": decomposition.text.split(),
                            }
                        ],
                        "file_name": file_name,
                    }
                )
                gold[str(sent_id)] = decomposition.to_marked()
            bar.update()
    bar.close()
    instances = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in category_ids.items()],
    }
    with open(root / "rrsisd" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=4)
    (root / "rrsisd" / "instances.json").write_text(json.dumps(instances))
    (root / "rrsisd" / "synthrs_gold.json").write_text(json.dumps(gold, indent=0))
    manifest_path.write_text(json.dumps(manifest))
    return root
