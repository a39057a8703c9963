"""Losses (Eq. 14–15) against direct re-computation: GIoU, Dice, and the consistency loss with an empty
predicted mask."""

from __future__ import annotations

import math

import torch

from provg.losses import LossConfig, ProVGLoss, dice_loss, generalized_box_iou_loss


def test_giou_hand_worked():
    # Overlapping unit-area boxes: I = 0.25, U = 1.75, hull = 1.5 × 1.5 = 2.25.
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[0.5, 0.5, 1.5, 1.5]], dtype=torch.float64)
    expected = 1 - (0.25 / 1.75 - (2.25 - 1.75) / 2.25)
    assert abs(float(generalized_box_iou_loss(pred, target, eps=0)) - expected) < 1e-12
    # Disjoint boxes: IoU 0, hull 3 × 1 with union 2 → GIoU = −1/3.
    far = torch.tensor([[2.0, 0.0, 3.0, 1.0]], dtype=torch.float64)
    assert abs(float(generalized_box_iou_loss(pred, far, eps=0)) - (1 + 1 / 3)) < 1e-12


def test_dice_hand_worked():
    probability = torch.tensor([[[0.5, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    target = torch.tensor([[[True, False], [False, False]]])
    # 1 − (2·0.5 + 1) / (1.5 + 1 + 1)
    assert abs(float(dice_loss(probability, target)) - (1 - 2.0 / 3.5)) < 1e-12


def _manual_consistency(boxes_xyxy, mask_logits, beta):
    total = 0.0
    batch, _, height, width = mask_logits.shape
    for b in range(batch):
        fg = (mask_logits[b, 1] > mask_logits[b, 0]).nonzero().tolist()
        if not fg:
            continue
        rows = [r for r, _ in fg]
        cols = [c for _, c in fg]
        mask_box = [min(cols) / width, min(rows) / height, (max(cols) + 1) / width, (max(rows) + 1) / height]
        pred = boxes_xyxy[b].tolist()
        smooth = 0.0
        for p, m in zip(pred, mask_box):
            d = abs(p - m)
            smooth += (0.5 * d * d / beta if d < beta else d - 0.5 * beta) / 4
        ix = max(0.0, min(pred[2], mask_box[2]) - max(pred[0], mask_box[0]))
        iy = max(0.0, min(pred[3], mask_box[3]) - max(pred[1], mask_box[1]))
        inter = ix * iy
        union = (
            (pred[2] - pred[0]) * (pred[3] - pred[1])
            + (mask_box[2] - mask_box[0]) * (mask_box[3] - mask_box[1])
            - inter
        )
        hull = (max(pred[2], mask_box[2]) - min(pred[0], mask_box[0])) * (
            max(pred[3], mask_box[3]) - min(pred[1], mask_box[1])
        )
        giou = inter / union - (hull - union) / hull
        total += 10 * smooth + (1 - giou)
    return total / batch


def test_consistency_loss_matches_eq14_and_is_zero_for_empty_masks():
    g = torch.Generator().manual_seed(0)
    mask_logits = torch.randn(3, 2, 9, 11, generator=g, dtype=torch.float64)
    mask_logits[1, 1] = mask_logits[1, 0] - 1  # sample 1 predicts an empty mask
    boxes = torch.tensor(
        [[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.1], [0.6, 0.4, 0.5, 0.7]], dtype=torch.float64
    )
    for beta in (1.0, 0.05):
        loss = ProVGLoss(LossConfig(smooth_l1_beta=beta))
        xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)
        got = loss.consistency(xyxy, mask_logits)
        assert abs(float(got) - _manual_consistency(xyxy, mask_logits, beta)) < 1e-6
    empty = torch.zeros(2, 2, 5, 5, dtype=torch.float64)
    empty[:, 0] = 1.0
    value = ProVGLoss().consistency(xyxy[:2], empty)
    assert float(value) == 0.0 and not math.isnan(float(value))


def test_total_loss_weights_and_detached_mask_box():
    g = torch.Generator().manual_seed(1)
    mask_logits = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(
        [[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]], dtype=torch.float64, requires_grad=True
    )
    target_boxes = torch.tensor([[0.4, 0.5, 0.3, 0.3], [0.3, 0.5, 0.2, 0.3]], dtype=torch.float64)
    target_masks = torch.rand(2, 8, 8, generator=g) > 0.5
    config = LossConfig(lambda_box=2.0, lambda_mask=0.3, lambda_cons=0.7)
    terms = ProVGLoss(config)(boxes, mask_logits, target_boxes, target_masks)
    expected = 2.0 * terms["box"] + 0.3 * terms["mask"] + 0.7 * terms["cons"]
    assert abs(float(terms["loss"].detach()) - float(expected.detach())) < 1e-12
    # With a detached b_m the consistency term sends no gradient into the mask logits.
    only_cons = ProVGLoss(LossConfig(lambda_box=0, lambda_mask=0, lambda_cons=1.0))
    only_cons(boxes, mask_logits, target_boxes, target_masks)["loss"].backward()
    assert mask_logits.grad is None or mask_logits.grad.abs().max() == 0
    assert boxes.grad.abs().max() > 0
    soft = ProVGLoss(LossConfig(lambda_box=0, lambda_mask=0, lambda_cons=1.0, cons_box="soft"))
    soft(boxes, mask_logits, target_boxes, target_masks)["loss"].backward()
    assert mask_logits.grad.abs().max() > 0
