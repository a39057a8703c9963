"""Engine: configuration loading and overrides, the category baseline, the synthrs benchmark, and a tiny
model overfitting 8 samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import provg
from provg import configs
from provg.data import collate, load_dataset
from provg.data.synthrs import generate
from provg.data.synthrs.shapes import CATEGORIES
from provg.engine import load_config
from provg.engine.baseline import category_baseline
from provg.engine.trainer import normalized_boxes
from provg.losses import ProVGLoss
from provg.metrics import box_iou_parts


def test_config_yaml_overrides_and_errors(tmp_path):
    overrides = ["lr=3e-3", "loss.lambda_cons=0.2", "milestones=[2, 3]"]
    config = load_config(configs.path("synthrs_tiny"), overrides)
    assert config.lr == 0.003 and config.milestones == [2, 3]
    assert config.loss == {"smooth_l1_beta": 0.05, "lambda_cons": 0.2}
    assert config.model == "provg_tiny" and config.epochs > 0
    assert load_config(None).lr == 3e-5 and load_config(None).milestones == [50, 60]  # the paper
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, ["learning_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["lr"])
    with pytest.raises(ValueError, match="needs a number"):
        load_config(None, ["batch_size=big"])
    with pytest.raises(TypeError):
        load_config(None, ["loss.lambda_mass=1"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    assert "synthrs_tiny" in configs.names() and "provg_swin_b_rrsisd" in configs.names()


def test_synthrs_is_deterministic_and_in_rrsisd_format(tmp_path, synthrs_root):
    again = generate(tmp_path / "again", sizes={"train": 24, "val": 6, "test": 6}, seed=3, progress=False)
    for name in ("refs(unc).p", "instances.json", "synthrs_gold.json"):
        assert (again / "rrsisd" / name).read_bytes() == (synthrs_root / "rrsisd" / name).read_bytes()
    train = load_dataset("rrsisd", synthrs_root, "train")  # the plain RRSIS-D reader reads it
    assert len(train) >= 24


def test_synthrs_targets_have_distractors_and_gold_cues(synthrs_root):
    data = load_dataset("synthrs", synthrs_root, "test")
    for index in range(len(data)):
        sample = data[index]
        decomposition = sample["decomposition"]
        assert decomposition.text == sample["text"]
        assert len(data.category_instances(index)) >= 2  # the category alone is ambiguous
        phrase = CATEGORIES[sample["category"]].phrase  # "storagetank" is called "storage tank"
        assert [cue.text.endswith(phrase) for cue in decomposition.attributes] == [True]
        rows, cols = sample["mask"].nonzero(as_tuple=True)
        assert sample["box"].tolist() == [
            cols.min().item(),
            rows.min().item(),
            cols.max().item() + 1,
            rows.max().item() + 1,
        ]


def test_category_baseline_is_one_of_the_candidates(synthrs_root):
    data = load_dataset("synthrs", synthrs_root, "test")
    metrics = category_baseline(data, seed=0, progress=False)
    chance = np.mean([1 / len(data.category_instances(i)) for i in range(len(data))])
    # Each guess is an exact hit (IoU 1) or a distractor (IoU 0 unless objects touch).
    assert 0 < metrics["res/Pr@0.9"] <= metrics["res/Pr@0.5"] <= 100
    assert abs(metrics["res/Pr@0.5"] / 100 - chance) < 0.5


@pytest.mark.slow
def test_tiny_model_overfits_eight_samples(synthrs_root):
    torch.manual_seed(0)
    data = load_dataset("synthrs", synthrs_root, "train", image_size=128)
    batch = collate([data[i] for i in range(8)])
    model = provg.create_model("provg_tiny")
    criterion = ProVGLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    targets = normalized_boxes(batch["box"], 128, 128)
    losses = []
    for _ in range(150):
        out = model(batch["image"], batch["text"])
        loss = criterion(out.boxes, out.mask_logits, targets, batch["mask"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        out = model(batch["image"], batch["text"])
    intersection, union = box_iou_parts(out.boxes_xyxy(), batch["box"])
    iou = intersection / union
    assert losses[-1] * 5 <= losses[0], (losses[0], losses[-1])
    assert float(iou.mean()) >= 0.5, iou
