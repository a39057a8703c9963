"""Saving and loading ProVG models as a directory: ``config.json`` (the `ProVGConfig`) and
``model.safetensors`` (every parameter and persistent buffer).

safetensors holds raw tensors only, so loading a model never runs code from the file. Both files are
written atomically (`provg.files`); loading checks the format marker, refuses missing, truncated or
mismatched weights with an error naming the file, and never reaches for a network hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from provg.files import atomic_path, atomic_write_text

from .config import ProVGConfig

if TYPE_CHECKING:
    from .provg import ProVG

__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "load_pretrained", "read_config", "save_pretrained"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "provg-model/1"


def save_pretrained(model: ProVG, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed); ``metadata`` (JSON-able) goes into
    config.json beside the configuration. Returns the directory."""
    import provg

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT,
        "provg_version": provg.__version__,
        "config": model.config.to_dict(),
        "metadata": metadata or {},
    }
    with atomic_path(directory / WEIGHTS_FILE) as temporary:
        save_model(model, str(temporary), metadata={"format": FORMAT})
    atomic_write_text(directory / CONFIG_FILE, json.dumps(document, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> tuple[ProVGConfig, dict[str, Any]]:
    """The `ProVGConfig` and metadata stored in ``directory/config.json``."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: a ProVG model directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(written by model.save_pretrained)"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); the file is truncated or corrupt") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"{path}: not a ProVG model config (format {found!r}, expected {FORMAT!r})")
    return ProVGConfig.from_dict(document["config"]), document.get("metadata", {})


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> ProVG:
    """The model saved in ``directory``, on ``device``. ``overrides`` change configuration fields that do
    not change the weights (e.g. ``parser="nltk"``, ``text_cache_size=0``)."""
    from .provg import ProVG

    config, _ = read_config(directory)
    model = ProVG(config.replace(**overrides) if overrides else config)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (written by model.save_pretrained)")
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path}: cannot read the weights, the file is truncated or corrupt ({error})"
        ) from error
    except RuntimeError as error:  # tensor shapes differ from the configured model's
        raise ValueError(f"{path} does not match the configuration in {CONFIG_FILE}: {error}") from error
    if missing or unexpected:
        missing, unexpected = sorted(missing), sorted(unexpected)
        raise ValueError(
            f"{path} does not match the configuration in {CONFIG_FILE}: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    return model.to(device)
