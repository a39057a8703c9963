"""Training loop (Sec. 5.1): AdamW, step schedule by epoch, per-epoch validation, best-by-validation,
on one process or many (``torchrun``: DDP, NCCL on GPU, gloo on CPU).

Each epoch ends with a validation and a checkpoint (`provg.engine.checkpoint`; also every
``checkpoint_every`` steps); ``train(config, resume=PATH)`` continues a run from a checkpoint with the
same weights, optimizer, schedule, RNG and data position, so it finishes as the uninterrupted run would.
Per-epoch metrics go to ``<out_dir>/metrics.csv`` and TensorBoard (``<out_dir>/tensorboard``); only rank 0
writes files and shows progress bars. The validation score that picks the best epoch is the mean of
RSREC Pr@0.5 and RSRES mIoU (RSREC Pr@0.5 alone on box-only benchmarks).
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from provg.data import collate, load_dataset
from provg.files import atomic_write_text
from provg.losses import ProVGLoss
from provg.models import ProVG, create_model
from provg.models.pretrained import WEIGHTS_FILE

from .checkpoint import capture_rng, find_checkpoint, load_training_state, restore_rng, save_checkpoint
from .config import TrainConfig
from .distributed import Distributed, ResumableSampler, resolve_device, setup_distributed
from .evaluate import evaluate_dataset, predict_batch
from .inference import amp_context

__all__ = [
    "TrainResult",
    "evaluate_split",
    "load_split",
    "normalized_boxes",
    "resolve_device",
    "seed_everything",
    "train",
]


@dataclass
class TrainResult:
    model: ProVG
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seconds: float = 0.0
    steps: int = 0
    stopped_early: bool = False
    out_dir: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def enable_determinism() -> None:
    """Deterministic kernels everywhere (an op without one raises rather than silently varying)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def _score(metrics: dict[str, float]) -> float:
    if math.isnan(metrics["res/mIoU"]):
        return metrics["rec/Pr@0.5"]
    return 0.5 * (metrics["rec/Pr@0.5"] + metrics["res/mIoU"])


def normalized_boxes(boxes_xyxy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel xyxy → normalized (cx, cy, w, h), the box head's target."""
    x0, y0, x1, y1 = boxes_xyxy.unbind(-1)
    return torch.stack(
        [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], -1
    )


class _MetricLog:
    """Per-epoch records to ``metrics.csv`` and TensorBoard, per-step losses to TensorBoard."""

    def __init__(
        self, out_dir: Path, tensorboard: bool, enabled: bool, resumed_step: int | None = None
    ) -> None:
        self.path = out_dir / "metrics.csv"
        self.enabled = enabled
        self.writer = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run drops the events logged after its checkpoint (steps it will replay).
            purge = None if resumed_step is None else resumed_step + 1
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def step(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def epoch(self, history: list[dict[str, Any]], step: int) -> None:
        """Rewrite metrics.csv from the whole ``history`` (a resumed run's history comes from its
        checkpoint, so the file never holds an epoch twice) and log the newest record to TensorBoard at
        global ``step``."""
        if not self.enabled:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in history for k in r)))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.path, buffer.getvalue())
        record = history[-1]
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def load_split(config: TrainConfig, split: str, image_size: int, evaluation: bool = False) -> Dataset:
    """The ``split`` of the config's dataset at the network input size; an evaluation split keeps the
    original-resolution targets when ``eval_resolution`` is "original"."""
    options = dict(config.dataset_options)
    if evaluation and config.eval_resolution == "original":
        options["keep_original"] = True
    return load_dataset(config.dataset, config.data_root, split, image_size=image_size, **options)


def evaluate_split(
    model: ProVG,
    dataset: Dataset,
    config: TrainConfig,
    distributed: Distributed,
    progress: bool,
    description: str,
) -> dict[str, float]:
    """`evaluate_dataset` with the config's batch size, resolution, workers and autocast."""
    return evaluate_dataset(
        model,
        dataset,
        config.eval_batch_size,
        distributed.device,
        distributed,
        config.gold_decompositions,
        progress,
        description,
        config.eval_resolution,
        config.num_workers,
        config.amp,
    )


