"""Evaluation resolution and box-only benchmarks through the training engine."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

import provg
from provg.data import collate, load_dataset
from provg.engine import load_config, train
from provg.engine.evaluate import evaluate, evaluate_dataset

from test_loaders import write_dior


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return provg.create_model("provg_tiny", text_cache_size=0).eval()


def test_original_resolution_equals_input_resolution_when_they_coincide(tiny, synthrs_root):
    # synthrs images are 128×128, provg_tiny's input size: both resolutions score the same pixels.
    dataset = load_dataset("synthrs", synthrs_root, "val", image_size=128, keep_original=True)
    as_input = evaluate_dataset(tiny, dataset, 4, torch.device("cpu"), progress=False)
    as_original = evaluate_dataset(
        tiny, dataset, 4, torch.device("cpu"), progress=False, resolution="original"
    )
    assert as_input == as_original
    assert not math.isnan(as_input["res/mIoU"])


def test_original_resolution_needs_original_targets(tiny, synthrs_root):
    dataset = load_dataset("synthrs", synthrs_root, "val", image_size=128)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate)
    with pytest.raises(KeyError, match="keep_original=True"):
        evaluate(tiny, loader, torch.device("cpu"), progress=False, resolution="original")


def test_box_only_benchmark_trains_and_scores_boxes_at_original_size(tmp_path):
    write_dior(tmp_path / "dior")
    config = load_config(
        provg.configs.path("synthrs_tiny"),
        [
            "dataset=dior_rsvg",
            f"data_root={tmp_path / 'dior'}",
            f"out_dir={tmp_path / 'run'}",
            "epochs=1",
            "batch_size=2",
            "eval_resolution=original",
            "max_minutes=null",
        ],
    )
    result = train(config, progress=False, log=lambda message: None)
    record = result.history[-1]
    assert result.steps == 1 and record["train/mask"] == 0.0 and record["train/box"] > 0
    assert math.isnan(record["val/res/mIoU"]) and not math.isnan(record["val/rec/mIoU"])
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "train/loss"] and "val/rec/Pr@0.5" in header
    # A second fresh run into the same folder would prune its checkpoints: refused.
    with pytest.raises(FileExistsError, match=r"already holds a run.*--resume"):
        train(config, progress=False, log=lambda message: None)


def test_bf16_autocast_step_on_cpu_and_fp16_needs_cuda(synthrs_root):
    from provg.engine.trainer import _step
    from provg.losses import ProVGLoss

    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", text_cache_size=0)
    batch = collate([load_dataset("synthrs", synthrs_root, "train", image_size=128)[i] for i in range(2)])
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = [p.detach().clone() for p in parameters]
    config = load_config(None, ["amp=bf16"])
    losses = _step(model, batch, torch.device("cpu"), config, ProVGLoss(), optimizer, scaler, parameters)
    assert math.isfinite(losses["loss"]) and losses["mask"] > 0
    assert all(p.dtype == torch.float32 for p in parameters)  # autocast leaves the weights in fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, parameters))
    with pytest.raises(ValueError, match="amp=fp16 needs a CUDA device"):
        _step(
            model,
            batch,
            torch.device("cpu"),
            load_config(None, ["amp=fp16"]),
            ProVGLoss(),
            optimizer,
            scaler,
            parameters,
        )


def test_bf16_inference_agrees_with_fp32(synthrs_root):
    """The accuracy check of the optional bf16 autocast, on real images and expressions: boxes within a
    pixel of fp32 and mask logits within 2% (relative L2); fp16 needs a GPU."""
    from provg.engine.inference import amp_context, model_input, predict_image

    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", text_cache_size=0).eval()
    dataset = load_dataset("synthrs", synthrs_root, "val")
    samples = [dataset[i] for i in range(4)]
    images = torch.cat([model_input(s["image"], 128) for s in samples])
    texts = [s["text"] for s in samples]
    with torch.inference_mode():
        full = model(images, texts)
        with amp_context(torch.device("cpu"), "bf16"):
            half = model(images, texts)
    assert half.mask_logits.dtype == torch.bfloat16
    box_error = float((full.boxes_xyxy() - half.boxes_xyxy().float()).abs().max())
    logit_error = float((full.mask_logits - half.mask_logits.float()).norm() / full.mask_logits.norm())
    assert box_error <= 1.0 and logit_error <= 0.02, (box_error, logit_error)
    assert logit_error > 0  # bf16 did run
    with pytest.raises(ValueError, match="amp=fp16 needs a CUDA device"):
        predict_image(model, samples[0]["image"], texts[0], amp="fp16")


def test_explain_maps_equal_the_gates_the_model_applies(synthrs_root):
    """Each map against the gate recovered from the model's own (fused-op) forward: a fresh PCM's
    projections are the identity, so locate's output is x·g and verify's is x ⊙ g; survey's gate is
    the fused survey op applied to ones."""
    from provg.engine.explain import attention_maps
    from provg.engine.inference import model_input
    from provg.ops import survey_gate

    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", text_cache_size=0).eval()
    sample = load_dataset("synthrs", synthrs_root, "val")[0]
    images = model_input(sample["image"], 128)
    seen: dict[str, tuple] = {}

    def keep(name):
        return lambda module, args, output: seen.__setitem__(name, (args, output))

    pcm = model.pcm[1]
    handles = [
        getattr(pcm, step).register_forward_hook(keep(step)) for step in ("survey", "locate", "verify")
    ]
    with torch.inference_mode():
        maps = attention_maps(model, images, [sample["text"]])
    for handle in handles:
        handle.remove()
    size = maps[1]["locate"].shape[-2:]

    (x, _, _), y = seen["locate"]
    strongest = x.abs().argmax(dim=-1, keepdim=True)
    gate = (y.gather(-1, strongest) / x.gather(-1, strongest))[0, :, 0]
    torch.testing.assert_close(maps[1]["locate"][0].flatten(), gate, rtol=1e-4, atol=1e-5)

    _, y = seen["verify"]
    torch.testing.assert_close(maps[1]["verify"][0], y[0].norm(dim=-1).reshape(size), rtol=1e-4, atol=1e-5)

    (x, language, mask, hw), _ = seen["survey"]
    with torch.inference_mode():
        q, k, v = pcm.survey.gate_inputs(x, language, hw)
        gate = survey_gate(torch.ones_like(x), q, k, v, mask, pcm.survey.heads)
    torch.testing.assert_close(maps[1]["survey"][0], gate[0].mean(-1).reshape(size), rtol=1e-4, atol=1e-5)
