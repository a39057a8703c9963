"""Transforms on grounding samples that keep image, box and mask consistent.

A sample is a dict with ``image`` (3×H×W float in [0, 1]), ``box`` (xyxy pixels, float) and, when the
benchmark has one, ``mask`` (H×W bool). `Resize` scales all three together; `Normalize` standardizes
the image for the backbone. No flips: spatial expressions ("on the left") would stop being true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "Resize",
    "denormalize",
    "model_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict[str, Any]


class Compose:
    def __init__(self, transforms: list[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class Resize:
    """Resize to ``size`` (int: square, or (H, W)); image bilinear (antialiased), mask nearest, box scaled.

    The original size is kept in ``sample["original_size"]`` so predictions can be mapped back. With
    ``keep_original`` the sample also keeps ``original_box`` (xyxy in original pixels) and, when it has a
    mask, ``original_mask`` (original H×W bool): the targets for evaluating at the original resolution
    rather than at the network input (DESIGN §3).
    """

    def __init__(self, size: int | tuple[int, int], keep_original: bool = False) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.keep_original = keep_original

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        height, width = image.shape[-2:]
        out = dict(sample)
        out.setdefault("original_size", (height, width))
        if self.keep_original:
            out.setdefault("original_box", sample["box"])
            if "mask" in sample:
                out.setdefault("original_mask", sample["mask"])
        if (height, width) == self.size:
            return out
        out["image"] = F.interpolate(
            image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0, 1)
        if "mask" in sample:
            out["mask"] = F.interpolate(sample["mask"][None, None].float(), size=self.size, mode="nearest")[
                0, 0
            ].bool()
        scale = torch.tensor(
            [self.size[1] / width, self.size[0] / height, self.size[1] / width, self.size[0] / height],
            dtype=sample["box"].dtype,
        )
        out["box"] = sample["box"] * scale
        return out

    def __repr__(self) -> str:
        return f"Resize({self.size}, keep_original=True)" if self.keep_original else f"Resize({self.size})"


class Normalize:
    """Standardize the image channels (ImageNet statistics by default)."""

    def __init__(
        self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
    ) -> None:
        self.mean = torch.tensor(mean).reshape(3, 1, 1)
        self.std = torch.tensor(std).reshape(3, 1, 1)

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = (sample["image"] - self.mean) / self.std
        return out

    def __repr__(self) -> str:
        return "Normalize()"


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo `Normalize` on (…, 3, H, W) images."""
    mean_t = torch.tensor(mean, device=image.device).reshape(3, 1, 1)
    std_t = torch.tensor(std, device=image.device).reshape(3, 1, 1)
    return (image * std_t + mean_t).clamp(0, 1)


def model_transform(image_size: int, keep_original: bool = False) -> Compose:
    """The network-input transform: resize to ``image_size`` square, then normalize.

    ``keep_original`` keeps the original-resolution box and mask in each sample (see `Resize`).
    """
    return Compose([Resize(image_size, keep_original=keep_original), Normalize()])
