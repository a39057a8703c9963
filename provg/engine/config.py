"""Training configuration: a dataclass with the paper's defaults, loadable from YAML with overrides.

``load_config("configs/synthrs_tiny.yaml", ["lr=1e-3", "loss.lambda_cons=0.2"])``; a dotted key sets a
field of a nested section (``model_overrides``, ``loss``, ``dataset_options``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provg.losses import LossConfig

__all__ = ["AMP_MODES", "TrainConfig", "load_config", "parse_override"]

AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run needs (defaults: the paper, Sec. 5.1: AdamW, lr 3e-5, weight decay
    0.01, 70 epochs, lr × 0.1 after epochs 50 and 60).

    amp: "none", "bf16" (autocast, any device) or "fp16" (CUDA, with gradient scaling).
    eval_resolution: "input" (the network input, as LAVT/RMSIN) or "original" (each image's own size).
    deterministic: ``torch.use_deterministic_algorithms`` (bitwise-repeatable runs, slower on GPU).
    checkpoint_every: also checkpoint every this many steps (0: only at the end of each epoch); a run
    resumed from a mid-epoch checkpoint skips the batches it already trained on.
    max_minutes: stop after this much training time; the partial epoch is validated and counts as done.
    """

    model: str = "provg_swin_b"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)

    dataset: str = "rrsisd"
    data_root: str = "data/rrsisd"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    gold_decompositions: bool = False

    epochs: int = 70
    milestones: list[int] = field(default_factory=lambda: [50, 60])
    gamma: float = 0.1
    lr: float = 3e-5
    weight_decay: float = 0.01
    batch_size: int = 8
    eval_batch_size: int = 32
    clip_grad_norm: float | None = None
    amp: str = "none"
    max_minutes: float | None = None
    val_limit: int | None = None
    eval_resolution: str = "input"

    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    num_workers: int = 0
    out_dir: str = "runs/train"
    checkpoint_every: int = 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        LossConfig(**self.loss)  # validates names and values early
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if sorted(self.milestones) != list(self.milestones) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.eval_resolution not in ("input", "original"):
            raise ValueError(f"eval_resolution must be 'input' or 'original', got {self.eval_resolution!r}")
        if self.checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 (0: at the end of each epoch), got {self.checkpoint_every}"
            )

    def loss_config(self) -> LossConfig:
        return LossConfig(**self.loss)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(value: Any) -> Any:
    """YAML 1.1 reads "1e-3" as a string; read such strings as numbers."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. lr=1e-4 or loss.lambda_cons=0.2)")
    key, value = text.split("=", 1)
    return key.strip().split("."), _number(yaml.safe_load(value))


def _check_types(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers written as strings become numbers; a value of the wrong kind raises naming the key."""
    checked = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in values:
            continue
        value = values[f.name]
        kind = str(f.type)
        if kind.startswith(("float", "int")) and value is not None:
            value = _number(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"config key {f.name!r} needs a number, got {values[f.name]!r}")
            if kind.startswith("int") and not float(value).is_integer():
                raise ValueError(f"config key {f.name!r} needs a whole number, got {values[f.name]!r}")
            value = int(value) if kind.startswith("int") else float(value)
        elif kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"config key {f.name!r} needs true or false, got {values[f.name]!r}")
        elif kind == "dict[str, Any]" and isinstance(value, dict):
            value = {k: _number(v) for k, v in value.items()}
        checked[f.name] = value
    return checked


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A `TrainConfig` from a YAML file (or the defaults) with ``key=value`` overrides applied."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config must be a YAML mapping, got {type(loaded).__name__}")
        values.update(loaded)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for override in overrides or []:
        keys, value = parse_override(override)
        target = values
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {override!r}: {key} is not a section")
        target[keys[-1]] = value
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(names)}")
    return TrainConfig(**_check_types(values))
