"""Grounding metrics as the peers (LAVT, RMSIN) compute them (DESIGN §3), as a streaming evaluator.

Per sample IoU (boxes: areas; masks: pixel sets; IoU = 0 when the union is empty); mIoU = mean of the
per-sample IoUs; oIoU = Σ intersection / Σ union over the split (cumulative IoU); Pr@X = share of
samples with IoU ≥ X for X ∈ {0.5, …, 0.9}. All reported ×100. When only masks are given, REC is
measured on the masks' enclosing boxes (how RES methods are scored on RSREC, Sec. 5.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from provg.ops import mask_to_box

__all__ = ["THRESHOLDS", "GroundingEvaluator", "box_iou_parts", "mask_iou_parts", "metric_table"]

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
_COLUMNS = [f"Pr@{t}" for t in THRESHOLDS] + ["oIoU", "mIoU"]


def box_iou_parts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas (float64) of paired xyxy boxes (B, 4)."""
    pred, target = pred.double(), target.double()
    width = (torch.minimum(pred[:, 2], target[:, 2]) - torch.maximum(pred[:, 0], target[:, 0])).clamp_min(0)
    height = (torch.minimum(pred[:, 3], target[:, 3]) - torch.maximum(pred[:, 1], target[:, 1])).clamp_min(0)
    intersection = width * height
    area_p = (pred[:, 2] - pred[:, 0]).clamp_min(0) * (pred[:, 3] - pred[:, 1]).clamp_min(0)
    area_t = (target[:, 2] - target[:, 0]).clamp_min(0) * (target[:, 3] - target[:, 1]).clamp_min(0)
    return intersection, area_p + area_t - intersection


