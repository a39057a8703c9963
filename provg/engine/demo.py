"""``provg demo``: generate synthrs, train provg_tiny on the CPU, evaluate RSREC and RSRES on the test
split next to the category baseline, print the paper's table and draw predictions to PNG files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from provg import configs
from provg.data import collate, load_dataset
from provg.data.synthrs import generate
from provg.data.transforms import denormalize
from provg.metrics import metric_table

from .baseline import category_baseline
from .config import load_config
from .evaluate import evaluate
from .trainer import train
from .visualize import save_prediction

__all__ = ["run_demo"]


_MARKER = ".provg-demo"


def _clear_previous_demo(out_dir: Path) -> None:
    """Delete the checkpoints and logs of an earlier demo in ``out_dir`` (marked by ``.provg-demo``);
    refuse to touch a folder holding another run."""
    if (out_dir / "last").is_symlink() and not (out_dir / _MARKER).is_file():
        raise FileExistsError(
            f"{out_dir} holds a training run that is not a demo; pass another --out to keep it"
        )
    for previous in ("last", "best", "checkpoints", "metrics.csv", "tensorboard"):
        path = out_dir / previous
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    (out_dir / _MARKER).write_text("written by provg demo: its checkpoints are replaced on the next demo\n")


def run_demo(
    out_dir: str | Path = "runs/demo",
    max_minutes: float | None = 10.0,
    overrides: list[str] | None = None,
    examples: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns the test metrics of the model and the baseline, and timings."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    config = load_config(
        configs.path("synthrs_tiny"),
        [
            f"data_root={out_dir / 'synthrs'}",
            f"out_dir={out_dir}",
            f"max_minutes={max_minutes}",
            *(overrides or []),
        ],
    )
    print(f"[1/4] generating synthrs (seed {config.seed}) in {config.data_root}")
    generate(config.data_root, seed=config.seed, progress=progress)
    print("[2/4] training")
    _clear_previous_demo(out_dir)
    result = train(config, progress=progress)
    model = result.model
    test_set = load_dataset(
        config.dataset, config.data_root, config.test_split, image_size=model.config.image_size
    )
    loader = DataLoader(test_set, batch_size=config.eval_batch_size, collate_fn=collate)
    print(f"[3/4] evaluating on the {len(test_set)} test samples (best epoch {result.best_epoch})")
    drawn: list[Path] = []

    def draw(batch: dict[str, Any], output) -> None:
        for i in range(len(batch["text"])):
            if len(drawn) >= examples:
                return
            caption = f"ref {batch['ref_id'][i]} - red: ProVG, green: ground truth"
            drawn.append(
                save_prediction(
                    out_dir / "predictions" / f"test_{len(drawn):03d}.png",
                    denormalize(batch["image"][i]),
                    batch["text"][i],
                    output.boxes_xyxy()[i].cpu(),
                    output.masks()[i].cpu(),
                    batch["box"][i],
                    caption,
                )
            )

    device = next(model.parameters()).device
    model_metrics = evaluate(
        model, loader, device, config.gold_decompositions, progress, "test", on_batch=draw
    )
    baseline_metrics = category_baseline(test_set, seed=config.seed, progress=progress)
    seconds = time.perf_counter() - start
    name = f"ProVG {config.model} ({model.config.parser})"
    print("[4/4] results on the synthrs test split (percent)")
    print(metric_table({name: model_metrics, "category baseline": baseline_metrics}))
    gain_rec = model_metrics["rec/Pr@0.5"] - baseline_metrics["rec/Pr@0.5"]
    gain_res = model_metrics["res/mIoU"] - baseline_metrics["res/mIoU"]
    print(
        f"gain over the baseline: RSREC Pr@0.5 {gain_rec:+.2f}, RSRES mIoU {gain_res:+.2f} "
        f"(parser: {model.config.parser}; trained {result.steps} steps in {result.seconds:.0f} s; "
        f"demo total {seconds:.0f} s)"
    )
    print(f"{len(drawn)} prediction overlays in {out_dir / 'predictions'}")
    summary = {
        "model": model_metrics,
        "baseline": baseline_metrics,
        "parser": model.config.parser,
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
        "steps": result.steps,
        "total_seconds": seconds,
        "history": result.history,
        "torch": torch.__version__,
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary
