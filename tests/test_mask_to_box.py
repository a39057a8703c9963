"""mask_to_box: hand-worked boxes, the C++ kernel against the reference, the soft variant, and backend
selection (forcing, environment variable, logged fallback)."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

from provg.ops import _backend, available_backends, mask_to_box, mask_to_box_reference, soft_mask_to_box

HAS_CPP = available_backends()["cpp"]


def test_hand_worked_boxes():
    masks = torch.zeros(4, 5, 7, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1-2, cols 2-4
    masks[2, 4, 6] = True  # the bottom-right pixel
    masks[3, 0, 0] = masks[3, 4, 3] = True  # two separate pixels
    boxes, valid = mask_to_box(masks, backend="torch")
    assert boxes.tolist() == [[2, 1, 5, 3], [0, 0, 0, 0], [6, 4, 7, 5], [0, 0, 4, 5]]
    assert valid.tolist() == [True, False, True, True]
    assert boxes.dtype == torch.float32


SHAPES = [(0, 3, 3), (1, 1, 1), (1, 1, 97), (7, 1, 5), (3, 97, 1), (5, 13, 31), (2, 64, 65), (3, 800, 801)]


@pytest.mark.skipif(not HAS_CPP, reason="provg._C not built")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8])
def test_cpp_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    density = torch.rand(shape[0], 1, 1, generator=g) * 0.02
    masks = torch.rand(shape, generator=g) < density
    if shape[0] > 1:
        masks[1] = False  # an empty mask
    if dtype == torch.uint8:
        masks = masks.to(torch.uint8) * 255
    expected = mask_to_box_reference(masks)
    got = mask_to_box(masks, backend="cpp")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.skipif(not HAS_CPP, reason="provg._C not built")
def test_cpp_on_non_contiguous_and_batched_leading_dims():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(2, 3, 9, 11, generator=g) > 0.9
    transposed = masks.transpose(-1, -2)  # (2, 3, 11, 9), non-contiguous
    expected = mask_to_box_reference(transposed.reshape(6, 11, 9))
    boxes, valid = mask_to_box(transposed, backend="cpp")
    assert boxes.shape == (2, 3, 4) and valid.shape == (2, 3)
    assert torch.equal(boxes.reshape(6, 4), expected[0]) and torch.equal(valid.reshape(6), expected[1])


def test_soft_box_equals_hard_box_on_binary_masks_and_has_gradients():
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(5, 9, 13, generator=g) > 0.93
    masks[0] = False
    masks[0, 2:4, 5:11] = True
    probs = masks.double().requires_grad_()
    soft = soft_mask_to_box(probs)
    hard, valid = mask_to_box_reference(masks)
    torch.testing.assert_close(soft[valid].float(), hard[valid])
    soft[0].sum().backward()
    assert probs.grad.abs().sum() > 0


def test_rejects_bad_masks():
    with pytest.raises(TypeError, match=r"masks > 0\.5"):
        mask_to_box(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        mask_to_box(torch.zeros(5, dtype=torch.bool))


def test_backend_argument_errors():
    masks = torch.zeros(1, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        mask_to_box(masks, backend="fast")
    with pytest.raises(ValueError, match="has no 'triton' backend"):
        mask_to_box(masks, backend="triton")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        mask_to_box(masks, backend="cuda")


def test_environment_variable_forces_and_validates(monkeypatch):
    masks = torch.zeros(1, 3, 3, dtype=torch.bool)
    monkeypatch.setenv("PROVG_BACKEND", "bogus")
    with pytest.raises(ValueError, match="PROVG_BACKEND='bogus'"):
        mask_to_box(masks)
    monkeypatch.setenv("PROVG_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="PROVG_BACKEND=cuda cannot run"):
        mask_to_box(masks)
    monkeypatch.setenv("PROVG_BACKEND", "torch")
    calls = []
    module = importlib.import_module("provg.ops.mask_to_box")
    monkeypatch.setattr(
        module, "mask_to_box_reference", lambda m: calls.append(1) or mask_to_box_reference(m)
    )
    mask_to_box(masks)
    assert calls == [1]


def test_automatic_fallback_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(_backend, "has_cpp", lambda: False)
    _backend._log_once.cache_clear()
    masks = torch.ones(1, 2, 2, dtype=torch.bool)
    with caplog.at_level(logging.WARNING, logger="provg.ops"):
        for _ in range(3):
            assert mask_to_box(masks)[0].tolist() == [[0, 0, 2, 2]]
    messages = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(messages) == 1 and "mask_to_box" in messages[0]
    _backend._log_once.cache_clear()


def test_torch_compile_fullgraph_with_the_op():
    masks = torch.rand(3, 8, 9) > 0.8
    compiled = torch.compile(lambda m: mask_to_box(m)[0] * 2, fullgraph=True, backend="eager")
    assert torch.equal(compiled(masks), mask_to_box_reference(masks)[0] * 2)