def train(
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = print,
    model: ProVG | None = None,
    resume: str | Path | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; returns the best-by-validation model and history.

    ``resume``: a checkpoint directory, or a run folder (its ``last`` checkpoint), to continue from.
    Run under ``torchrun --nproc_per_node N`` for data-parallel training (``batch_size`` is per process).
    """
    distributed = setup_distributed(config.device)
    device = distributed.device
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    if config.deterministic:
        enable_determinism()
    model = model or create_model(config.model, **config.model_overrides)
    model.to(device)
    train_set = load_split(config, config.train_split, model.config.image_size)
    val_set = load_split(config, config.val_split, model.config.image_size, evaluation=True)
    if config.val_limit is not None:
        val_set = Subset(val_set, range(min(config.val_limit, len(val_set))))
    sampler = ResumableSampler(train_set, distributed.world, distributed.rank, config.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate,
        num_workers=config.num_workers,
    )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training samples over {distributed.world} process(es) is fewer than one batch "
            f"of {config.batch_size} each; lower batch_size"
        )
    network = DistributedDataParallel(model) if distributed.enabled else model
    criterion = ProVGLoss(config.loss_config())
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=config.milestones, gamma=config.gamma
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    out_dir = Path(config.out_dir)
    if resume is None and (out_dir / "last").is_symlink():
        raise FileExistsError(
            f"{out_dir} already holds a run (last -> {os.readlink(out_dir / 'last')}); pass --resume to "
            "continue it, or choose another out_dir (--set out_dir=...) so its checkpoints are kept"
        )
    result = TrainResult(model, out_dir=out_dir)
    first_epoch, skip_batches = 1, 0
    if resume is not None:
        first_epoch, skip_batches = _resume(
            resume, model, optimizer, scheduler, scaler, result, distributed, log
        )
    metric_log = _MetricLog(
        out_dir, config.tensorboard, distributed.main, result.steps if resume is not None else None
    )
    say = log if distributed.main else (lambda message: None)
    say(
        f"training {config.model} on {config.dataset} ({len(train_set)} train / {len(val_set)} val samples) "
        f"on {distributed.world} × {device}: {config.epochs} epochs × {steps_per_epoch} steps of "
        f"{config.batch_size}, parser '{model.config.parser}'"
        + (" (gold decompositions)" if config.gold_decompositions else "")
        + (f", resumed at epoch {first_epoch} batch {skip_batches}" if resume is not None else "")
    )

    def checkpoint(completed_epochs: int, batch: int, best: bool = False) -> None:
        rngs = distributed.gather(capture_rng())
        metric_log.flush()  # the logs on disk reach at least the checkpoint; a resume purges what follows
        if distributed.main:
            state = {
                "epoch": completed_epochs,
                "batch": batch,
                "global_step": result.steps,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "world": distributed.world,
                "config": config.to_dict(),
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_score": result.best_score,
            }
            save_checkpoint(out_dir, model, state, best=best)
        distributed.barrier()

    start = time.perf_counter()
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            sampler.set_epoch(epoch)
            done = skip_batches if epoch == first_epoch else 0
            sampler.skip = done * config.batch_size
            totals: dict[str, float] = {}
            steps = 0
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch}/{config.epochs}",
                leave=False,
                initial=done,
                total=steps_per_epoch,
                disable=not (progress and distributed.main),
            )
            for batch in bar:
                losses = _step(network, batch, device, config, criterion, optimizer, scaler, parameters)
                result.steps += 1
                steps += 1
                done += 1
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + value
                metric_log.step(result.steps, {f"step/{k}": v for k, v in losses.items()})
                bar.set_postfix(loss=f"{losses['loss']:.3f}")
                if config.max_minutes is not None and time.perf_counter() - start > 60 * config.max_minutes:
                    result.stopped_early = True
                    break
                if (
                    config.checkpoint_every
                    and result.steps % config.checkpoint_every == 0
                    and done < steps_per_epoch
                ):
                    checkpoint(epoch - 1, done)
            scheduler.step()
            metrics = evaluate_split(model, val_set, config, distributed, progress, f"val {epoch}")
            record = {
                "epoch": epoch,
                **{f"train/{k}": v / max(steps, 1) for k, v in totals.items()},
                **{f"val/{k}": v for k, v in metrics.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
            result.history.append(record)
            metric_log.epoch(result.history, result.steps)
            score = _score(metrics)
            say(
                f"epoch {epoch:3d}  loss {record.get('train/loss', math.nan):.4f}  "
                f"val REC Pr@0.5 {metrics['rec/Pr@0.5']:6.2f}  RES mIoU {metrics['res/mIoU']:6.2f}  "
                f"({record['seconds']:.0f} s)"
            )
            is_best = score > result.best_score
            if is_best:
                result.best_score, result.best_epoch = score, epoch
            checkpoint(epoch, 0, best=is_best)
            if result.stopped_early:
                say(f"stopped after {config.max_minutes} minutes (max_minutes), in epoch {epoch}")
                break
    finally:
        metric_log.close()
    best = out_dir / "best"
    if best.exists():
        load_model(model, str(best / WEIGHTS_FILE), strict=True, device=str(device))
    result.seconds = time.perf_counter() - start
    return result


def _step(
    network: torch.nn.Module,
    batch: dict[str, Any],
    device: torch.device,
    config: TrainConfig,
    criterion: ProVGLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: list[torch.nn.Parameter],
) -> dict[str, float]:
    """One optimizer step on ``batch``; returns the loss terms."""
    images = batch["image"].to(device)
    height, width = images.shape[-2:]
    targets = normalized_boxes(batch["box"].to(device), height, width)
    masks = batch["mask"].to(device) if "mask" in batch else None
    with amp_context(device, config.amp):
        output = predict_batch(network, batch, device, config.gold_decompositions)
        losses = criterion(output.boxes.float(), output.mask_logits.float(), targets, masks)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    if config.clip_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return {key: float(value.detach()) for key, value in losses.items()}


def _resume(
    path: str | Path,
    model: ProVG,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    result: TrainResult,
    distributed: Distributed,
    log: Callable[[str], None],
) -> tuple[int, int]:
    """Load a checkpoint into the run; returns (epoch to continue, batches of it already done)."""
    folder = find_checkpoint(path)
    state = load_training_state(folder)
    load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(distributed.device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    if state["world"] != distributed.world:
        log(
            f"warning: {folder} was written by {state['world']} process(es), this run has "
            f"{distributed.world}: the data order differs from an uninterrupted run"
        )
    restore_rng(rngs[distributed.rank % len(rngs)])
    result.history = list(state["history"])
    result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
    result.steps = state["global_step"]
    if distributed.main:
        log(
            f"resuming from {folder}: epoch {state['epoch']} done, "
            f"batch {state['batch']}, step {result.steps}"
        )
    return state["epoch"] + 1, state["batch"]