def mask_iou_parts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union pixel counts (float64) of paired bool masks (B, H, W)."""
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    return (pred & target).sum(1).double(), (pred | target).sum(1).double()


class _Task:
    """Per-sample intersections and unions of one task; metrics are computed from them in sample order,
    so evaluators merged across processes (`GroundingEvaluator.merge`) give the single-process numbers."""

    def __init__(self) -> None:
        self.intersections: list[Tensor] = []
        self.unions: list[Tensor] = []

    def add(self, intersection: Tensor, union: Tensor) -> None:
        self.intersections.append(intersection.detach().double().cpu())
        self.unions.append(union.detach().double().cpu())

    def parts(self) -> tuple[Tensor, Tensor]:
        if not self.intersections:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        return torch.cat(self.intersections), torch.cat(self.unions)

    def compute(self) -> dict[str, float]:
        if not self.intersections:
            return dict.fromkeys(_COLUMNS, math.nan)
        intersection, union = self.parts()
        ious = torch.where(union > 0, intersection / union.clamp_min(1e-300), torch.zeros_like(union))
        result = {f"Pr@{t}": 100.0 * float((ious >= t).double().mean()) for t in THRESHOLDS}
        total_union = float(union.sum())
        result["oIoU"] = 100.0 * (float(intersection.sum()) / total_union if total_union > 0 else 0.0)
        result["mIoU"] = 100.0 * float(ious.mean())
        return result

    def __len__(self) -> int:
        return sum(len(i) for i in self.intersections)


class GroundingEvaluator:
    """Accumulates RSREC (``rec/…``) and RSRES (``res/…``) metrics over batches.

    ``update(pred_boxes, gt_boxes, pred_masks, gt_masks)``: boxes are xyxy in any one consistent frame
    (pixels of the evaluation resolution), masks bool (B, H, W) at one resolution. Either task may be
    omitted. Without ``pred_boxes``, REC uses the predicted masks' enclosing boxes (and the GT masks'
    when ``gt_boxes`` is missing too).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._rec = _Task()
        self._res = _Task()

    @property
    def counts(self) -> dict[str, int]:
        return {"rec": len(self._rec), "res": len(self._res)}

    def update(
        self,
        pred_boxes: Tensor | None = None,
        gt_boxes: Tensor | None = None,
        pred_masks: Tensor | None = None,
        gt_masks: Tensor | None = None,
    ) -> None:
        if (pred_masks is None) != (gt_masks is None):
            raise ValueError("pass pred_masks and gt_masks together")
        if pred_masks is not None:
            if pred_masks.shape != gt_masks.shape or pred_masks.dim() != 3:
                raise ValueError(
                    f"masks must both be (B, H, W) of one size, got {tuple(pred_masks.shape)} and "
                    f"{tuple(gt_masks.shape)}; resize the prediction to the evaluation resolution first"
                )
            if pred_masks.dtype != torch.bool or gt_masks.dtype != torch.bool:
                raise TypeError(f"masks must be bool, got {pred_masks.dtype} and {gt_masks.dtype}")
            self._res.add(*mask_iou_parts(pred_masks, gt_masks))
        if pred_boxes is None and pred_masks is not None:
            pred_boxes = mask_to_box(pred_masks)[0]
        if gt_boxes is None and gt_masks is not None and pred_boxes is not None:
            gt_boxes = mask_to_box(gt_masks)[0]
        if pred_boxes is None:
            if gt_boxes is not None:
                raise ValueError("gt_boxes given without pred_boxes or pred_masks")
            return
        if gt_boxes is None:
            raise ValueError("pred_boxes given without gt_boxes or gt_masks")
        if pred_boxes.shape != gt_boxes.shape or pred_boxes.dim() != 2 or pred_boxes.shape[1] != 4:
            raise ValueError(
                f"boxes must both be (B, 4) xyxy, got {tuple(pred_boxes.shape)} and {tuple(gt_boxes.shape)}"
            )
        self._rec.add(*box_iou_parts(pred_boxes, gt_boxes))

    def state(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-sample (intersection, union) of each task, in update order: what `merge` combines."""
        return {"rec": self._rec.parts(), "res": self._res.parts()}

    @classmethod
    def merge(
        cls, states: list[dict[str, tuple[Tensor, Tensor]]], orders: list[Tensor]
    ) -> GroundingEvaluator:
        """One evaluator from the `state`s of several (e.g. one per process), with ``orders[i]`` the
        dataset index of each sample of ``states[i]``: samples are put back in dataset order, so the
        metrics equal those of a single evaluator that saw the whole dataset in order."""
        merged = cls()
        order = torch.cat([o.long() for o in orders])
        if len(torch.unique(order)) != len(order):
            raise ValueError("merge: a dataset index appears in more than one state (overlapping shards)")
        permutation = torch.argsort(order)
        for task in ("rec", "res"):
            parts = [state[task] for state in states]
            if all(len(p[0]) == 0 for p in parts):
                continue
            if sum(len(p[0]) for p in parts) != len(order):
                raise ValueError(f"merge: {task} has results for some samples only; cannot order them")
            intersection = torch.cat([p[0] for p in parts])[permutation]
            union = torch.cat([p[1] for p in parts])[permutation]
            getattr(merged, f"_{task}").add(intersection, union)
        return merged

    def compute(self) -> dict[str, float]:
        """``rec/Pr@0.5`` … ``rec/mIoU`` and ``res/…`` in percent (NaN for a task with no samples)."""
        result = {f"rec/{k}": v for k, v in self._rec.compute().items()}
        result.update({f"res/{k}": v for k, v in self._res.compute().items()})
        return result


def metric_table(rows: dict[str, dict[str, float]]) -> str:
    """The paper's table layout (Table 2): RSREC then RSRES, Pr@0.5–0.9, oIoU, mIoU; one row per method."""
    header = ["Method".ljust(24)] + [f"REC {c}" for c in _COLUMNS] + [f"RES {c}" for c in _COLUMNS]
    lines = [" | ".join(header)]
    for name, metrics in rows.items():
        cells = [name.ljust(24)]
        for task in ("rec", "res"):
            for column in _COLUMNS:
                value = metrics.get(f"{task}/{column}", math.nan)
                cells.append(f"{value:.2f}".rjust(len(f"REC {column}")))
        lines.append(" | ".join(cells))
    return "\n".join(lines)
