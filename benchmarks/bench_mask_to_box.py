"""Benchmark of provg.ops.mask_to_box: every available backend against the PyTorch reference.

Prints a table (median and p20/p80 milliseconds, achieved bandwidth: one read of the masks) and appends
rows to benchmarks/results/mask_to_box.csv.

    python benchmarks/bench_mask_to_box.py            # CPU shapes, and GPU shapes when a GPU is present
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from provg.ops import available_backends, mask_to_box

from common import append_csv, median_ms, print_table

CPU_SHAPES = [(1, 480, 480), (8, 480, 480), (8, 800, 800)]
GPU_SHAPES = [(8, 480, 480), (32, 480, 480), (32, 800, 800), (256, 128, 128)]


def random_masks(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """Masks holding one random rectangle each (what predicted masks look like), on ``device``."""
    batch, height, width = shape
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(shape, dtype=torch.bool)
    for b in range(batch):
        y0, x0 = (int(v) for v in torch.randint(0, height // 2, (2,), generator=g))
        masks[b, y0 : y0 + height // 3, x0 : x0 + width // 3] = True
    return masks.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    backends = available_backends()
    header = ["device", "shape", "backend", "median_ms", "p20_ms", "p80_ms", "GB/s", "speedup"]
    rows = []
    plans = [(torch.device("cpu"), CPU_SHAPES, ["torch", "cpp"])]
    if torch.cuda.is_available():
        plans.append((torch.device("cuda"), GPU_SHAPES, ["torch", "cuda"]))
    for device, shapes, names in plans:
        for shape in shapes:
            masks = random_masks(shape, device)
            expected = mask_to_box(masks, backend="torch")
            reference_ms = None
            for name in names:
                if name != "torch" and not backends[name]:
                    continue
                got = mask_to_box(masks, backend=name)
                assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), name
                call = partial(mask_to_box, masks, backend=name)
                median, p20, p80 = median_ms(call, device, repeat=args.repeat)
                reference_ms = reference_ms or median
                bandwidth = masks.numel() / (median / 1000) / 1e9
                rows.append(
                    [
                        device.type,
                        "x".join(map(str, shape)),
                        name,
                        f"{median:.3f}",
                        f"{p20:.3f}",
                        f"{p80:.3f}",
                        f"{bandwidth:.1f}",
                        f"{reference_ms / median:.2f}x",
                    ]
                )
    print_table("mask_to_box: boxes of a batch of bool masks", header, rows)
    print(f"rows appended to {append_csv('mask_to_box', header, rows)}")


if __name__ == "__main__":
    main()
