"""Reading the files of the benchmarks (images, masks, text and JSON files) with errors that name the
file, and the box of a mask.

Missing files raise `FileNotFoundError`, undecodable ones `ValueError`; both messages start with or
contain the path, so a broken sample in a 50k-sample split can be found and fixed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from provg.ops.mask_to_box import mask_to_box

__all__ = ["image_size", "load_image", "load_mask", "mask_box", "read_json", "read_lines"]


@contextlib.contextmanager
def _open_image(path: str | Path, what: str) -> Iterator[Image.Image]:
    """The PIL image at ``path``; a missing or undecodable file raises naming it (``what``: image, mask)."""
    try:
        with Image.open(path) as image:
            yield image
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot decode {what} ({error})") from error


def load_image(path: str | Path) -> torch.Tensor:
    """An RGB image as a 3×H×W float tensor in [0, 1]."""
    with _open_image(path, "image") as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, read from its header only."""
    with _open_image(path, "image") as image:
        width, height = image.size
    return height, width


def load_mask(path: str | Path, threshold: int) -> np.ndarray:
    """A (H, W) bool mask: the pixels of the grayscale image at ``path`` with a value above ``threshold``."""
    with _open_image(path, "mask") as image:
        array = np.asarray(image.convert("L"))
    return array > threshold


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The enclosing box of a (H, W) bool mask, in the pixel-edge convention of `provg.ops.mask_to_box`
    (foreground columns c0..c1 give x0 = c0, x1 = c1 + 1), or None when the mask is empty."""
    # NOTE: the torch reference is forced so that PROVG_BACKEND (meant for the model's ops) cannot make
    # data loading depend on a compiled or GPU backend.
    box, valid = mask_to_box(torch.from_numpy(np.ascontiguousarray(mask)), backend="torch")
    if not bool(valid):
        return None
    x0, y0, x1, y1 = box.tolist()
    return x0, y0, x1, y1


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """The JSON document at ``path``; a missing file or invalid JSON raises naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def read_lines(path: str | Path, what: str = "annotation file") -> list[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark is dropped, line ends removed)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    return text.splitlines()
