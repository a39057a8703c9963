"""Named ProVG configurations, timm style: ``create_model(name, **overrides)`` and ``list_models()``.

- ``provg_swin_b``: the paper (Swin-B window 12 at 480×480, CFM/decoder width 256, 3 RepVGG blocks).
- ``provg_swin_t``: the same with Swin-T.
- ``provg_tiny``: a ResNet-style backbone of widths 32–256 at 128×128, widths 64, frozen text encoder;
  trains on a CPU in minutes (the demo).
"""

from __future__ import annotations

from collections.abc import Callable

from .config import ProVGConfig
from .provg import ProVG

__all__ = ["create_model", "list_models", "model_config", "register_model"]

_MODELS: dict[str, Callable[[], ProVGConfig]] = {}


def register_model(function: Callable[[], ProVGConfig]) -> Callable[[], ProVGConfig]:
    """Register a function returning a `ProVGConfig` under the function's name."""
    name = function.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = function
    return function


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(_MODELS)


def model_config(name: str, **overrides) -> ProVGConfig:
    """The configuration of model ``name`` with ``overrides`` applied."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name]().replace(**overrides)


def create_model(name: str, **overrides) -> ProVG:
    """Build the registered ProVG variant ``name`` (random init; overrides are `ProVGConfig` fields)."""
    return ProVG(model_config(name, **overrides))


@register_model
def provg_swin_b() -> ProVGConfig:
    return ProVGConfig(
        backbone="swin_base_patch4_window12_384", backbone_kwargs={"window_size": 12}, image_size=480
    )


@register_model
def provg_swin_t() -> ProVGConfig:
    return ProVGConfig(
        backbone="swin_tiny_patch4_window7_224", backbone_kwargs={"window_size": 12}, image_size=480
    )


@register_model
def provg_tiny() -> ProVGConfig:
    return ProVGConfig(
        backbone="resnet10t",
        backbone_kwargs={"channels": (32, 64, 128, 256), "stem_width": 16},
        image_size=128,
        text_trainable=False,
        text_cache_size=8192,
        pcm_heads=1,
        cfm_width=64,
        cfm_blocks=1,
        decoder_width=64,
        rec_width=64,
    )
