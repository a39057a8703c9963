"""Training checkpoints that resume exactly and load safely.

A checkpoint is a directory ``<out_dir>/checkpoints/epoch-EEE-step-SSSSSSS/`` holding the model as
`ProVG.save_pretrained` writes it (``config.json`` + ``model.safetensors``) and ``training_state.pt``:
optimizer, scheduler and gradient-scaler states, the position in the data (epoch, batches done), the
RNG states of torch, CUDA, numpy and ``random``, the training config and the metric history. It is
written to a temporary folder and renamed into place, then the ``last`` (and, on a new best validation
score, ``best``) symbolic links in ``<out_dir>`` are switched to it atomically; checkpoints no link
points at are deleted. A kill at any moment leaves ``last`` at a complete checkpoint.

``training_state.pt`` is read with ``torch.load(weights_only=True)``: only tensors and plain containers
are admitted, so a crafted file cannot execute code; a truncated file is refused with a clear error.
"""

from __future__ import annotations

import pickle
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from provg.files import atomic_directory, atomic_path, replace_symlink
from provg.models import ProVG
from provg.models.pretrained import WEIGHTS_FILE, load_pretrained, save_pretrained

__all__ = [
    "STATE_FILE",
    "TrainingState",
    "capture_rng",
    "find_checkpoint",
    "load_checkpoint_model",
    "load_training_state",
    "restore_rng",
    "save_checkpoint",
]

STATE_FILE = "training_state.pt"
STATE_FORMAT = "provg-train-state/1"
TrainingState = dict[str, Any]


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device), numpy and ``random``, as plain data."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """MultiStepLR keeps its milestones in a Counter, which ``weights_only`` loading refuses."""
    return {key: (dict(value) if isinstance(value, Counter) else value) for key, value in state.items()}


def _scheduler_state_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    return {key: (Counter(value) if key == "milestones" else value) for key, value in state.items()}


def _name(epoch: int, step: int) -> str:
    return f"epoch-{epoch:03d}-step-{step:07d}"


def save_checkpoint(
    out_dir: str | Path,
    model: ProVG,
    state: TrainingState,
    best: bool = False,
) -> Path:
    """Write a checkpoint of ``model`` and ``state`` under ``out_dir`` and point ``last`` (and ``best``
    when ``best``) at it. ``state`` holds at least ``epoch``, ``batch`` and ``global_step``; its
    ``scheduler`` entry may be a raw ``state_dict()``. Returns the checkpoint directory."""
    out_dir = Path(out_dir)
    state = dict(state, format=STATE_FORMAT)
    if "scheduler" in state and state["scheduler"] is not None:
        state["scheduler"] = _plain_scheduler_state(state["scheduler"])
    target = out_dir / "checkpoints" / _name(state["epoch"], state["global_step"])
    if target.exists():
        shutil.rmtree(target)  # a rerun of the same step after a resume: same content, replace it
    with atomic_directory(target) as folder:
        save_pretrained(
            model, folder, metadata={"epoch": state["epoch"], "global_step": state["global_step"]}
        )
        with atomic_path(folder / STATE_FILE) as temporary:
            torch.save(state, temporary)
    relative = Path("checkpoints") / target.name
    replace_symlink(out_dir / "last", relative)
    if best:
        replace_symlink(out_dir / "best", relative)
    _prune(out_dir)
    return target


def _prune(out_dir: Path) -> None:
    """Delete checkpoints that neither ``last`` nor ``best`` points at."""
    kept = {(out_dir / link).resolve() for link in ("last", "best") if (out_dir / link).exists()}
    for folder in (out_dir / "checkpoints").iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder.resolve() not in kept:
            shutil.rmtree(folder)


def find_checkpoint(path: str | Path, prefer: str = "last") -> Path:
    """The checkpoint directory ``path`` names: a checkpoint (or `save_pretrained` model directory)
    itself, or a run folder, whose ``prefer`` ("last" or "best") checkpoint is taken, else the other."""
    path = Path(path)
    if (path / STATE_FILE).is_file() or (path / WEIGHTS_FILE).is_file():
        return path.resolve()
    other = "best" if prefer == "last" else "last"
    for link in (prefer, other):
        if (path / link).exists():
            return (path / link).resolve()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raise FileNotFoundError(
        f"{path} is neither a checkpoint (with {STATE_FILE} or {WEIGHTS_FILE}) nor a run folder with a "
        "'last' or 'best' checkpoint"
    )


def load_training_state(checkpoint: str | Path) -> TrainingState:
    """The training state of ``checkpoint``, loaded with ``weights_only=True``."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {checkpoint} holds weights only and cannot be resumed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"{path}: refused to load, it holds objects other than tensors and plain data (a checkpoint "
            f"from an untrusted source?): {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"{path}: cannot read the training state, the file is truncated or corrupt ({error})"
        ) from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a provg training state (expected format {STATE_FORMAT!r})")
    if state.get("scheduler") is not None:
        state["scheduler"] = _scheduler_state_from_plain(state["scheduler"])
    return state


def load_checkpoint_model(
    checkpoint: str | Path, device: str | torch.device = "cpu", prefer: str = "best", **overrides: Any
) -> ProVG:
    """The model of a checkpoint or model directory, or of a run folder's ``prefer`` checkpoint."""
    return load_pretrained(find_checkpoint(checkpoint, prefer), device, **overrides)
