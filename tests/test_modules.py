"""ProVG modules against direct re-computation of their equations in float64: survey, locate, verify
(Eq. 1–7), the PCM orders, CFM wiring (Eq. 8–9), LCM (Eq. 11), FA weighting (Eq. 12–13), and the
mask head's up-sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from provg.models.cfm import CFM
from provg.models.heads import BoxHead, MaskHead
from provg.models.layers import map_to_tokens, tokens_to_map
from provg.models.lcd import LCM
from provg.models.pcm import PCM, LocateAttention, SurveyAttention, VerifyAttention, normalize_pcm_mode
from provg.text import LanguageFeatures

import reference_math as ref

torch.manual_seed(0)
D = 5  # text width


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)
    return module.double().requires_grad_(False)


def _language(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, 4, D, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, 4, generator=g) > 0.3
    mask[0] = False  # all masked
    if batch > 1:
        mask[1, 2] = True
    return tokens, mask


@pytest.mark.parametrize(("channels", "heads"), [(4, 1), (6, 2), (9, 3)])
def test_survey_attention_equation(channels, heads):
    module = _randomize(SurveyAttention(channels, D, heads), channels)
    x = torch.randn(2, 7, channels, dtype=torch.float64)
    language, mask = _language(2, channels)
    text = ref.linear(language, module.text)
    q = ref.linear(ref.linear(x, module.visual), module.query)
    expected = ref.linear(
        ref.survey_gate(x, q, ref.linear(text, module.key), ref.linear(text, module.value), mask, heads),
        module.proj,
    )
    torch.testing.assert_close(module(x, language, mask), expected, rtol=1e-11, atol=1e-11)


def test_locate_attention_equation():
    module = _randomize(LocateAttention(6, D), 1)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    language, mask = _language(3, 1)
    w_q, w_k, w_v = (float(getattr(module, n)) for n in ("w_q", "w_k", "w_v"))
    projected = ref.linear(language, module.text)[..., 0]  # L̃_s (B, N)
    saliency = ref.linear(x, module.saliency)[..., 0]  # s (B, P)
    gated = torch.empty_like(x)
    for b in range(3):
        for p in range(5):
            a = ref.attention_row(
                [w_q * float(saliency[b, p])],
                [[w_k * float(t)] for t in projected[b]],
                [[w_v * float(t)] for t in projected[b]],
                mask[b].tolist(),
                1.0,
            )
            gated[b, p] = x[b, p] * ref.sigmoid(a[0])
    torch.testing.assert_close(
        module(x, language, mask), ref.linear(gated, module.proj), rtol=1e-11, atol=1e-11
    )


def test_verify_attention_equation():
    module = _randomize(VerifyAttention(6, D), 2)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    language, mask = _language(2, 2)
    w_q, w_k, w_v = (float(getattr(module, n)) for n in ("w_q", "w_k", "w_v"))
    projected = ref.linear(language, module.text)[..., 0]
    expected = torch.empty_like(x)
    for b in range(2):
        for c in range(6):
            m = float(x[b, :, c].mean())
            a = ref.attention_row(
                [w_q * m],
                [[w_k * float(t)] for t in projected[b]],
                [[w_v * float(t)] for t in projected[b]],
                mask[b].tolist(),
                1.0,
            )
            expected[b, :, c] = x[b, :, c] * ref.sigmoid(a[0])
    torch.testing.assert_close(module(x, language, mask), expected, rtol=1e-11, atol=1e-11)
    # All attribute tokens masked: the gate is σ(0) = 0.5 everywhere.
    torch.testing.assert_close(module(x, language, torch.zeros_like(mask))[0], 0.5 * x[0])


def _features(batch: int) -> LanguageFeatures:
    tokens, mask = _language(batch, 9)
    return LanguageFeatures(tokens, ~mask, tokens.flip(1), mask, tokens * 0.5, mask.flip(1))


@pytest.mark.parametrize("order", ["SLV", "SVL", "LVS", "VLS", "LV", "S", "VL"])
def test_pcm_runs_its_modules_in_order(order):
    pcm = _randomize(PCM(6, D, order), 3)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    language = _features(2)
    expected = x
    for letter in order:
        if letter == "S":
            expected = pcm.survey(expected, language.context, language.context_mask)
        elif letter == "L":
            expected = pcm.locate(expected, language.spatial, language.spatial_mask)
        else:
            expected = pcm.verify(expected, language.attributes, language.attribute_mask)
    torch.testing.assert_close(pcm(x, language), expected, rtol=0, atol=0)


def test_pcm_parallel_none_and_aliases():
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    language = _features(2)
    parallel = _randomize(PCM(6, D, "parallel"), 4)
    expected = 0.5 * (
        parallel.locate(x, language.spatial, language.spatial_mask)
        + parallel.verify(x, language.attributes, language.attribute_mask)
    )
    torch.testing.assert_close(parallel(x, language), expected)
    assert parallel.survey is None
    assert PCM(6, D, "none")(x, language) is x
    assert [normalize_pcm_mode(m) for m in ("global", "sequential", "progressive", "vls")] == [
        "S",
        "LV",
        "SLV",
        "VLS",
    ]
    for bad in ("SSL", "SLX", "", "slvv"):
        with pytest.raises(ValueError, match="pcm_mode"):
            normalize_pcm_mode(bad)


def test_lcm_equation_with_masked_mean():
    lcm = _randomize(LCM(D, 3), 5)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    context, mask = _language(2, 5)
    projected = ref.linear(context, lcm.linear)  # (B, N, C)
    expected = torch.empty_like(x)
    for b in range(2):
        valid = [n for n in range(4) if mask[b, n]]
        for c in range(3):
            pooled = sum(float(projected[b, n, c]) for n in valid) / len(valid) if valid else 0.0
            expected[b, c] = x[b, c] + x[b, c] * ref.sigmoid(pooled)
    torch.testing.assert_close(lcm(x, context, mask), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lcm(x, context, mask)[0], 1.5 * x[0])  # no valid token: gate 0.5


def test_fa_stage_weighting_equation():
    head = _randomize(BoxHead(3, 4, pool="mean", fa=True), 6)
    maps = [torch.randn(2, 3, s, s + 1, dtype=torch.float64) for s in (8, 4, 2, 1)]
    stacked = torch.stack(
        [ref.linear(m.mean(dim=(2, 3)), pool.proj) for m, pool in zip(maps, head.pools)], dim=1
    )
    out = head(maps)
    for b in range(2):
        descriptor = [float(stacked[b, i].mean()) for i in range(4)]  # Mean over C
        logits = [
            sum(float(head.stage_weights.weight[j, i]) * descriptor[i] for i in range(4))
            + float(head.stage_weights.bias[j])
            for j in range(4)
        ]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        weights = [w / sum(weights) for w in weights]
        fused = sum(weights[i] * stacked[b, i] for i in range(4))  # Eq. 13
        hidden = F.relu(ref.linear(F.relu(ref.linear(fused, head.mlp[0])), head.mlp[2]))
        expected = torch.sigmoid(ref.linear(hidden, head.mlp[4]))
        torch.testing.assert_close(out[b], expected, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(head.weights(stacked)[b], torch.tensor(weights, dtype=torch.float64))


def test_fa_off_uses_the_finest_stage_only():
    head = _randomize(BoxHead(3, 4, pool="mean", fa=False), 7)
    maps = [torch.randn(1, 3, s, s, dtype=torch.float64) for s in (8, 4, 2, 1)]
    other = [maps[0]] + [torch.randn_like(m) for m in maps[1:]]
    torch.testing.assert_close(head(maps), head(other))


def test_attention_pool_weights_features_and_coordinate_moments():
    head = _randomize(BoxHead(3, 4, pool="attention"), 8)
    pool = head.pools[0]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    scores = torch.einsum("bchw,c->bhw", x, pool.score.weight[0, :, 0, 0]) + pool.score.bias
    weights = torch.softmax(scores.flatten(1), dim=1).reshape(2, 4, 5)
    xs = (torch.arange(5, dtype=torch.float64) + 0.5) / 5
    ys = (torch.arange(4, dtype=torch.float64) + 0.5) / 4
    features = torch.einsum("bchw,bhw->bc", x, weights)
    moments = [
        torch.einsum("bhw,w->b", weights, xs),
        torch.einsum("bhw,h->b", weights, ys),
        torch.einsum("bhw,w->b", weights, xs**2),
        torch.einsum("bhw,h->b", weights, ys**2),
    ]
    expected = ref.linear(torch.cat([features, torch.stack(moments, dim=1)], dim=1), pool.proj)
    torch.testing.assert_close(pool(x), expected, rtol=1e-12, atol=1e-12)


def test_mask_head_equals_upsample_then_conv_then_upsample():
    head = _randomize(MaskHead(3), 9)
    finest = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    doubled = F.interpolate(finest, size=(12, 14), mode="bilinear", align_corners=False)  # V'_1 = Up(X̃_1)
    logits = F.conv2d(doubled, head.classifier.weight, head.classifier.bias)
    literal = F.interpolate(logits, size=(25, 29), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(finest, (25, 29)), literal, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("top_down", "bottom_up"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_cfm_wiring(top_down, bottom_up):
    cfm = CFM(
        [3, 5, 6, 4], width=4, num_blocks=1, cascade_top_down=top_down, cascade_bottom_up=bottom_up
    ).double()
    cfm.eval()
    maps = [torch.randn(1, c, s, s, dtype=torch.float64) for c, s in zip([3, 5, 6, 4], (15, 8, 4, 2))]
    p = [proj(m) for proj, m in zip(cfm.inputs, maps)]

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    down = [None, None, None, p[3]]
    for i in (2, 1, 0):  # Eq. 8
        down[i] = cfm.top_down[i](p[i] + up(down[i + 1] if top_down else p[i + 1], p[i]))
    fused = [down[0], None, None, None]
    for i in (1, 2, 3):  # Eq. 9
        d = cfm.downs[i - 1](fused[i - 1] if bottom_up else down[i - 1])
        fused[i] = cfm.bottom_up[i - 1](down[i] + up(d, down[i]))
    for got, expected in zip(cfm(maps), fused):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    off = CFM([3, 5, 6, 4], width=4, enabled=False).double().eval()
    for got, m, proj in zip(off(maps), maps, off.inputs):
        torch.testing.assert_close(got, proj(m))


def test_mask_pool_weights_by_foreground_probability_at_every_scale():
    head = _randomize(BoxHead(3, 4, pool="mask"), 10)
    foreground = torch.rand(2, 8, 6, dtype=torch.float64)
    coarse = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    pool = head.pools[1]
    # 8×6 → 4×3: each coarse weight is the mean of a 2×2 block, then normalized.
    blocks = foreground.reshape(2, 4, 2, 3, 2).mean(dim=(2, 4))
    weights = blocks / blocks.sum(dim=(1, 2), keepdim=True)
    xs = (torch.arange(3, dtype=torch.float64) + 0.5) / 3
    ys = (torch.arange(4, dtype=torch.float64) + 0.5) / 4
    moments = [
        torch.einsum("bhw,w->b", weights, xs),
        torch.einsum("bhw,h->b", weights, ys),
        torch.einsum("bhw,w->b", weights, xs**2),
        torch.einsum("bhw,h->b", weights, ys**2),
    ]
    features = torch.einsum("bchw,bhw->bc", coarse, weights)
    expected = ref.linear(torch.cat([features, torch.stack(moments, dim=1)], dim=1), pool.proj)
    torch.testing.assert_close(pool(coarse, foreground), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="foreground probability"):
        pool(coarse)


def test_mask_pool_moments_recover_a_box():
    # Uniform foreground on a box: E[x] is its centre and 12·Var[x] its squared width.
    foreground = torch.zeros(1, 40, 40, dtype=torch.float64)
    foreground[0, 8:20, 10:34] = 1.0
    pool = BoxHead(3, 4, pool="mask").double().pools[0]
    weights = pool.weights(torch.zeros(1, 3, 40, 40, dtype=torch.float64), foreground).reshape(40, 40)
    xs = (torch.arange(40, dtype=torch.float64) + 0.5) / 40
    mean_x = float((weights.sum(0) * xs).sum())
    var_x = float((weights.sum(0) * xs**2).sum()) - mean_x**2
    assert mean_x == pytest.approx(22 / 40)
    assert math.sqrt(12 * var_x) == pytest.approx(24 / 40, rel=2e-3)


def test_position_aware_survey_queries():
    from provg.models.position import sine_position_embedding

    module = _randomize(SurveyAttention(8, D, heads=2, position="sine"), 11)
    x = torch.randn(2, 6, 8, dtype=torch.float64)  # a 2×3 map
    language, mask = _language(2, 11)
    pe = sine_position_embedding(2, 3, 8, x)
    # Hand-worked entries: channel 0 is sin(2π·x) at pixel-centre x, channel 4 sin(2π·y).
    assert float(pe[1, 0]) == pytest.approx(math.sin(2 * math.pi * 1.5 / 3))
    assert float(pe[3, 4]) == pytest.approx(math.sin(2 * math.pi * 1.5 / 2))
    text = ref.linear(language, module.text)
    q = ref.linear(ref.linear(x, module.visual) + pe, module.query)
    expected = ref.linear(
        ref.survey_gate(x, q, ref.linear(text, module.key), ref.linear(text, module.value), mask, 2),
        module.proj,
    )
    torch.testing.assert_close(module(x, language, mask, (2, 3)), expected, rtol=1e-11, atol=1e-11)
    with pytest.raises(ValueError, match="needs the"):
        module(x, language, mask)


@pytest.mark.parametrize(
    ("batch", "height", "width", "channels"), [(1, 7, 5, 3), (2, 1, 97, 4), (1, 1, 1, 1)]
)
def test_tokens_to_map_is_a_canonical_channels_last_view(batch, height, width, channels):
    """Token p = h·W + w of channel c lands at map[b, c, h, w]; the map shares the tokens' storage with
    the strides a channels-last tensor allocated afresh has (also at B = 1, where convolutions read the
    batch stride to decide their output layout); map_to_tokens inverts it without a copy."""
    tokens = torch.arange(batch * height * width * channels, dtype=torch.float32).reshape(
        batch, height * width, channels
    )
    feature_map = tokens_to_map(tokens, height, width)
    for b, c, h, w in [
        (0, 0, 0, 0),
        (batch - 1, channels - 1, height - 1, width - 1),
        (0, channels // 2, height // 2, 0),
    ]:
        assert feature_map[b, c, h, w] == tokens[b, h * width + w, c]
    assert feature_map.data_ptr() == tokens.data_ptr()
    fresh = torch.empty(batch, channels, height, width, memory_format=torch.channels_last)
    assert feature_map.stride() == fresh.stride()
    back = map_to_tokens(feature_map)
    assert torch.equal(back, tokens) and back.data_ptr() == tokens.data_ptr()
    with pytest.raises(ValueError, match="12 tokens cannot form a 3×5 map"):
        tokens_to_map(torch.zeros(1, 12, 2), 3, 5)
