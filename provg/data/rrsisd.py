"""RRSIS-D (REFER format) reader: ``rrsisd/refs(unc).p``, ``rrsisd/instances.json`` and
``images/rrsisd/JPEGImages/*.jpg`` under a root (DESIGN §4).

Every sentence of a ref is one sample (the peers evaluate all sentences). The refs pickle is untrusted
and is read with `provg.data.safe_pickle`. Some RRSIS-D images are 800×801 or 800×787 while their masks
are 800×800; ``size_mismatch`` says what to do: ``"pad"`` (default) pads or crops the mask at the
bottom/right to the image size, keeping pixels aligned; ``"resize"`` resizes the mask to the image
(nearest; what resizing image and mask separately does in LAVT/RMSIN); ``"error"`` raises.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import SPLITS, GroundingDataset, Record, check_option
from .io import image_size, load_image, read_json
from .safe_pickle import load_plain_pickle
from .segmentation import decode_segmentation

# NOTE: load_image lives in provg.data.io; it stays importable from here for existing callers.
__all__ = ["RRSISD", "SPLITS", "fit_mask", "load_image"]

_MISMATCH = ("pad", "resize", "error")


def fit_mask(
    mask: np.ndarray, height: int, width: int, policy: str, source: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """The mask at (height, width) under ``policy``, and the (x, y) scale applied to its coordinates."""
    if mask.shape == (height, width):
        return mask, (1.0, 1.0)
    if policy == "error":
        raise ValueError(
            f"{source}: mask is {mask.shape[0]}×{mask.shape[1]} but the image is {height}×{width}; "
            "pass size_mismatch='pad' or 'resize'"
        )
    if policy == "pad":
        fitted = np.zeros((height, width), dtype=bool)
        h, w = min(height, mask.shape[0]), min(width, mask.shape[1])
        fitted[:h, :w] = mask[:h, :w]
        return fitted, (1.0, 1.0)
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(resized) > 0, (width / mask.shape[1], height / mask.shape[0])


class RRSISD(GroundingDataset):
    """RRSIS-D samples of one split: dicts with ``image``, ``text``, ``box``, ``mask`` and ids.

    Args:
        root: folder holding ``rrsisd/`` and ``images/rrsisd/JPEGImages/``.
        split: "train", "val" or "test".
        transform: applied to each sample dict (e.g. `provg.data.transforms.model_transform`).
        size_mismatch: "pad", "resize" or "error" (see the module docstring).
        refs_file: name of the refs pickle inside ``rrsisd/``.
    """

    name = "rrsisd"

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict], dict] | None = None,
        size_mismatch: str = "pad",
        refs_file: str = "refs(unc).p",
    ) -> None:
        super().__init__(root, split, transform)
        check_option("size_mismatch", size_mismatch, _MISMATCH)
        self.size_mismatch = size_mismatch
        self.image_dir = self.root / "images" / "rrsisd" / "JPEGImages"
        refs_path = self.root / "rrsisd" / refs_file
        refs = load_plain_pickle(refs_path)
        if not isinstance(refs, list):
            raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
        instances_path = self.root / "rrsisd" / "instances.json"
        instances = read_json(instances_path)
        for key in ("images", "annotations", "categories"):
            if key not in instances:
                raise ValueError(f"{instances_path}: missing the COCO key {key!r}")
        self.images = {image["id"]: image for image in instances["images"]}
        self.annotations = {ann["id"]: ann for ann in instances["annotations"]}
        self._by_image: dict[Any, list[dict]] = {}
        for ann in instances["annotations"]:
            self._by_image.setdefault(ann["image_id"], []).append(ann)
        self.categories = {cat["id"]: cat["name"] for cat in instances["categories"]}
        self.samples: list[tuple[dict, dict]] = self.entries
        for index, ref in enumerate(refs):
            missing = {"ref_id", "ann_id", "image_id", "split", "sentences"} - set(ref)
            if missing:
                raise ValueError(f"{refs_path}: ref {index} lacks {sorted(missing)}")
            if ref["split"] != split:
                continue
            if ref["ann_id"] not in self.annotations:
                raise ValueError(
                    f"{refs_path}: ref {ref['ref_id']} names annotation {ref['ann_id']}, "
                    f"absent from {instances_path}"
                )
            if not ref["sentences"]:
                raise ValueError(f"{refs_path}: ref {ref['ref_id']} has no sentences")
            for sentence in ref["sentences"]:
                text = sentence.get("sent", sentence.get("raw", ""))
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(
                        f"{refs_path}: ref {ref['ref_id']} has an empty sentence "
                        f"(sent_id {sentence.get('sent_id')})"
                    )
                self.samples.append((ref, sentence))

    def image_path(self, ref: dict) -> Path:
        entry = self.images.get(ref["image_id"])
        file_name = ref.get("file_name") or (entry or {}).get("file_name")
        if not file_name:
            raise ValueError(f"ref {ref['ref_id']}: no file_name for image {ref['image_id']}")
        return self.image_dir / file_name

    def _target(
        self, annotation: dict, image_id: Any, height: int, width: int, source: str
    ) -> tuple[tuple[float, float, float, float], np.ndarray]:
        """Box (xyxy pixels) and mask (H×W bool) of ``annotation`` in an image of ``height``×``width``."""
        entry = self.images.get(image_id, {})
        mask = decode_segmentation(
            annotation["segmentation"],
            int(entry.get("height", height)),
            int(entry.get("width", width)),
            source=f"annotation {annotation['id']}",
        )
        mask, (sx, sy) = fit_mask(mask, height, width, self.size_mismatch, source)
        x, y, w, h = (float(v) for v in annotation["bbox"])
        return (x * sx, y * sy, (x + w) * sx, (y + h) * sy), mask

    def record(self, index: int) -> Record:
        ref, sentence = self.samples[index]
        image_path = self.image_path(ref)
        annotation = self.annotations[ref["ann_id"]]
        box, mask = self._target(annotation, ref["image_id"], *image_size(image_path), str(image_path))
        ids = {
            "ref_id": ref["ref_id"],
            "sent_id": sentence.get("sent_id"),
            "image_id": ref["image_id"],
            "ann_id": ref["ann_id"],
            "category": self.categories.get(ref.get("category_id", annotation.get("category_id")), ""),
        }
        return Record(image_path, sentence.get("sent", sentence.get("raw")), box, mask, ids)

    def category_instances(self, index: int) -> list[dict[str, Any]]:
        """Every object of sample ``index``'s category in its image, as transformed samples (``box``,
        ``mask``): the candidates of the category baseline. The referred object is among them."""
        ref, _ = self.samples[index]
        image_path = self.image_path(ref)
        image = load_image(image_path)
        category = self.annotations[ref["ann_id"]]["category_id"]
        instances = []
        for annotation in self._by_image.get(ref["image_id"], []):
            if annotation["category_id"] != category:
                continue
            box, mask = self._target(annotation, ref["image_id"], *image.shape[-2:], str(image_path))
            sample = {
                "image": image,
                "box": torch.tensor(box, dtype=torch.float32),
                "mask": torch.from_numpy(mask),
                "ann_id": annotation["id"],
            }
            instances.append(self.transform(sample) if self.transform is not None else sample)
        return instances
