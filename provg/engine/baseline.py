"""The category baseline: the box and mask of a random object of the referred category.

It knows the category (the annotation's) but ignores the spatial and attribute cues, so on a benchmark
where every target shares its category with distractors it measures what those cues are worth.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from provg.data import RRSISD
from provg.metrics import GroundingEvaluator

__all__ = ["category_baseline"]


def category_baseline(dataset: RRSISD, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """RSREC and RSRES metrics of picking, per sample, a random same-category object (seeded)."""
    rng = np.random.default_rng(seed)
    evaluator = GroundingEvaluator()
    for index in tqdm(range(len(dataset)), desc="baseline", leave=False, disable=not progress):
        sample = dataset[index]
        candidates = dataset.category_instances(index)
        guess = candidates[int(rng.integers(len(candidates)))]
        evaluator.update(
            pred_boxes=guess["box"][None],
            gt_boxes=sample["box"][None],
            pred_masks=guess["mask"][None],
            gt_masks=sample["mask"][None],
        )
    return evaluator.compute()
