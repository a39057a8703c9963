"""What a timed call costs depending on the call before it: the fused training-mode tail
(`provg.ops.rep_bn_add_silu`, cpp backend) and the eager modules, forward+backward, each timed right
after the other provider's call, after its own, and after a read of a buffer larger than the caches.

On a CPU a call pays for writing back the dirty cache lines the call before it left, so round-robin
timing (`common.interleaved_ms` with ``settle=0``) charges each provider for its predecessor's writes:
this measures how much, and is why `bench_pcm.py` and `bench_repconv.py` settle each timed call behind
untimed calls of the same provider (``--settle``, default 2).

    python benchmarks/bench_call_order.py                 # CPU: 120², 60², 30², 15², B = 1
    python benchmarks/bench_call_order.py --sizes 60 --batch 2
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time

import torch
from bench_repconv import WIDTH, EagerTail, channels_last_map, eager_tail, fused_tail, tail_forward_backward

from common import append_csv, print_table

HEADER = ["size", "B", "provider", "after", "median ms", "× after itself"]


def time_orders(size: int, batch: int, repeat: int) -> dict[tuple[str, str], float]:
    """{(provider, what ran before it): median ms} for the eager and cpp tails."""
    g = torch.Generator().manual_seed(0)
    maps = [channels_last_map(batch, size, g, "cpu", torch.float32) for _ in range(2)]
    upstream = torch.randn_like(maps[0])
    module = EagerTail(WIDTH).train()
    calls = {
        "eager": functools.partial(tail_forward_backward, eager_tail, module, maps, upstream),
        "cpp": functools.partial(
            tail_forward_backward, functools.partial(fused_tail, backend="cpp"), module, maps, upstream
        ),
    }
    # Twice the last-level cache of any current CPU server part: reading it leaves only clean lines.
    scrub = torch.ones(64 * 2**20 // 4)
    before = {"eager": calls["eager"], "cpp": calls["cpp"], "cache scrub": scrub.sum}
    times: dict[tuple[str, str], list[float]] = {(p, b): [] for p in calls for b in before}
    for call in calls.values():
        for _ in range(3):
            call()
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for provider, call in calls.items():
                for name, previous in before.items():
                    previous()
                    start = time.perf_counter()
                    call()
                    times[provider, name].append(1000 * (time.perf_counter() - start))
    finally:
        if collecting:
            gc.enable()
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[120, 60, 30, 15])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for batch in args.batch:
        for size in args.sizes:
            medians = time_orders(size, batch, args.repeat)
            for (provider, after), ms in medians.items():
                own = medians[provider, provider]
                rows.append([f"{size}²", batch, provider, after, f"{ms:.3f}", f"{ms / own:.2f}"])
    print_table("Tail forward+backward by the call before it (cpu, float32, channels-last)", HEADER, rows)
    print(f"rows appended to {append_csv('call_order', HEADER, rows)}")


if __name__ == "__main__":
    main()
