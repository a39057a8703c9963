"""GroundingEvaluator against hand-worked examples (DESIGN §3)."""

from __future__ import annotations

import math

import pytest
import torch

from provg.metrics import GroundingEvaluator, metric_table


def test_masks_hand_worked_with_empty_prediction_and_empty_union():
    evaluator = GroundingEvaluator()
    gt = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    gt[0, :2, :2] = True  # 4 pixels
    pred[0, :2, :1] = True  # 2 pixels inside: IoU 0.5 exactly (a tie at 0.5)
    gt[1, 0, 0] = True  # empty prediction: IoU 0, union 1
    # sample 2: both empty → union 0 → IoU 0
    evaluator.update(pred_masks=pred, gt_masks=gt)
    r = evaluator.compute()
    assert r["res/Pr@0.5"] == pytest.approx(100 / 3)
    assert r["res/Pr@0.6"] == 0
    assert r["res/mIoU"] == pytest.approx(100 * 0.5 / 3)
    assert r["res/oIoU"] == pytest.approx(100 * 2 / 5)  # ΣI = 2, ΣU = 4 + 1 + 0
    # REC from the masks' enclosing boxes: (0,0,1,2) vs (0,0,2,2) → IoU 0.5; empty pred box → 0.
    assert r["rec/Pr@0.5"] == pytest.approx(100 / 3)
    assert r["rec/oIoU"] == pytest.approx(100 * 2 / 5)


def test_boxes_hand_worked_streaming():
    evaluator = GroundingEvaluator()
    evaluator.update(pred_boxes=torch.tensor([[0.0, 0, 10, 10]]), gt_boxes=torch.tensor([[0.0, 0, 10, 10]]))
    evaluator.update(
        pred_boxes=torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 6, 6]]),
        gt_boxes=torch.tensor([[0.0, 0, 10, 7], [20.0, 20, 30, 30]]),
    )
    r = evaluator.compute()
    # IoUs 1, 0.7 and 0; intersections 100 + 70 + 0, unions 100 + 100 + 101
    assert r["rec/Pr@0.5"] == pytest.approx(200 / 3)
    assert r["rec/Pr@0.7"] == pytest.approx(200 / 3)  # IoU exactly 0.7 counts
    assert r["rec/Pr@0.8"] == pytest.approx(100 / 3)
    assert r["rec/mIoU"] == pytest.approx(100 * 1.7 / 3)
    assert r["rec/oIoU"] == pytest.approx(100 * 170 / 301)
    assert math.isnan(r["res/mIoU"])
    assert evaluator.counts == {"rec": 3, "res": 0}


def test_update_rejects_inconsistent_inputs():
    evaluator = GroundingEvaluator()
    with pytest.raises(ValueError, match="together"):
        evaluator.update(pred_masks=torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="resize the prediction"):
        evaluator.update(
            pred_masks=torch.zeros(1, 2, 2, dtype=torch.bool), gt_masks=torch.zeros(1, 3, 2, dtype=torch.bool)
        )
    with pytest.raises(TypeError, match="bool"):
        evaluator.update(pred_masks=torch.zeros(1, 2, 2), gt_masks=torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="without gt_boxes"):
        evaluator.update(pred_boxes=torch.zeros(1, 4))


def test_metric_table_has_paper_columns():
    table = metric_table({"ProVG": {"rec/Pr@0.5": 76.21, "res/mIoU": 65.44}})
    header, row = table.splitlines()
    assert (
        header.index("REC Pr@0.5")
        < header.index("REC oIoU")
        < header.index("RES Pr@0.5")
        < header.index("RES mIoU")
    )
    assert "76.21" in row and "65.44" in row and "nan" in row


def test_merged_shards_give_exactly_the_single_evaluator_metrics():
    from provg.engine.distributed import ShardedBatches

    generator = torch.Generator().manual_seed(7)
    count, batch_size, world = 97, 7, 3
    pred_boxes = torch.rand(count, 4, generator=generator).sort(-1).values * 50
    gt_boxes = torch.rand(count, 4, generator=generator).sort(-1).values * 50
    pred_masks = torch.rand(count, 9, 11, generator=generator) > 0.5
    gt_masks = torch.rand(count, 9, 11, generator=generator) > 0.4

    def run(indices: list[list[int]]) -> GroundingEvaluator:
        evaluator = GroundingEvaluator()
        for batch in indices:
            evaluator.update(pred_boxes[batch], gt_boxes[batch], pred_masks[batch], gt_masks[batch])
        return evaluator

    single = run(list(ShardedBatches(count, batch_size)))
    shards = [list(ShardedBatches(count, batch_size, world, rank)) for rank in range(world)]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(count))
    states = [run(shard).state() for shard in reversed(shards)]
    orders = [torch.tensor([i for batch in shard for i in batch]) for shard in reversed(shards)]
    assert GroundingEvaluator.merge(states, orders).compute() == single.compute()
    with pytest.raises(ValueError, match="more than one state"):
        GroundingEvaluator.merge(states + states[:1], orders + orders[:1])
