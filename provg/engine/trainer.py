"""Training loop (Sec. 5.1): AdamW, step schedule by epoch, per-epoch validation, best-by-validation.

The validation score that picks the best epoch is the mean of RSREC Pr@0.5 and RSRES mIoU.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from provg.data import collate, load_dataset
from provg.losses import ProVGLoss
from provg.models import ProVG, create_model

from .config import TrainConfig
from .evaluate import evaluate, predict_batch

__all__ = ["TrainResult", "resolve_device", "seed_everything", "train"]


@dataclass
class TrainResult:
    model: ProVG
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seconds: float = 0.0
    steps: int = 0
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return device


def _score(metrics: dict[str, float]) -> float:
    return 0.5 * (metrics["rec/Pr@0.5"] + metrics["res/mIoU"])


def normalized_boxes(boxes_xyxy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel xyxy → normalized (cx, cy, w, h), the box head's target."""
    x0, y0, x1, y1 = boxes_xyxy.unbind(-1)
    return torch.stack(
        [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], -1
    )


def train(
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = print,
    model: ProVG | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; returns the best-by-validation model and history."""
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model = model or create_model(config.model, **config.model_overrides)
    model.to(device)
    size = model.config.image_size
    train_set = load_dataset(
        config.dataset, config.data_root, config.train_split, image_size=size, **config.dataset_options
    )
    val_set = load_dataset(
        config.dataset, config.data_root, config.val_split, image_size=size, **config.dataset_options
    )
    if config.val_limit is not None:
        val_set = Subset(val_set, range(min(config.val_limit, len(val_set))))
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
        num_workers=config.num_workers,
        generator=generator,
    )
    val_loader = DataLoader(
        val_set, batch_size=config.eval_batch_size, collate_fn=collate, num_workers=config.num_workers
    )
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_set)} training samples is fewer than one batch of {config.batch_size}")
    criterion = ProVGLoss(config.loss_config())
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=config.milestones, gamma=config.gamma
    )
    log(
        f"training {config.model} on {config.dataset} ({len(train_set)} train / {len(val_set)} val samples) "
        f"on {device}: {config.epochs} epochs × {len(train_loader)} steps, parser '{model.config.parser}'"
        + (" (gold decompositions)" if config.gold_decompositions else "")
    )
    result = TrainResult(model)
    best_state = None
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        totals: dict[str, float] = {}
        steps = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress)
        for batch in bar:
            images = batch["image"].to(device)
            height, width = images.shape[-2:]
            targets = normalized_boxes(batch["box"].to(device), height, width)
            output = predict_batch(model, batch, device, config.gold_decompositions)
            losses = criterion(output.boxes, output.mask_logits, targets, batch["mask"].to(device))
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
            optimizer.step()
            result.steps += 1
            steps += 1
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}")
            if config.max_minutes is not None and time.perf_counter() - start > 60 * config.max_minutes:
                result.stopped_early = True
                break
        scheduler.step()
        metrics = evaluate(model, val_loader, device, config.gold_decompositions, progress, f"val {epoch}")
        record = {
            "epoch": epoch,
            **{f"train/{k}": v / max(steps, 1) for k, v in totals.items()},
            **{f"val/{k}": v for k, v in metrics.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        result.history.append(record)
        score = _score(metrics)
        log(
            f"epoch {epoch:3d}  loss {record['train/loss']:.4f}  "
            f"val REC Pr@0.5 {metrics['rec/Pr@0.5']:6.2f}  RES mIoU {metrics['res/mIoU']:6.2f}  "
            f"({record['seconds']:.0f} s)"
        )
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        if result.stopped_early:
            log(f"stopped after {config.max_minutes} minutes (max_minutes), in epoch {epoch}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
