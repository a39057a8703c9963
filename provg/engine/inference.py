"""Grounding one expression in one image file: ``provg predict``.

The image is resized to the network input and normalized as in training; the predicted box is mapped
back to the image's own pixels and the mask logits are upsampled (bilinear) to its size before
thresholding. `save_prediction_files` writes ``prediction.json`` (box, image size, cues), ``mask.png``
(0/255) and ``overlay.png``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from provg.data.io import load_image
from provg.data.transforms import model_transform
from provg.files import atomic_write_text
from provg.models import ProVG

from .visualize import draw_prediction

__all__ = ["Prediction", "amp_context", "model_input", "predict_image", "save_prediction_files"]


@dataclass
class Prediction:
    """A grounding result in the pixels of the original image."""

    text: str
    box: list[float]  # x0, y0, x1, y1
    mask: torch.Tensor  # (H, W) bool
    image: torch.Tensor  # (3, H, W) in [0, 1]
    spatial_cues: list[str]
    attribute_cues: list[str]

    def to_dict(self, image_path: str | None = None) -> dict:
        height, width = self.mask.shape
        return {
            "image": image_path,
            "text": self.text,
            "box_xyxy": [round(v, 2) for v in self.box],
            "image_size": {"height": height, "width": width},
            "mask_pixels": int(self.mask.sum()),
            "spatial_cues": self.spatial_cues,
            "attribute_cues": self.attribute_cues,
        }


def model_input(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """The (1, 3, S, S) network input of an image (3, H, W) in [0, 1]."""
    return model_transform(image_size)({"image": image, "box": torch.zeros(4)})["image"][None]


def amp_context(device: torch.device, amp: str = "none"):
    """Autocast for ``amp``: "none" (fp32), "bf16" (CPU or GPU) or "fp16" (GPU only); used by training,
    evaluation and prediction alike."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.inference_mode()
def predict_image(model: ProVG, image: str | Path | torch.Tensor, text: str, amp: str = "none") -> Prediction:
    """Ground ``text`` in ``image`` (a file, or a 3×H×W tensor in [0, 1]); ``amp`` as `amp_context`."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the expression must be a non-empty string, got {text!r}")
    picture = load_image(image) if not isinstance(image, torch.Tensor) else image
    device = next(model.parameters()).device
    model.eval()
    with amp_context(device, amp):
        output = model(model_input(picture, model.config.image_size).to(device), [text])
    height, width = picture.shape[-2:]
    size = model.config.image_size
    box = output.boxes_xyxy()[0].float().cpu() * torch.tensor([width / size, height / size] * 2)
    logits = F.interpolate(output.mask_logits.float(), size=(height, width), mode="bilinear")
    mask = (logits[0, 1] > logits[0, 0]).cpu()
    decomposition = model.parse([text])[0]
    return Prediction(
        text,
        [float(v) for v in box],
        mask,
        picture,
        [cue.text for cue in decomposition.spatial],
        [cue.text for cue in decomposition.attributes],
    )


def save_prediction_files(prediction: Prediction, out_dir: str | Path, image_path: str | None = None) -> dict:
    """Write ``prediction.json``, ``mask.png`` and ``overlay.png`` to ``out_dir``; returns the JSON dict
    with the written paths under ``files``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_path = out_dir / "mask.png"
    Image.fromarray(prediction.mask.numpy().astype(np.uint8) * 255).save(mask_path)
    overlay_path = out_dir / "overlay.png"
    scale = max(1, round(384 / max(prediction.mask.shape)))
    caption = "red: ProVG"
    if prediction.spatial_cues or prediction.attribute_cues:
        caption += f" | spatial {prediction.spatial_cues} | attribute {prediction.attribute_cues}"
    draw_prediction(
        prediction.image, prediction.text, torch.tensor(prediction.box), prediction.mask, None, caption, scale
    ).save(overlay_path)
    document = prediction.to_dict(image_path)
    document["files"] = {"mask": str(mask_path), "overlay": str(overlay_path)}
    atomic_write_text(out_dir / "prediction.json", json.dumps(document, indent=2) + "\n")
    return document
