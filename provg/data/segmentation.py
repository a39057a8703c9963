"""Decoding COCO segmentations (RLE, uncompressed RLE, polygons) to bool masks with pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

__all__ = ["decode_segmentation", "encode_rle"]


def decode_segmentation(segmentation: Any, height: int, width: int, source: str = "") -> np.ndarray:
    """A (H, W) bool mask from a COCO ``segmentation`` field.

    Accepts a compressed RLE dict (``counts`` str or bytes), an uncompressed RLE dict (``counts`` list),
    a list of such dicts, a list of polygons, or one flat polygon. ``height``/``width`` size the
    polygons; an RLE carries its own ``size``.
    """
    where = f"{source}: " if source else ""
    if isinstance(segmentation, dict):
        rles = [segmentation]
    elif isinstance(segmentation, list) and segmentation and all(isinstance(s, dict) for s in segmentation):
        rles = list(segmentation)
    elif isinstance(segmentation, list) and segmentation:
        polygons = segmentation if isinstance(segmentation[0], list) else [segmentation]
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            raise ValueError(f"{where}segmentation has no polygon with at least 3 points")
        rles = [coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))]
    else:
        raise ValueError(f"{where}unsupported or empty segmentation of type {type(segmentation).__name__}")
    decoded = []
    for rle in rles:
        if "size" not in rle or "counts" not in rle:
            raise ValueError(f"{where}RLE segmentation needs 'size' and 'counts', got keys {sorted(rle)}")
        rle_height, rle_width = (int(v) for v in rle["size"])
        counts = rle["counts"]
        if isinstance(counts, list):
            rle = coco_mask.frPyObjects(rle, rle_height, rle_width)
        else:
            rle = {
                "size": [rle_height, rle_width],
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
        decoded.append(coco_mask.decode(rle).astype(bool))
    mask = decoded[0]
    for other in decoded[1:]:
        if other.shape != mask.shape:
            raise ValueError(
                f"{where}RLE parts of one segmentation differ in size: {mask.shape} vs {other.shape}"
            )
        mask = mask | other
    return mask


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a (H, W) bool mask, JSON-ready (``counts`` as str)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
