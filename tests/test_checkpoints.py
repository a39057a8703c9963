"""Model directories (save_pretrained / from_pretrained) and training checkpoints: round trips,
refusal of truncated or malicious files, RNG capture."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import provg
from provg.engine.checkpoint import (
    STATE_FILE,
    capture_rng,
    find_checkpoint,
    load_training_state,
    restore_rng,
    save_checkpoint,
)
from provg.models import ProVG


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return provg.create_model("provg_tiny", text_cache_size=0)


def _optimizer_state(model):
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 3], gamma=0.1)
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return optimizer, scheduler


def test_save_and_load_pretrained_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model", metadata={"note": "test"})
    loaded = ProVG.from_pretrained(tmp_path / "model")
    assert json.dumps(loaded.config.to_dict()) == json.dumps(tiny_model.config.to_dict())
    expected = tiny_model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    images = torch.rand(2, 3, 128, 128)
    texts = ["the red car on the left", "a large white storage tank"]
    tiny_model.eval(), loaded.eval()
    with torch.no_grad():
        a, b = tiny_model(images, texts), loaded(images, texts)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.mask_logits, b.mask_logits)


def test_truncated_weights_and_missing_files_are_refused(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated or corrupt"):
        ProVG.from_pretrained(folder)
    (folder / "config.json").write_text('{"format": "provg-model/1", "config": {')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        ProVG.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        ProVG.from_pretrained(tmp_path / "absent")


def test_weights_of_another_architecture_are_refused(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "model")
    other = provg.create_model("provg_tiny", cfm_blocks=2, text_cache_size=0)
    other.save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match the configuration"):
        ProVG.from_pretrained(folder)


def test_checkpoint_round_trip_with_optimizer_scheduler_and_rng(tiny_model, tmp_path):
    optimizer, scheduler = _optimizer_state(tiny_model)
    state = {
        "epoch": 1,
        "batch": 3,
        "global_step": 7,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": [capture_rng()],
        "history": [{"epoch": 1, "val/rec/Pr@0.5": 12.5}],
    }
    folder = save_checkpoint(tmp_path, tiny_model, state, best=True)
    assert folder.name == "epoch-001-step-0000007"
    assert find_checkpoint(tmp_path) == folder and find_checkpoint(tmp_path, "best") == folder
    loaded = load_training_state(folder)
    fresh_optimizer, fresh_scheduler = _optimizer_state(provg.create_model("provg_tiny", text_cache_size=0))
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    fresh_scheduler.load_state_dict(loaded["scheduler"])
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    restored, original = fresh_optimizer.state_dict()["state"], optimizer.state_dict()["state"]
    assert restored.keys() == original.keys()
    for index, moments in original.items():
        assert torch.equal(restored[index]["exp_avg_sq"], moments["exp_avg_sq"])
    assert loaded["history"] == state["history"] and loaded["batch"] == 3

    # A second checkpoint moves `last`; the first one stays because it is still `best`.
    second = save_checkpoint(tmp_path, tiny_model, dict(state, epoch=2, batch=0, global_step=9))
    assert find_checkpoint(tmp_path) == second and find_checkpoint(tmp_path, "best") == folder
    third = save_checkpoint(tmp_path, tiny_model, dict(state, epoch=3, batch=0, global_step=11), best=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [third.name]


def test_truncated_training_state_is_refused(tiny_model, tmp_path):
    folder = save_checkpoint(tmp_path, tiny_model, {"epoch": 1, "batch": 0, "global_step": 1, "rng": []})
    path = folder / STATE_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(
        ValueError, match=f"{STATE_FILE}: cannot read the training state, the file is truncated"
    ):
        load_training_state(folder)


class _Exploit:
    """Pickles to a call that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the raw pickle
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_training_state_is_not_executed(tiny_model, tmp_path, writer):
    folder = save_checkpoint(tmp_path, tiny_model, {"epoch": 1, "batch": 0, "global_step": 1, "rng": []})
    marker = tmp_path / "pwned"
    payload = {"format": "provg-train-state/1", "epoch": 1, "evil": _Exploit(marker)}
    if writer == "torch":
        torch.save(payload, folder / STATE_FILE)
    else:
        (folder / STATE_FILE).write_bytes(pickle.dumps(payload))
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        load_training_state(folder)
    assert not marker.exists()
    # The same payload does run under a plain unpickler: the refusal above is what protects the user.
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()


def test_rng_states_round_trip():
    state = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
