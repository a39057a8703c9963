"""What each PCM step looks at (the paper's Fig. 3): ``provg explain``.

For every backbone stage, forward pre-hooks on the PCM's survey, locate and verify modules recompute
their gates with the reference formulas (`provg.ops.*_gate_values`) from the very inputs the model
gives them, and turn each into a spatial map at the stage's resolution:

- survey (Eq. 1–2): the P×C gate averaged over channels — where the global context raises features;
- locate (Eq. 3–4): the P×1 gate itself — where the spatial cues point;
- verify (Eq. 5–7): the gate is per channel (C×1), so the map is the norm over channels of the gated
  features ‖x ⊙ g‖ — where the channels the attribute cues keep are active.

`render_explanation` draws one row per stage: the image with the predicted box and mask, then the three
maps upsampled to the image and blended over it, each min–max scaled (its range is printed under it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from provg.models import ProVG
from provg.ops.locate_gate import locate_gate_values
from provg.ops.survey_gate import survey_gate_values
from provg.ops.verify_gate import verify_gate_values

from .inference import Prediction, model_input, predict_image
from .visualize import draw_prediction

__all__ = ["STEPS", "attention_maps", "explain_image", "render_explanation"]

STEPS = ("survey", "locate", "verify")
# A perceptually ordered colour ramp (dark blue → teal → yellow) for the maps.
_RAMP = np.array([[48, 18, 59], [40, 110, 180], [30, 180, 160], [160, 220, 60], [250, 240, 40]], np.float32)


def _survey_map(module, args) -> torch.Tensor:
    x, language, mask, size = args
    q, k, v = module.gate_inputs(x, language, size)
    return survey_gate_values(q, k, v, mask, module.heads).mean(-1)


def _locate_map(module, args) -> torch.Tensor:
    x, language, mask = args
    w, b = module.query_weights()
    k, v = module.keys_values(language)
    return locate_gate_values(x, w, b, k, v, mask)


def _verify_map(module, args) -> torch.Tensor:
    x, language, mask = args
    k, v = module.keys_values(language)
    gate = verify_gate_values(x, k, v, mask, module.w_q)
    return (x * gate[:, None, :]).norm(dim=-1)


@torch.inference_mode()
def attention_maps(
    model: ProVG, images: torch.Tensor, expressions: list[str]
) -> list[dict[str, torch.Tensor]]:
    """Per stage, a dict step → map (B, h, w) for the steps the model's PCM mode has (normalized
    network inputs ``images``, one expression each)."""
    maps: list[dict[str, torch.Tensor]] = [{} for _ in model.pcm]
    sizes: list[tuple[int, int]] = [(0, 0)] * len(model.pcm)
    handles = []
    makers = {"survey": _survey_map, "locate": _locate_map, "verify": _verify_map}
    for stage, pcm in enumerate(model.pcm):

        def remember_size(module, args, stage=stage):
            sizes[stage] = tuple(args[2])

        handles.append(pcm.register_forward_pre_hook(remember_size))
        for step in STEPS:
            module = getattr(pcm, step)
            if module is None:
                continue

            def record(module, args, stage=stage, step=step):
                height, width = sizes[stage]
                maps[stage][step] = makers[step](module, args).float().reshape(-1, height, width).cpu()

            handles.append(module.register_forward_pre_hook(record))
    was_training = model.training
    model.eval()
    try:
        model(images, expressions)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return maps


def _blend(image: np.ndarray, heat: torch.Tensor) -> tuple[np.ndarray, float, float]:
    """``heat`` (h, w) upsampled to the image, min–max scaled, coloured and blended; and its range."""
    low, high = float(heat.min()), float(heat.max())
    scaled = (heat - low) / (high - low) if high > low else torch.zeros_like(heat)
    height, width = image.shape[:2]
    scaled = (
        F.interpolate(scaled[None, None], size=(height, width), mode="bilinear")[0, 0].clamp(0, 1).numpy()
    )
    position = scaled * (len(_RAMP) - 1)
    index = np.minimum(position.astype(int), len(_RAMP) - 2)
    fraction = (position - index)[..., None]
    colour = _RAMP[index] * (1 - fraction) + _RAMP[index + 1] * fraction
    return (0.45 * image + 0.55 * colour).astype(np.uint8), low, high


def render_explanation(
    prediction: Prediction, maps: list[dict[str, torch.Tensor]], tile: int = 256
) -> Image.Image:
    """A grid: one row per stage; columns the prediction, then survey, locate and verify maps."""
    picture = (
        draw_prediction(
            prediction.image, "", torch.tensor(prediction.box), prediction.mask, None, "", scale=1
        )
        .convert("RGB")
        .resize((tile, tile))
    )
    base = np.asarray(
        Image.fromarray((prediction.image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize(
            (tile, tile)
        )
    ).astype(np.float32)
    font = ImageFont.load_default()
    header, label = 34, 14
    columns = 1 + len(STEPS)
    canvas = Image.new("RGB", (columns * tile, header + len(maps) * (tile + label)), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), prediction.text[: columns * tile // 7], fill=(235, 235, 235), font=font)
    for column, name in enumerate(("prediction", *STEPS)):
        draw.text((column * tile + 4, 19), name, fill=(200, 200, 200), font=font)
    for row, stage_maps in enumerate(maps):
        top = header + row * (tile + label)
        canvas.paste(picture, (0, top))
        draw.text((4, top + tile + 1), f"stage {row + 1}", fill=(200, 200, 200), font=font)
        for column, step in enumerate(STEPS, start=1):
            if step not in stage_maps:
                draw.text(
                    (column * tile + 4, top + tile // 2), f"no {step} step", fill=(160, 160, 160), font=font
                )
                continue
            heat = stage_maps[step][0]
            blended, low, high = _blend(base, heat)
            canvas.paste(Image.fromarray(blended), (column * tile, top))
            caption = f"{tuple(heat.shape)} [{low:.3g}, {high:.3g}]"
            draw.text((column * tile + 4, top + tile + 1), caption, fill=(200, 200, 200), font=font)
    return canvas


def explain_image(
    model: ProVG, image: str | Path | torch.Tensor, text: str, out_dir: str | Path, amp: str = "none"
) -> dict[str, Path]:
    """Predict, compute the PCM maps and write ``explain.png`` (the grid) and ``maps.pt`` (the raw maps)
    to ``out_dir``; returns the written paths. ``amp`` applies to the prediction (the maps are fp32)."""
    prediction = predict_image(model, image, text, amp)
    device = next(model.parameters()).device
    maps = attention_maps(model, model_input(prediction.image, model.config.image_size).to(device), [text])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = out_dir / "explain.png"
    render_explanation(prediction, maps).save(grid)
    raw = out_dir / "maps.pt"
    torch.save([{step: value[0] for step, value in stage.items()} for stage in maps], raw)
    return {"explain": grid, "maps": raw}
