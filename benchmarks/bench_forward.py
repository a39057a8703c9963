"""Forward latency and a training step of the registered ProVG models (random weights), per device.

Prints a table and appends rows to benchmarks/results/forward.csv.

    python benchmarks/bench_forward.py [--models provg_tiny provg_swin_b]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

import provg
from provg.losses import ProVGLoss

from common import append_csv, median_ms, print_table

TEXT = "the small gray vehicle on the right of the storage tank"


def forward(model: torch.nn.Module, images: torch.Tensor, texts: list[str]) -> None:
    with torch.inference_mode():
        model(images, texts)


def train_step(model, criterion, optimizer, images, texts, target_boxes, target_masks) -> None:
    out = model(images, texts)
    loss = criterion(out.boxes, out.mask_logits, target_boxes, target_masks)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bench_model(name: str, batches: tuple[int, ...], device: torch.device, args) -> list[list[object]]:
    torch.manual_seed(0)
    model = provg.create_model(name, text_encoder=args.text_encoder, parser=args.parser).to(device)
    size = model.config.image_size
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, size, size, device=device)
        texts = [TEXT] * batch
        model.eval()
        median, p20, p80 = median_ms(partial(forward, model, images, texts), device, repeat=args.repeat)
        rows.append(
            [
                name,
                device.type,
                batch,
                "forward",
                f"{median:.1f}",
                f"{p20:.1f}",
                f"{p80:.1f}",
                f"{median / batch:.1f}",
            ]
        )
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        target_boxes = torch.full((batch, 4), 0.25, device=device)
        target_masks = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
        target_masks[:, size // 8 : size // 3, size // 8 : size // 3] = True
        step = partial(train_step, model, ProVGLoss(), optimizer, images, texts, target_boxes, target_masks)
        median, p20, p80 = median_ms(step, device, warmup=2, repeat=max(3, args.repeat // 2))
        rows.append(
            [
                name,
                device.type,
                batch,
                "train step",
                f"{median:.1f}",
                f"{p20:.1f}",
                f"{p80:.1f}",
                f"{median / batch:.1f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["provg_tiny", "provg_swin_b"])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--text-encoder", default="all-MiniLM-L6-v2", help="HF model name or local path")
    parser.add_argument("--parser", default="spacy", help="expression parser (naive, nltk, spacy)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        batches = {"provg_tiny": (1, 32), "provg_swin_b": (1, 8)}
    else:
        batches = {"provg_tiny": (1, 8), "provg_swin_b": (1,)}
    header = ["model", "device", "batch", "mode", "median_ms", "p20_ms", "p80_ms", "ms/image"]
    rows = []
    for name in args.models:
        rows += bench_model(name, batches.get(name, (1,)), device, args)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table("ProVG forward and training step (random weights, fp32)", header, rows)
    print(f"rows appended to {append_csv('forward', header, rows)}")


if __name__ == "__main__":
    main()
