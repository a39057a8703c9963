"""Re-parameterization: the deploy form equals the train form in eval mode (float64 to 1e-10)."""

from __future__ import annotations

import copy

import pytest
import torch

import provg
from provg.models.cfm import FusionBlock
from provg.models.layers import ConvBNAct
from provg.models.repvgg import RepVGGBlock, reparameterize


def _random_bn_statistics(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))
                m.running_mean.copy_(
                    torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype)
                )
                m.running_var.copy_(
                    torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.1
                )


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize(("channels", "height", "width"), [(1, 1, 1), (3, 7, 5), (5, 13, 1), (7, 9, 16)])
def test_block_deploy_equals_train_float64(identity, channels, height, width):
    block = RepVGGBlock(channels, identity=identity).double()
    _random_bn_statistics(block, channels + height)
    block.eval()
    x = torch.randn(2, channels, height, width, dtype=torch.float64)
    expected = block(x)
    reparameterize(block)
    assert block.deployed and not hasattr(block, "conv3")
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-10)


def test_block_equivalent_kernel_matches_hand_folding():
    block = RepVGGBlock(2).double()
    _random_bn_statistics(block, 1)
    block.eval()
    block.requires_grad_(False)
    kernel, bias = block.equivalent_kernel_bias()
    t3 = block.bn3.weight / torch.sqrt(block.bn3.running_var + block.bn3.eps)
    t1 = block.bn1.weight / torch.sqrt(block.bn1.running_var + block.bn1.eps)
    for o in range(2):
        for i in range(2):
            for r in range(3):
                for c in range(3):
                    expected = block.conv3.weight[o, i, r, c] * t3[o]
                    if (r, c) == (1, 1):
                        expected = expected + block.conv1.weight[o, i, 0, 0] * t1[o]
                    assert abs(float(kernel[o, i, r, c] - expected)) < 1e-14
        expected_bias = (
            block.bn3.bias[o]
            - block.bn3.running_mean[o] * t3[o]
            + block.bn1.bias[o]
            - block.bn1.running_mean[o] * t1[o]
        )
        assert abs(float(bias[o] - expected_bias)) < 1e-14


def test_fusion_block_and_float32():
    block = FusionBlock(6, num_blocks=2, identity=True)
    _random_bn_statistics(block, 3)
    block.eval()
    x = torch.randn(1, 6, 11, 7)
    expected = block(x)
    reparameterize(block)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, act", [(1, 1, True), (3, 2, True), (1, 1, False)])
