"""ProVG training objective (Sec. 4.5, Eq. 14–15).

- L_box = SmoothL1(b_p, b_gt) + GIoU(b_p, b_gt) on normalized boxes;
- L_mask = CrossEntropy(mask logits, gt) + Dice(foreground probability, gt);
- L_cons = 10·SmoothL1(b_p, b_m) + GIoU(b_p, b_m) (Eq. 14), b_m the minimal enclosing rectangle of the
  predicted mask: detached by default (``cons_box="detached"``), or the differentiable
  `provg.ops.soft_mask_to_box` of the foreground probability (``cons_box="soft"``). A sample whose
  predicted mask is empty contributes 0 (not NaN);
- L = λ1·L_box + λ2·L_mask + λ3·L_cons with λ = (1, 0.5, 0.1) (Eq. 15, Table 5).

SmoothL1 and GIoU are computed on (x0, y0, x1, y1) normalized to [0, 1]; SmoothL1 uses ``beta``
(torch's default 1.0; a smaller beta makes it L1-like on normalized coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from provg.models.provg import cxcywh_to_xyxy
from provg.ops import mask_to_box, soft_mask_to_box

__all__ = ["LossConfig", "ProVGLoss", "dice_loss", "generalized_box_iou_loss"]


def generalized_box_iou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 − GIoU per box pair, for (…, 4) xyxy boxes (degenerate boxes allowed)."""
    x0 = torch.maximum(pred[..., 0], target[..., 0])
    y0 = torch.maximum(pred[..., 1], target[..., 1])
    x1 = torch.minimum(pred[..., 2], target[..., 2])
    y1 = torch.minimum(pred[..., 3], target[..., 3])
    intersection = (x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)
    area_p = (pred[..., 2] - pred[..., 0]).clamp_min(0) * (pred[..., 3] - pred[..., 1]).clamp_min(0)
    area_t = (target[..., 2] - target[..., 0]).clamp_min(0) * (target[..., 3] - target[..., 1]).clamp_min(0)
    union = area_p + area_t - intersection
    iou = intersection / (union + eps)
    hull = (
        torch.maximum(pred[..., 2], target[..., 2]) - torch.minimum(pred[..., 0], target[..., 0])
    ).clamp_min(0) * (
        torch.maximum(pred[..., 3], target[..., 3]) - torch.minimum(pred[..., 1], target[..., 1])
    ).clamp_min(0)
    return 1 - (iou - (hull - union) / (hull + eps))


def dice_loss(probability: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 − Dice per sample for foreground probabilities and targets (B, H, W), smoothed by ``eps``."""
    p = probability.flatten(1)
    t = target.flatten(1).to(p.dtype)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


@dataclass
class LossConfig:
    """Weights and options of Eq. 14–15 (Table 5 varies ``lambda_mask`` and ``lambda_cons``)."""

    lambda_box: float = 1.0
    lambda_mask: float = 0.5
    lambda_cons: float = 0.1
    cons_box: str = "detached"
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.cons_box not in ("detached", "soft"):
            raise ValueError(f"cons_box must be 'detached' or 'soft', got {self.cons_box!r}")
        for name in ("lambda_box", "lambda_mask", "lambda_cons"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.smooth_l1_beta < 0:
            raise ValueError(f"smooth_l1_beta must be >= 0, got {self.smooth_l1_beta}")


class ProVGLoss(torch.nn.Module):
    """Eq. 15 for boxes (B, 4 normalized cx, cy, w, h), mask logits (B, 2, H, W) and bool masks (B, H, W)."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def box_terms(self, pred_xyxy: Tensor, target_xyxy: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample SmoothL1 (mean over the 4 coordinates) and GIoU loss."""
        smooth = F.smooth_l1_loss(pred_xyxy, target_xyxy, reduction="none", beta=self.config.smooth_l1_beta)
        return smooth.mean(-1), generalized_box_iou_loss(pred_xyxy, target_xyxy)

    def consistency(self, pred_xyxy: Tensor, mask_logits: Tensor) -> Tensor:
        """Eq. 14 averaged over the batch; samples with an empty predicted mask count 0."""
        height, width = mask_logits.shape[-2:]
        scale = pred_xyxy.new_tensor([width, height, width, height])
        predicted = mask_logits[:, 1] > mask_logits[:, 0]
        hard_box, valid = mask_to_box(predicted)
        if self.config.cons_box == "soft":
            probability = torch.softmax(mask_logits, dim=1)[:, 1]
            mask_box = soft_mask_to_box(probability) / scale
        else:
            mask_box = hard_box.to(pred_xyxy.dtype) / scale
        smooth, giou = self.box_terms(pred_xyxy, mask_box)
        per_sample = 10 * smooth + giou
        return torch.where(valid, per_sample, torch.zeros_like(per_sample)).sum() / max(len(valid), 1)

    def forward(
        self, boxes: Tensor, mask_logits: Tensor, target_boxes: Tensor, target_masks: Tensor | None
    ) -> dict[str, Tensor]:
        """Returns the total ``loss`` and its terms (``box``, ``mask``, ``cons``).

        ``target_boxes``: (B, 4) normalized (cx, cy, w, h); ``target_masks``: (B, H, W) bool, or None on
        box-only benchmarks (DIOR-RSVG, RSVG-HR), where the mask term is 0 and only L_box and L_cons train.
        """
        pred_xyxy = cxcywh_to_xyxy(boxes)
        smooth, giou = self.box_terms(pred_xyxy, cxcywh_to_xyxy(target_boxes))
        box = (smooth + giou).mean()
        if target_masks is None:
            mask = mask_logits.new_zeros(())
        else:
            ce = F.cross_entropy(mask_logits, target_masks.long())
            dice = dice_loss(torch.softmax(mask_logits, dim=1)[:, 1], target_masks).mean()
            mask = ce + dice
        cons = self.consistency(pred_xyxy, mask_logits)
        c = self.config
        total = c.lambda_box * box + c.lambda_mask * mask + c.lambda_cons * cons
        return {"loss": total, "box": box.detach(), "mask": mask.detach(), "cons": cons.detach()}
