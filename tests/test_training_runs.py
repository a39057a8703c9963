"""Whole training runs through the command line: kill -9 and resume, torchrun DDP on gloo, predict and
explain. Each run is a separate process, as a user would start it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import provg
from provg.cli import main
from provg.data.synthrs import generate
from provg.engine.checkpoint import find_checkpoint, load_training_state

CONFIG = Path(provg.configs.path("synthrs_tiny"))


@pytest.fixture(scope="module")
def small_synthrs(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("synthrs_small"),
        sizes={"train": 6, "val": 3, "test": 3},
        seed=5,
        progress=False,
    )


def _overrides(root: Path, out: Path, **extra) -> list[str]:
    settings = {
        "data_root": str(root),
        "out_dir": str(out),
        "epochs": 3,
        "milestones": "[2]",
        "batch_size": 2,
        "eval_batch_size": 3,
        "threads": 1,
        "deterministic": "true",
        "tensorboard": "false",
        "model_overrides.text_cache_size": 0,
        "max_minutes": "null",
        **extra,
    }
    return [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "provg.cli", *args]


def _environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_environment())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_run_killed_after_a_checkpoint_resumes_to_the_same_weights(small_synthrs, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(
        _command("train", str(CONFIG), "--no-progress", *_overrides(small_synthrs, whole, checkpoint_every=1))
    )

    command = _command(
        "train",
        str(CONFIG),
        "--no-progress",
        *_overrides(small_synthrs, killed, checkpoint_every=1, tensorboard="true"),
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_environment())
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            last = killed / "last"
            if last.exists() and load_training_state(last.resolve())["global_step"] >= 4:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    stopped = load_training_state(find_checkpoint(killed))
    assert stopped["global_step"] < load_training_state(find_checkpoint(whole))["global_step"]

    resumed = _run(
        _command(
            "train",
            str(CONFIG),
            "--no-progress",
            "--resume",
            *_overrides(small_synthrs, killed, checkpoint_every=1, tensorboard="true"),
        )
    )
    assert "resuming from" in resumed.stdout
    for link in ("last", "best"):
        expected, actual = _weights(whole / link), _weights(killed / link)
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), (link, key)
    assert (
        (whole / "metrics.csv").read_text().count("\n")
        == (killed / "metrics.csv").read_text().count("\n")
        == 4
    )
    expected_metrics = json.loads((whole / "test_metrics.json").read_text())
    assert json.loads((killed / "test_metrics.json").read_text()) == expected_metrics
    # TensorBoard: every step logged once, the replayed ones purged on resume.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(killed / "tensorboard"), purge_orphaned_data=True).Reload()
    steps = [event.step for event in events.Scalars("step/loss")]
    assert steps == list(range(1, load_training_state(find_checkpoint(whole))["global_step"] + 1))


def test_ddp_on_two_gloo_processes_evaluates_as_one_process(small_synthrs, tmp_path):
    out = tmp_path / "ddp"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
    ]
    done = _run(
        [
            *torchrun,
            "-m",
            "provg.cli",
            "train",
            str(CONFIG),
            "--no-progress",
            *_overrides(small_synthrs, out, epochs=2),
        ]
    )
    assert "on 2 × cpu" in done.stdout
    state = load_training_state(find_checkpoint(out))
    assert state["world"] == 2 and state["global_step"] > 0
    # Every rank held the same weights: the gathered RNG states show two processes took part.
    assert len(state["rng"]) == 2
    ddp_metrics = json.loads((out / "test_metrics.json").read_text())

    single = tmp_path / "single.json"
    _run(
        _command(
            "eval",
            str(CONFIG),
            "--checkpoint",
            str(out / "best"),
            "--no-progress",
            "--out",
            str(single),
            *_overrides(small_synthrs, tmp_path / "unused"),
        )
    )
    single_metrics = json.loads(single.read_text())
    assert single_metrics.pop("checkpoint") == str(out / "best")
    assert single_metrics == ddp_metrics  # exactly, not approximately


def test_predict_and_explain_write_files(small_synthrs, tmp_path, capsys):
    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", text_cache_size=0)
    model.save_pretrained(tmp_path / "model")
    image = next((small_synthrs / "images" / "rrsisd" / "JPEGImages").iterdir())
    text = "the large white storage tank at the top left"
    common = [
        "--checkpoint",
        str(tmp_path / "model"),
        "--image",
        str(image),
        "--text",
        text,
        "--device",
        "cpu",
    ]
    assert main(["predict", *common, "--out", str(tmp_path / "predict")]) == 0
    document = json.loads((tmp_path / "predict" / "prediction.json").read_text())
    assert json.loads(capsys.readouterr().out) == document

    # The box and mask, computed independently from the model's output at the input size.
    from provg.data.io import load_image
    from provg.data.transforms import model_transform

    picture = load_image(image)
    model.eval()
    with torch.no_grad():
        output = model(model_transform(128)({"image": picture, "box": torch.zeros(4)})["image"][None], [text])
    height, width = picture.shape[-2:]
    cx, cy, w, h = output.boxes[0].tolist()
    expected_box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    assert document["box_xyxy"] == pytest.approx(expected_box, abs=0.01)
    assert document["image_size"] == {"height": height, "width": width}
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "predict" / "mask.png"))
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    assert int((mask == 255).sum()) == document["mask_pixels"]
    assert Image.open(tmp_path / "predict" / "overlay.png").mode == "RGB"
    assert main(["predict", *common, "--amp", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    bf16 = json.loads((tmp_path / "bf16" / "prediction.json").read_text())
    assert bf16["box_xyxy"] == pytest.approx(document["box_xyxy"], abs=1.0)

    assert main(["explain", *common, "--out", str(tmp_path / "explain")]) == 0
    maps = torch.load(tmp_path / "explain" / "maps.pt", weights_only=True)
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert [tuple(stage["locate"].shape) for stage in maps] == sizes
    assert all(set(stage) == {"survey", "locate", "verify"} for stage in maps)
    assert Image.open(tmp_path / "explain" / "explain.png").size[0] == 4 * 256
