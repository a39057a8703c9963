"""Reading the files of the benchmarks (images, masks, text files) with errors that name the file, and the
box of a mask.

Missing files raise `FileNotFoundError`, undecodable ones `ValueError`; both messages start with or
contain the path, so a broken sample in a 50k-sample split can be found and fixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from provg.ops.mask_to_box import mask_to_box

__all__ = ["image_size", "load_image", "load_mask", "mask_box", "read_lines"]


def load_image(path: str | Path) -> torch.Tensor:
    """An RGB image as a 3×H×W float tensor in [0, 1]."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot decode image ({error})") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, read from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot decode image ({error})") from error
    return height, width


def load_mask(path: str | Path, threshold: int) -> np.ndarray:
    """A (H, W) bool mask: the pixels of the grayscale image at ``path`` with a value above ``threshold``."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"))
    except FileNotFoundError:
        raise FileNotFoundError(f"mask not found: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot decode mask ({error})") from error
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


def read_lines(path: str | Path, what: str = "annotation file") -> list[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark is dropped, line ends removed)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    return text.splitlines()
