"""Prediction overlays: the image with the predicted mask tinted, the predicted and ground-truth boxes,
and the expression written above it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_prediction"]

PRED_COLOUR = (255, 64, 64)
GT_COLOUR = (64, 255, 96)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if len(candidate) > width and line:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def draw_prediction(
    image: torch.Tensor,
    text: str,
    pred_box: torch.Tensor,
    pred_mask: torch.Tensor,
    gt_box: torch.Tensor | None = None,
    caption: str = "",
    scale: int = 3,
) -> Image.Image:
    """An RGB overlay (image 3×H×W in [0, 1]; boxes xyxy pixels; mask H×W bool), enlarged ``scale``×.

    Red: prediction (tinted mask, box); green: ground-truth box.
    """
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.float32)
    mask = pred_mask.cpu().numpy().astype(bool)
    array[mask] = 0.55 * array[mask] + 0.45 * np.array(PRED_COLOUR, np.float32)
    picture = Image.fromarray(array.astype(np.uint8)).resize(
        (image.shape[-1] * scale, image.shape[-2] * scale), Image.NEAREST
    )
    font = ImageFont.load_default()
    lines = _wrap(text, max(20, picture.width // 7)) + ([caption] if caption else [])
    band = 14 * len(lines) + 6
    canvas = Image.new("RGB", (picture.width, picture.height + band), (20, 20, 20))
    canvas.paste(picture, (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 3 + 14 * i), line, fill=(235, 235, 235), font=font)
    for box, colour in ((gt_box, GT_COLOUR), (pred_box, PRED_COLOUR)):
        if box is None:
            continue
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0 + band, x1, y1 + band], outline=colour, width=2)
    return canvas


def save_prediction(path: str | Path, *args, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_prediction(*args, **kwargs).save(path)
    return path