def test_conv_bn_act_folds_its_batch_norm_float64(kernel, stride, act):
    layer = ConvBNAct(5, 7, kernel, stride, act=act).double()
    _random_bn_statistics(layer, 4)
    layer.eval()
    x = torch.randn(2, 5, 13, 9, dtype=torch.float64)
    expected = layer(x)
    reparameterize(layer)
    assert layer.deployed and layer[0].bias is not None and isinstance(layer[1], torch.nn.Identity)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_reparameterize_refuses_train_mode():
    block = RepVGGBlock(3)
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        reparameterize(block)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-ops", "torch-ops"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_whole_model_deploy_equals_train(fused, dtype, tolerance, monkeypatch):
    """Train form in eval mode vs `reparameterize`d model, with the fused RepVGG ops on and off."""
    if not fused:
        monkeypatch.setenv("PROVG_BACKEND", "torch")
    model = provg.create_model("provg_tiny", image_size=96, rep_identity=True).to(dtype)
    _random_bn_statistics(model.cfm, 11)
    _random_bn_statistics(model.lcd, 12)
    model.eval()
    images = torch.randn(2, 3, 96, 96, dtype=dtype, generator=torch.Generator().manual_seed(0))
    texts = ["the small red ship on the left", "a storage tank"]
    with torch.no_grad():
        expected = model(images, texts)
        provg.reparameterize(model)
        got = model(images, texts)
    assert sum(isinstance(m, RepVGGBlock) and m.deployed for m in model.modules()) == 6
    projections = [m for m in model.modules() if isinstance(m, ConvBNAct)]
    assert len(projections) == 29 and all(m.deployed for m in projections)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in (*model.cfm.modules(), *model.lcd.modules()))
    torch.testing.assert_close(got.boxes, expected.boxes, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got.mask_logits, expected.mask_logits, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("identity", [False, True])
def test_block_fused_training_matches_modules(identity, monkeypatch):
    """A train-mode FusionBlock with the fused tail gives the unfused block's outputs, parameter
    gradients and running statistics (float64), over three steps."""
    fused = FusionBlock(6, num_blocks=2, identity=identity).double()
    _random_bn_statistics(fused, 5)
    eager = copy.deepcopy(fused)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(2, 6, 7, 5, dtype=torch.float64, generator=g)
        y = fused(x)
        y.square().sum().backward()
        monkeypatch.setenv("PROVG_BACKEND", "torch")
        y_eager = eager(x)
        y_eager.square().sum().backward()
        monkeypatch.delenv("PROVG_BACKEND")
        torch.testing.assert_close(y, y_eager, rtol=1e-10, atol=1e-10)
    for (name, a), (_, b) in zip(fused.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")
    for (name, a), (_, b) in zip(fused.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_fusion_block_compiles_fullgraph_with_fused_ops(monkeypatch):
    """torch.compile(fullgraph=True) runs the fused tail (forward and backward, running statistics) and
    the deploy convolution without a graph break, and agrees with the eager modules."""
    block = FusionBlock(8, num_blocks=2, identity=True)
    eager = copy.deepcopy(block)
    x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.compile(block, fullgraph=True)(x)
    y.square().sum().backward()
    monkeypatch.setenv("PROVG_BACKEND", "torch")
    y_eager = eager(x)
    y_eager.square().sum().backward()
    monkeypatch.delenv("PROVG_BACKEND")
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(block.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
    for a, b in zip(block.buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    block.eval()
    eager.eval()
    reparameterize(block)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(block, fullgraph=True)(x), eager(x), rtol=1e-5, atol=1e-5)


def test_reparameterized_model_exports(tmp_path):
    """torch.export of the deploy model's vision path, saved and loaded, matches the eager deploy model."""
    from provg.models.export import export_ground, language_tensors

    model = provg.create_model("provg_tiny", image_size=96).eval()
    _random_bn_statistics(model.cfm, 13)
    provg.reparameterize(model)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    language = model.encode_text(["the small red ship on the left", "a storage tank"])
    program = export_ground(model, images, language)
    targets = {str(node.target) for node in program.graph.nodes}
    assert "provg.conv3x3_bias_silu.default" in targets and "provg.survey_gate.default" in targets
    torch.export.save(program, tmp_path / "ground.pt2")
    loaded = torch.export.load(tmp_path / "ground.pt2")
    with torch.no_grad():
        expected = model.ground(images, language)
        boxes, mask_logits = loaded.module()(images, *language_tensors(language))
    torch.testing.assert_close(boxes, expected.boxes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mask_logits, expected.mask_logits, rtol=1e-5, atol=1e-5)
    model.train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        export_ground(model, images, language)


def test_export_with_dynamic_batch_and_token_lengths():
    """One program exported at batch 2 runs batches of 1 and 3 whose expressions tokenize to other lengths,
    equal to the eager deploy model; the static export refuses them."""
    from provg.models.export import export_ground, language_tensors

    model = provg.create_model("provg_tiny", image_size=64, parser="naive").eval()
    provg.reparameterize(model)
    g = torch.Generator().manual_seed(6)
    texts = [
        "the small red ship on the upper left",
        "a storage tank",
        "the gray car near the large white building",
    ]
    program = export_ground(
        model, torch.randn(2, 3, 64, 64, generator=g), model.encode_text(texts[:2]), dynamic=True
    )
    for count in (1, 3):
        images = torch.randn(count, 3, 64, 64, generator=g)
        language = model.encode_text(texts[-count:])
        with torch.no_grad():
            expected = model.ground(images, language)
            boxes, mask_logits = program.module()(images, *language_tensors(language))
        torch.testing.assert_close(boxes, expected.boxes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mask_logits, expected.mask_logits, rtol=1e-5, atol=1e-5)
    static = export_ground(model, torch.randn(2, 3, 64, 64, generator=g), model.encode_text(texts[:2]))
    with pytest.raises(AssertionError, match=r"images\.size\(\)\[0\] == 2"):
        static.module()(images, *language_tensors(language))
