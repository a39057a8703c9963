"""A timm backbone run stage by stage, so ProVG can modulate each stage's output before the next stage
reads it (LAVT-style language-aware encoding; Fig. 4a).

Any timm model that ``features_only=True`` builds as a `FeatureListNet` works (Swin, ConvNeXt, ResNet,
…): its modules are run in order and, after each of the last four feature stages, the stage output is
handed to a callback as tokens (B, H·W, C). Swin stages are channels-last already; NCHW stages become
tokens through a transpose.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
from timm.models._features import FeatureListNet
from torch import Tensor, nn

from .layers import map_to_tokens, tokens_to_map

__all__ = ["StagedBackbone"]

StageHook = Callable[[int, Tensor, tuple[int, int]], Tensor]


class StagedBackbone(nn.Module):
    """timm backbone ``name`` exposing its 4 last feature stages one at a time.

    Args:
        name: a timm model name.
        pretrained_file: a local checkpoint (.safetensors/.pth) of that model; the hub is never used.
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``window_size``, ``channels``).
    """

    def __init__(self, name: str, pretrained_file: str | None = None, **kwargs) -> None:
        super().__init__()
        options = dict(features_only=True, out_indices=(-4, -3, -2, -1), **kwargs)
        if pretrained_file is not None:
            options.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)))
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models()")
        self.net = timm.create_model(name, **options)
        if not isinstance(self.net, FeatureListNet):
            raise ValueError(
                f"backbone {name!r} builds as {type(self.net).__name__}, which cannot be run stage by stage; "
                "choose a model whose features_only form is a FeatureListNet (Swin, ConvNeXt, ResNet, ...)"
            )
        self.name = name
        self.channels: list[int] = list(self.net.feature_info.channels())
        self.reductions: list[int] = list(self.net.feature_info.reduction())
        self.channels_last = str(self.net.output_fmt).endswith("NHWC")

    def _to_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if self.channels_last:
            batch, height, width, channels = x.shape
            return x.reshape(batch, height * width, channels), (height, width)
        return map_to_tokens(x), (x.shape[-2], x.shape[-1])

    def _from_tokens(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        if self.channels_last:
            return tokens.reshape(tokens.shape[0], size[0], size[1], tokens.shape[2])
        return tokens_to_map(tokens, *size)

    def forward(
        self, images: Tensor, hook: StageHook | None = None, feed_back: bool = True
    ) -> list[tuple[Tensor, tuple[int, int]]]:
        """Run the stages; returns each stage's tokens (after ``hook``) with its (H, W).

        ``hook(stage_index, tokens, (H, W))`` may replace a stage's tokens; with ``feed_back`` the next
        stage reads the replaced tokens, otherwise the unmodulated ones.
        """
        outputs: list[tuple[Tensor, tuple[int, int]]] = []
        x = images
        for name, module in self.net.items():
            x = module(x)
            if name not in self.net.return_layers:
                continue
            tokens, size = self._to_tokens(x)
            if hook is not None:
                modulated = hook(len(outputs), tokens, size)
                if feed_back:
                    x = self._from_tokens(modulated, size)
                tokens = modulated
            outputs.append((tokens, size))
        return outputs
