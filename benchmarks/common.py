"""Shared benchmark plumbing: timing (medians), machine description, table printing, CSV rows."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def versions() -> str:
    import provg

    cuda = torch.version.cuda if torch.cuda.is_available() else "none"
    python = platform.python_version()
    return f"torch {torch.__version__}, provg {provg.__version__}, cuda {cuda}, python {python}"


def median_ms(
    function: Callable[[], object], device: torch.device, warmup: int = 3, repeat: int = 15
) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile of ``repeat`` timed calls, in milliseconds."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            function()
            times.append(1000 * (time.perf_counter() - begin))
    quantiles = statistics.quantiles(times, n=5)
    return statistics.median(times), quantiles[0], quantiles[-1]


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n{title}\nmachine: {machine()}\ndate: {datetime.date.today()}\nversions: {versions()}")
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def append_csv(name: str, header: list[str], rows: list[list[object]]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    new = not path.exists()
    stamp = [datetime.datetime.now().isoformat(timespec="seconds"), machine(), versions()]
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["time", "machine", "versions", *header])
        for row in rows:
            writer.writerow([*stamp, *row])
    return path


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0") == "1"
