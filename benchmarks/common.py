"""Shared benchmark plumbing: timing (medians), machine description, table printing, CSV rows."""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# Untimed calls before each timed one in `interleaved_ms` (None: 0, and no timing note in `versions`): set by
# `configure_timing`.
SETTLE: int | None = None


def add_settle_argument(parser: argparse.ArgumentParser) -> None:
    """``--settle N`` (default 2) for a benchmark's command line; pass its value to `configure_timing`."""
    parser.add_argument(
        "--settle",
        type=int,
        default=2,
        help="untimed calls of the same provider before each timed call (default 2), so a call starts from "
        "its own caches, not the previous provider's dirty lines; 0 times calls straight after each other",
    )


def configure_timing(settle: int) -> None:
    """Time this process's interleaved rounds with ``settle`` untimed calls before each timed call (see
    `interleaved_ms`), and say so above every table and in every CSV row."""
    global SETTLE
    if settle < 0:
        raise ValueError(f"settle must be 0 or more untimed calls, got {settle}")
    SETTLE = settle


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


def allocator() -> str:
    """The host allocator settings of this process, as the environment gives them (they move CPU timings:
    glibc returning freed pages to the OS makes the next large tensor fault them in again)."""
    settings = [
        f"{name}={os.environ[name]}" for name in ("GLIBC_TUNABLES", "LD_PRELOAD") if os.environ.get(name)
    ]
    return " ".join(settings) or "default"


def versions() -> str:
    """Software versions and the allocator setting: printed above every table, stored with every row."""
    import provg

    cuda = torch.version.cuda if torch.cuda.is_available() else "none"
    python = platform.python_version()
    timing = f", timing settle {SETTLE}" if SETTLE is not None else ""
    return (
        f"torch {torch.__version__}, provg {provg.__version__}, cuda {cuda}, python {python}, "
        f"allocator {allocator()}{timing}"
    )


def _time_once(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    function()
    return 1000 * (time.perf_counter() - begin)


def median_ms(
    function: Callable[[], object], device: torch.device, warmup: int = 3, repeat: int = 15
) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile of ``repeat`` timed calls, in milliseconds (each call follows the
    previous one of the same function, so no settling calls are needed)."""
    return interleaved_ms({"f": function}, device, warmup, repeat, settle=0)["f"]


def interleaved_ms(
    functions: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int = 3,
    repeat: int = 15,
    settle: int | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Median, 20th and 80th percentile (ms) of each function, timed in round-robin rounds.

    Interleaving keeps slow drifts of a shared machine (other tenants, frequency, memory state) from
    favouring whichever function happened to run first; Python's garbage collector is paused while timing.
    With ``settle`` > 0 (default: `configure_timing`'s, else 0), each timed call follows that many untimed
    calls of the same function, so it starts from the caches its own previous call left rather than
    another function's. On a CPU a call that follows another pays for writing back that one's dirty lines,
    which taxes whichever function follows the one writing the most (`bench_call_order.py`, AMD EPYC,
    2026-11-28: the fused 60² tail took 1.26 ms after eager PyTorch's call and 0.88 ms after its own;
    eager's took 1.38 and 1.42 ms). One settling call does not always clear a predecessor's lines: the
    fused tail's 60² backward read 0.37–0.48 ms in `bench_repconv.py` with 1, 0.31–0.34 ms with 2.
    """
    settle = (SETTLE or 0) if settle is None else settle
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, function in functions.items():
                for _ in range(settle):
                    function()
                times[name].append(_time_once(function, device))
    finally:
        if collecting:
            gc.enable()
    result = {}
    for name, values in times.items():
        quantiles = statistics.quantiles(values, n=5) if len(values) > 1 else [values[0]] * 4
        result[name] = (statistics.median(values), quantiles[0], quantiles[-1])
    return result


def use_side_stream() -> None:
    """Make a new CUDA stream current for the rest of the process: graph-timed benchmarks run under it.

    Graph capture cannot use the default stream, and creating the inputs, the retained forward graphs
    (whose backward kernels run on the stream their forward ran on) and the warm-up calls on the stream
    that is then captured keeps every captured kernel on it.
    """
    torch.cuda.set_stream(torch.cuda.Stream())


def cuda_graph(function: Callable[[], object], warmup: int = 3) -> Callable[[], object]:
    """A callable that replays ``function``'s kernels from a CUDA graph captured on the current stream
    (a side stream: `use_side_stream`).

    Timing replays measures the device: the host work of a call (Python, dispatch, launches) is paid once
    at capture, so what is left is the kernels and the short gaps between them. Raises RuntimeError where
    the call cannot be captured (a host synchronization, a host-to-device copy).
    """
    stream = torch.cuda.current_stream()
    if stream == torch.cuda.default_stream():
        raise RuntimeError("CUDA graphs are captured on a side stream: call common.use_side_stream() first")
    for _ in range(warmup):
        function()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        function()
    return graph.replay


def graphed(calls: dict) -> dict:
    """``calls`` (name: callable) replayed from CUDA graphs (`cuda_graph`); a call that cannot be
    captured is left out, and why is printed."""
    result = {}
    for name, call in calls.items():
        try:
            result[name] = cuda_graph(call)
        except RuntimeError as error:
            print(f"{name}: not captured in a CUDA graph ({str(error).splitlines()[0]})")
    return result


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


def fused_backends(device: torch.device) -> list[str]:
    """The fused backends this install has for ``device``: cpp on a CPU, cuda and triton on a GPU."""
    from provg.ops import available_backends  # here: parsers.py shares this module and needs no kernels

    have = [b for b in ("cpp", "triton", "cuda") if available_backends()[b]]
    return [b for b in have if (b == "cpp") == (device.type == "cpu")]


def dtype_unsupported(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why ``dtype`` cannot be benchmarked on ``device`` (a fused backend there does not run it), with the
    fix; None when every fused backend runs it."""
    from provg.ops._gate_api import GATE_DTYPES

    for backend in fused_backends(device):
        if dtype not in GATE_DTYPES[backend]:
            names = ", ".join(str(d).removeprefix("torch.") for d in GATE_DTYPES[backend])
            asked = str(dtype).removeprefix("torch.")
            return (
                f"the {backend} backend runs {names} on {device.type}, not {asked}; choose one of those with "
                "--dtype (or benchmark on a GPU)"
            )
    return None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0") == "1"
