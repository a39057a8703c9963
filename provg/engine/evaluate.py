"""Evaluation loop: runs a model over a dataset and streams its predictions into `GroundingEvaluator`.

Metrics are computed at the network input resolution, as LAVT/RMSIN do (the ground-truth masks were
resized nearest by the dataset transform).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm import tqdm

from provg.metrics import GroundingEvaluator
from provg.models import GroundingOutput

__all__ = ["evaluate", "predict_batch"]


def predict_batch(
    model: torch.nn.Module, batch: dict[str, Any], device: torch.device, gold_decompositions: bool = False
) -> GroundingOutput:
    """Forward one collated batch (images moved to ``device``)."""
    decompositions = batch.get("decomposition") if gold_decompositions else None
    return model(batch["image"].to(device), list(batch["text"]), decompositions=decompositions)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    gold_decompositions: bool = False,
    progress: bool = True,
    description: str = "eval",
    on_batch: Callable[[dict[str, Any], GroundingOutput], None] | None = None,
) -> dict[str, float]:
    """RSREC and RSRES metrics (percent) of ``model`` over ``batches``; ``on_batch`` sees every prediction."""
    was_training = model.training
    model.eval()
    evaluator = GroundingEvaluator()
    try:
        for batch in tqdm(batches, desc=description, leave=False, disable=not progress):
            output = predict_batch(model, batch, device, gold_decompositions)
            evaluator.update(
                pred_boxes=output.boxes_xyxy().float().cpu(),
                gt_boxes=batch["box"],
                pred_masks=output.masks().cpu(),
                gt_masks=batch["mask"],
            )
            if on_batch is not None:
                on_batch(batch, output)
    finally:
        model.train(was_training)
    return evaluator.compute()
