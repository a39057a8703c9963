"""Whole-model cost of ProVG next to its floor, measured in one run: forward latency (reference ops,
fused ops, re-parameterized deploy form, torch.compile), a training step, peak memory, parameters,
FLOPs and a per-component breakdown, beside timm's Swin-B features-only forward and the text encoder
alone (random weights, eval mode, median of --repeat runs after --warmup).

Prints tables and appends rows to benchmarks/results/model.csv.

    python benchmarks/bench_model.py                       # provg_swin_b, CPU: batch 1 and 2
    python benchmarks/bench_model.py --models provg_tiny --no-compile
    python benchmarks/bench_model.py --dtypes fp32 bf16    # GPU: batch 8 and 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial

import timm
import torch
import torch._inductor.config as inductor_config
from torch.utils.flop_counter import FlopCounterMode

import provg
from provg.losses import ProVGLoss

from common import append_csv, interleaved_ms, print_table

TEXT = "the small gray vehicle on the right of the storage tank"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def backend(name: str | None) -> Iterator[None]:
    """Force every op's backend (None: automatic) for the duration."""
    previous = os.environ.pop("PROVG_BACKEND", None)
    if name is not None:
        os.environ["PROVG_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("PROVG_BACKEND", None)
        if previous is not None:
            os.environ["PROVG_BACKEND"] = previous


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def swin_features(model_config: provg.models.ProVGConfig) -> torch.nn.Module:
    """timm's features-only form of the model's backbone, as ProVG builds it (the floor)."""
    kwargs = dict(model_config.backbone_kwargs)
    if model_config.backbone.startswith(("swin", "vit", "deit", "eva", "beit")):
        kwargs.setdefault("img_size", model_config.image_size)
    return timm.create_model(
        model_config.backbone, features_only=True, out_indices=(-4, -3, -2, -1), **kwargs
    )


class ComponentTimer:
    """Wall time spent inside chosen submodules (forward pre/post hooks; synchronizes on GPU)."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.device = device
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(partial(self._start, name)))
            self.handles.append(module.register_forward_hook(partial(self._stop, name)))
        self._started: dict[str, float] = {}

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _start(self, name, module, args) -> None:
        self._started[name] = self._now()

    def _stop(self, name, module, args, output) -> None:
        self.totals[name] += 1000 * (self._now() - self._started.pop(name))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def breakdown(model, images, texts, device, dtype, repeat: int) -> dict[str, float]:
    """Median ms per component over ``repeat`` forwards (after one warm-up)."""
    modules = {
        "text encoder": model.text_encoder,
        "backbone+pcm": model.backbone,
        "cfm": model.cfm,
        "lcd": model.lcd,
    }
    modules.update({f"pcm{i + 1}": pcm for i, pcm in enumerate(model.pcm)})
    runs: list[dict[str, float]] = []
    for index in range(repeat + 1):
        model.text_encoder.clear_cache()
        timer = ComponentTimer(modules, device)
        start = timer._now()
        with torch.inference_mode(), autocast(device, dtype):
            model(images, texts)
        total = 1000 * (timer._now() - start)
        timer.remove()
        if index == 0:
            continue
        parts = dict(timer.totals)
        pcm = sum(v for k, v in parts.items() if k.startswith("pcm"))
        row = {
            "text encoder": parts["text encoder"],
            "backbone stages": parts["backbone+pcm"] - pcm,
            **{k: v for k, v in parts.items() if k.startswith("pcm")},
            "pcm (all stages)": pcm,
            "cfm": parts["cfm"],
            "lcd": parts["lcd"],
            "heads, parsing, rest": total
            - parts["text encoder"]
            - parts["backbone+pcm"]
            - parts["cfm"]
            - parts["lcd"],
            "total": total,
        }
        runs.append(row)
    return {key: sorted(run[key] for run in runs)[len(runs) // 2] for key in runs[0]}


def count_flops(function: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """Total GFLOPs of one call, and GFLOPs per top-level submodule (reference ops, so the PCM
    attention is counted too)."""
    with backend("torch"), torch.inference_mode(), FlopCounterMode(display=False, depth=2) as counter:
        function()
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        if name.count(".") == 1:  # "ProVG.<child>"
            per_module[name.split(".", 1)[1]] = sum(ops.values()) / 1e9
    return counter.get_total_flops() / 1e9, per_module


def peak_memory(model_name: str, device: torch.device) -> dict[str, float]:
    """Peak RSS (GiB) of a fresh process that imports torch, builds the model and runs one batch-1
    inference; the RSS after importing torch is reported too (CPU only)."""
    code = f"""
import json, torch
def rss():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
after_import = rss()
import provg
torch.manual_seed(0)
model = provg.create_model({model_name!r}).eval()
size = model.config.image_size
with torch.inference_mode():
    model(torch.randn(1, 3, size, size), [{TEXT!r}])
print(json.dumps({{"import torch": after_import, "peak": rss()}}))
"""
    if device.type != "cpu":
        return {}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_step(model, criterion, optimizer, images, texts, boxes, masks, device, dtype) -> None:
    with autocast(device, dtype):
        out = model(images, texts)
        loss = criterion(out.boxes.float(), out.mask_logits.float(), boxes, masks)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bench(name: str, batch: int, dtype_name: str, device: torch.device, args) -> tuple[list, list, dict]:
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    model = provg.create_model(name).to(device).eval()
    size = model.config.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    texts = [TEXT] * batch
    floor = swin_features(model.config).to(device).eval()
    deploy = provg.create_model(name).to(device).eval()
    deploy.load_state_dict(model.state_dict())
    provg.reparameterize(deploy)

    def forward(network, ops: str | None = None) -> None:
        network.text_encoder.clear_cache()  # every image brings a new expression: encode it
        with backend(ops), torch.inference_mode(), autocast(device, dtype):
            network(images, texts)

    def floor_forward() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            floor(images)

    def text_only() -> None:
        model.text_encoder.clear_cache()
        with torch.inference_mode():
            model.text_encoder(model.parse(texts))

    def parse_only() -> None:
        model.parser.parse_batch(texts)  # the parser itself, bypassing the model's parse cache

    functions = {
        "timm backbone features": floor_forward,
        "text encoder alone": text_only,
        "parser alone (uncached)": parse_only,
        "provg reference ops": partial(forward, model, "torch"),
        "provg fused ops": partial(forward, model),
        "provg deploy + fused": partial(forward, deploy),
    }
    if not args.no_compile:
        compiled = torch.compile(deploy.ground)
        language = deploy.encode_text(texts)

        def compiled_forward() -> None:
            deploy.text_encoder.clear_cache()
            with torch.inference_mode(), autocast(device, dtype):
                compiled(images, deploy.encode_text(texts))

        begin = time.perf_counter()
        # Freezing: inductor treats the weights as constants (prepacked for oneDNN, conv + bias + SiLU
        # fused), the setting torch recommends for inference; it applies when the graph is compiled.
        with inductor_config.patch(freezing=True), torch.inference_mode(), autocast(device, dtype):
            compiled(images, language)
        print(f"  torch.compile of deploy.ground: {time.perf_counter() - begin:.0f} s to compile", flush=True)
        functions["provg deploy + fused + compile (freezing)"] = compiled_forward
    timings = interleaved_ms(functions, device, warmup=args.warmup, repeat=args.repeat)
    floor_ms = timings["timm backbone features"][0]
    rows = [
        [
            name,
            device.type,
            dtype_name,
            batch,
            what,
            f"{m:.1f}",
            f"{p20:.1f}",
            f"{p80:.1f}",
            f"{m / floor_ms:.2f}",
        ]
        for what, (m, p20, p80) in timings.items()
    ]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    boxes = torch.full((batch, 4), 0.25, device=device)
    masks = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
    masks[:, size // 8 : size // 3, size // 8 : size // 3] = True
    step = partial(train_step, model, ProVGLoss(), optimizer, images, texts, boxes, masks, device, dtype)
    m, p20, p80 = interleaved_ms({"step": step}, device, warmup=2, repeat=max(3, args.repeat))["step"]
    fused_ms = timings["provg fused ops"][0]
    rows.append(
        [
            name,
            device.type,
            dtype_name,
            batch,
            "train step (fwd+bwd+AdamW), per image",
            f"{m / batch:.1f}",
            f"{p20 / batch:.1f}",
            f"{p80 / batch:.1f}",
            f"{m / fused_ms:.2f}× fwd",
        ]
    )
    model.eval()
    parts = breakdown(deploy, images, texts, device, dtype, max(3, args.repeat // 2))
    parts_rows = [[name, device.type, dtype_name, batch, what, f"{ms:.1f}"] for what, ms in parts.items()]
    details = {"params": sum(p.numel() for p in model.parameters())}
    if batch == 1 and dtype is None:
        details["gflops"], details["gflops_by_module"] = count_flops(partial(forward, deploy, "torch"))
        details["floor_gflops"], _ = count_flops(floor_forward)
    return rows, parts_rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["provg_swin_b"])
    parser.add_argument("--batches", nargs="+", type=int, help="default: 1 2 on CPU, 8 32 on GPU")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (minutes)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = args.batches or ([8, 32] if device.type == "cuda" else [1, 2])
    header = ["model", "device", "dtype", "batch", "what", "median_ms", "p20_ms", "p80_ms", "× timm backbone"]
    rows, parts, notes = [], [], []
    for name in args.models:
        for dtype_name in args.dtypes:
            for batch in batches:
                print(f"{name} {dtype_name} batch {batch} on {device}", flush=True)
                model_rows, model_parts, details = bench(name, batch, dtype_name, device, args)
                rows += model_rows
                parts += model_parts
                if "gflops" in details:
                    by_module = ", ".join(f"{k} {v:.1f}" for k, v in details["gflops_by_module"].items())
                    notes.append(
                        f"{name}: {details['params'] / 1e6:.1f} M parameters; batch-1 forward "
                        f"{details['gflops']:.1f} GFLOPs (timm backbone {details['floor_gflops']:.1f}; "
                        f"{by_module})"
                    )
        if not args.no_memory:
            memory = peak_memory(name, device)
            if memory:
                notes.append(
                    f"{name}: peak RSS of a batch-1 inference process {memory['peak']:.2f} GiB "
                    f"(of which {memory['import torch']:.2f} GiB after importing torch)"
                )
    print_table(
        "ProVG forward and training step beside its backbone (random weights, eval mode)", header, rows
    )
    print_table("Per-component forward time (deploy form, fused ops)", [*header[:5], "median_ms"], parts)
    for note in notes:
        print(note)
    path = append_csv("model", header, rows + [[*row[:5], row[5], "", "", "component"] for row in parts])
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
