"""Evaluation loops: a model over batches, streamed into `GroundingEvaluator`.

``resolution="input"`` (default) scores at the network input size, as LAVT/RMSIN do (the ground-truth
masks were resized nearest by the dataset transform); ``"original"`` upsamples the predicted mask
logits (bilinear) and scales the boxes to each image's original size and scores against the original
annotations (datasets loaded with ``keep_original=True``).

`evaluate_dataset` splits a dataset over the ranks of a `Distributed` run by whole batches and merges
the per-sample results in dataset order, so N processes report exactly the single-process numbers.
The text-feature cache is cleared first: the numbers never depend on what was evaluated before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from provg.data import collate
from provg.metrics import GroundingEvaluator
from provg.models import GroundingOutput

from .distributed import Distributed, ShardedBatches
from .inference import amp_context

__all__ = ["RESOLUTIONS", "evaluate", "evaluate_dataset", "predict_batch"]

RESOLUTIONS = ("input", "original")


def predict_batch(
    model: torch.nn.Module, batch: dict[str, Any], device: torch.device, gold_decompositions: bool = False
) -> GroundingOutput:
    """Forward one collated batch (images moved to ``device``)."""
    decompositions = batch.get("decomposition") if gold_decompositions else None
    return model(batch["image"].to(device), list(batch["text"]), decompositions=decompositions)


def _update(
    evaluator: GroundingEvaluator, batch: dict[str, Any], output: GroundingOutput, resolution: str
) -> None:
    has_masks = "mask" in batch
    if resolution == "input":
        evaluator.update(
            pred_boxes=output.boxes_xyxy().float().cpu(),
            gt_boxes=batch["box"],
            pred_masks=output.masks().cpu() if has_masks else None,
            gt_masks=batch["mask"] if has_masks else None,
        )
        return
    if "original_box" not in batch:
        raise KeyError(
            "resolution='original' needs samples with 'original_box' (and 'original_mask'): load the "
            "dataset with keep_original=True"
        )
    input_height, input_width = output.mask_logits.shape[-2:]
    boxes = output.boxes_xyxy().float().cpu()
    for i, (height, width) in enumerate(batch["original_size"]):
        box = boxes[i] * torch.tensor([width / input_width, height / input_height] * 2)
        pred_mask = gt_mask = None
        if has_masks:
            logits = F.interpolate(
                output.mask_logits[i : i + 1].float(), size=(height, width), mode="bilinear"
            )
            pred_mask = (logits[:, 1] > logits[:, 0]).cpu()
            gt_mask = batch["original_mask"][i][None]
        evaluator.update(box[None], batch["original_box"][i][None], pred_mask, gt_mask)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    gold_decompositions: bool = False,
    progress: bool = True,
    description: str = "eval",
    on_batch: Callable[[dict[str, Any], GroundingOutput], None] | None = None,
    resolution: str = "input",
    evaluator: GroundingEvaluator | None = None,
    amp: str = "none",
) -> dict[str, float]:
    """RSREC and RSRES metrics (percent) of ``model`` over ``batches``; ``on_batch`` sees every prediction;
    a given ``evaluator`` keeps the per-sample results; ``amp``: "none", "bf16" or "fp16" autocast."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    was_training = model.training
    model.eval()
    if hasattr(model, "text_encoder"):
        model.text_encoder.clear_cache()
    evaluator = evaluator if evaluator is not None else GroundingEvaluator()
    try:
        for batch in tqdm(batches, desc=description, leave=False, disable=not progress):
            with amp_context(device, amp):
                output = predict_batch(model, batch, device, gold_decompositions)
            _update(evaluator, batch, output, resolution)
            if on_batch is not None:
                on_batch(batch, output)
    finally:
        model.train(was_training)
    return evaluator.compute()


def evaluate_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    distributed: Distributed | None = None,
    gold_decompositions: bool = False,
    progress: bool = True,
    description: str = "eval",
    resolution: str = "input",
    num_workers: int = 0,
    amp: str = "none",
) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset``; with ``distributed``, each rank runs its share of the batches
    and every rank returns the metrics of the whole dataset."""
    distributed = distributed or Distributed()
    sampler = ShardedBatches(len(dataset), batch_size, distributed.world, distributed.rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    evaluator = GroundingEvaluator()
    evaluate(
        model,
        loader,
        device,
        gold_decompositions,
        progress and distributed.main,
        description,
        resolution=resolution,
        evaluator=evaluator,
        amp=amp,
    )
    order = torch.tensor([index for batch in sampler for index in batch], dtype=torch.long)
    shares = distributed.gather((evaluator.state(), order))
    merged = GroundingEvaluator.merge([state for state, _ in shares], [order for _, order in shares])
    return merged.compute()
