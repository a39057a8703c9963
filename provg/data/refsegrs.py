"""RefSegRS reader (DESIGN §4): ``images/<id>.tif``, ``masks/<id>.tif`` and
``output_phrase_{train,val,test}.txt`` with lines ``<id> <phrase>`` split at the first space.

Foreground is a mask value above 50 (the masks are not strictly binary). The benchmark has no boxes: the
box is the enclosing box of the mask (pixel-edge convention of `provg.ops.mask_to_box`: x2 = last
foreground column + 1). Empty masks and size mismatches: see `provg.data.base.PhraseMaskDataset`.
"""

from __future__ import annotations

from .base import PhraseMaskDataset

__all__ = ["RefSegRS"]


class RefSegRS(PhraseMaskDataset):
    """RefSegRS samples of one split: ``image``, ``text``, ``box``, ``mask``, ``image_id``, ``sent_id``.

    Args:
        root: folder holding ``images/``, ``masks/`` and the ``output_phrase_*.txt`` files.
        split: "train", "val" or "test".
        transform: applied to each sample dict.
        empty_mask: "error" (default) or "zero_box" (see `PhraseMaskDataset`).
    """

    name = "refsegrs"
    image_dir = "images"
    mask_dir = "masks"
    image_suffix = ".tif"
    mask_suffix = ".tif"
    mask_threshold = 50
