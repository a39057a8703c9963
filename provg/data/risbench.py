"""RISBench reader (DESIGN §4): ``img_rgb/<id>.png`` (512×512 RGB), ``mask/<id>.png`` (grayscale, 0 or
255) and ``output_phrase_{train,val,test}.txt`` with lines ``<id> <phrase>`` split at the first space.

Splits 26,300 / 10,013 / 16,159 samples. The benchmark has no boxes: the box is the enclosing box of the
mask (pixel-edge convention of `provg.ops.mask_to_box`: x2 = last foreground column + 1). Foreground is
a mask value above 127. In the release, val and test phrase files name images whose ids start with
``train_``: images are looked up by the id as written, never by split. Empty masks and size mismatches:
see `provg.data.base.PhraseMaskDataset`.
"""

from __future__ import annotations

from .base import PhraseMaskDataset

__all__ = ["RISBench"]


class RISBench(PhraseMaskDataset):
    """RISBench samples of one split: ``image``, ``text``, ``box``, ``mask``, ``image_id``, ``sent_id``.

    Args:
        root: folder holding ``img_rgb/``, ``mask/`` and the ``output_phrase_*.txt`` files.
        split: "train", "val" or "test".
        transform: applied to each sample dict.
        empty_mask: "error" (default) or "zero_box" (see `PhraseMaskDataset`).
    """

    name = "risbench"
    image_dir = "img_rgb"
    mask_dir = "mask"
    image_suffix = ".png"
    mask_suffix = ".png"
    mask_threshold = 127
