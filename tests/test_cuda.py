"""GPU checks (skipped without a GPU): the CUDA mask_to_box kernel against the reference, and the model
on CUDA against the same model on the CPU. benchmarks/gpu_check.sh runs these on a lent GPU."""

from __future__ import annotations

import os

import pytest
import torch

import provg
from provg.losses import ProVGLoss
from provg.ops import available_backends, mask_to_box, mask_to_box_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
# A machine without the pretrained encoder package can point this at any local BERT-family model; the
# naive parser keeps these checks free of the spaCy pipeline package.
TEXT_ENCODER = os.environ.get("PROVG_TEXT_ENCODER", "all-MiniLM-L6-v2")
LANGUAGE = {"text_encoder": TEXT_ENCODER, "parser": "naive"}


@pytest.mark.skipif(not available_backends()["cuda"], reason="provg._C built without CUDA")
@pytest.mark.parametrize(
    "shape", [(0, 3, 3), (1, 1, 1), (3, 1, 97), (7, 97, 1), (5, 13, 31), (4, 801, 800), (2, 1031, 1029)]
)
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8])
def test_cuda_kernel_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    masks = torch.rand(shape, generator=g) < 0.002
    if shape[0] > 1:
        masks[1] = False
    if dtype == torch.uint8:
        masks = masks.to(torch.uint8) * 255
    expected = mask_to_box_reference(masks)
    boxes, valid = mask_to_box(masks.cuda(), backend="cuda")
    assert torch.equal(boxes.cpu(), expected[0]) and torch.equal(valid.cpu(), expected[1])


@pytest.mark.skipif(not available_backends()["cuda"], reason="provg._C built without CUDA")
def test_cuda_kernel_on_non_contiguous_masks_and_automatic_choice():
    masks = (torch.rand(3, 40, 50) > 0.995).cuda().transpose(1, 2)
    expected = mask_to_box_reference(masks.cpu())
    boxes, valid = mask_to_box(masks)  # automatic: the CUDA kernel
    assert torch.equal(boxes.cpu(), expected[0]) and torch.equal(valid.cpu(), expected[1])


def test_model_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", **LANGUAGE).eval()
    images = torch.randn(2, 3, 128, 128)
    texts = ["the small red ship on the left", "a storage tank above the windmill"]
    with torch.no_grad():
        cpu = model(images, texts)
        model.cuda()
        gpu = model(images.cuda(), texts)
    torch.testing.assert_close(gpu.boxes.cpu(), cpu.boxes, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.mask_logits.cpu(), cpu.mask_logits, rtol=1e-3, atol=1e-3)


def test_training_step_on_cuda():
    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", **LANGUAGE).cuda().train()
    images = torch.randn(4, 3, 128, 128, device="cuda")
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 4, device="cuda")
    masks = torch.zeros(4, 128, 128, dtype=torch.bool, device="cuda")
    masks[:, 25:51, 25:51] = True
    out = model(images, ["a ship"] * 4)
    loss = ProVGLoss()(out.boxes, out.mask_logits, boxes, masks)["loss"]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
