"""Benchmark of the PCM gates (survey, locate, verify): every available backend against the eager
PyTorch reference and `torch.compile` of the reference, at the stage shapes of DESIGN §5.

Forward, backward and forward+backward medians (ms); GB/s counts the fewest bytes a gate must move
(each large input read once, each large output written once: survey forward x, q → y; backward
grad, x, q → dx, dq; locate and verify read x and write y; their backward reads grad, x and writes dx),
next to a measured copy bandwidth. Prints a table and appends rows to benchmarks/results/pcm.csv
(pcm_graph.csv for CUDA-graph replays).

    python benchmarks/bench_pcm.py                 # CPU: B = 1 and 2, stages 1-2; GPU: B = 8, stages 1-4
    python benchmarks/bench_pcm.py --stages 1 --batch 1 --ops survey
    python benchmarks/bench_pcm.py --ops survey --valid 4   # a short expression: 4 of 20 tokens valid
    python benchmarks/bench_pcm.py --graph         # GPU: replays of CUDA graphs, the device time alone
    python benchmarks/bench_pcm.py --toy           # a 4 x 8 gate: each provider's host cost per call
"""

from __future__ import annotations

import argparse
import functools

import torch

from provg.ops import locate_gate, survey_gate, verify_gate
from provg.ops.locate_gate import locate_gate_reference
from provg.ops.survey_gate import survey_gate_reference
from provg.ops.verify_gate import verify_gate_reference

from common import (
    add_settle_argument,
    append_csv,
    configure_timing,
    dtype_unsupported,
    fused_backends,
    graphed,
    interleaved_ms,
    median_ms,
    print_table,
    use_side_stream,
)

STAGES = {1: (120 * 120, 128), 2: (60 * 60, 256), 3: (30 * 30, 512), 4: (15 * 15, 1024)}
TOY = (4, 8)  # positions, channels: a call whose kernels cost next to nothing
TOKENS, VALID = 20, 15
# Large tensors read + written per (B·P·C) element: (forward, backward).
TRAFFIC = {"survey": (3, 5), "locate": (2, 3), "verify": (2, 3)}


def make_inputs(
    op: str, batch: int, positions: int, channels: int, device, dtype, valid: int = VALID
) -> tuple[list, list]:
    """(arguments, which of them need gradients) for one gate call; the first ``valid`` of the TOKENS
    context tokens are valid, the rest padding."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)

    mask = torch.zeros(batch, TOKENS, dtype=torch.bool, device=device)
    mask[:, :valid] = True
    x = rand(batch, positions, channels)
    if op == "survey":
        return [
            x,
            rand(batch, positions, channels),
            rand(batch, TOKENS, channels),
            rand(batch, TOKENS, channels),
            mask,
        ], [0, 1, 2, 3]
    if op == "locate":
        return [
            x,
            rand(channels) / channels**0.5,
            rand(()),
            rand(batch, TOKENS),
            rand(batch, TOKENS),
            mask,
        ], [0, 1, 2, 3, 4]
    return [x, rand(batch, TOKENS), rand(batch, TOKENS), mask, rand(()) * 0.1], [0, 1, 2, 4]


def functions(op: str, heads: int = 1):
    if op == "survey":
        return (
            lambda *a, backend=None: survey_gate(*a, heads, backend=backend),
            lambda *a: survey_gate_reference(*a, heads),
        )
    if op == "locate":
        return locate_gate, locate_gate_reference
    return verify_gate, verify_gate_reference


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a large copy (bytes read + written)."""
    n = (256 if device.type == "cuda" else 64) * 2**20 // 4
    a = torch.empty(n, device=device).uniform_()
    b = torch.empty_like(a)
    median, _, _ = median_ms(lambda: b.copy_(a), device, repeat=10)
    return 2 * a.numel() * 4 / (median / 1000) / 1e9


def mode_calls(call, args: list, grad_indices: list) -> dict[str, object]:
    """Callables timing one provider's forward, backward (of a retained graph) and forward+backward."""

    def with_grad():
        inputs = [
            a.detach().requires_grad_(i in grad_indices)
            if torch.is_tensor(a) and a.is_floating_point()
            else a
            for i, a in enumerate(args)
        ]
        return inputs, call(*inputs)

    def forward():
        with torch.no_grad():
            call(*args)

    inputs, out = with_grad()
    upstream = torch.randn_like(out)
    leaves = [inputs[i] for i in grad_indices]

    def backward():
        torch.autograd.grad(out, leaves, upstream, retain_graph=True)

    def both():
        fresh, result = with_grad()
        torch.autograd.grad(result, [fresh[i] for i in grad_indices], upstream)

    return {"fwd": forward, "bwd": backward, "both": both}


def graphed_calls(calls: dict) -> dict:
    """Each provider's mode callables replayed from CUDA graphs; a mode that cannot be captured is left
    out (and why printed), a provider with none is dropped."""
    flat = graphed({(name, mode): call for name, modes in calls.items() for mode, call in modes.items()})
    graphs = {
        name: {mode: flat[name, mode] for mode in modes if (name, mode) in flat}
        for name, modes in calls.items()
    }
    return {name: modes for name, modes in graphs.items() if modes}


def time_providers(
    providers: dict, args: list, grad_indices: list, device, repeat: int, graph: bool = False
) -> dict:
    """{provider: (forward, backward, forward+backward) medians in ms}, each mode timed interleaved
    (replays of CUDA graphs with ``graph``)."""
    calls = {name: mode_calls(call, args, grad_indices) for name, call in providers.items()}
    if graph:
        calls = graphed_calls(calls)
    medians = {
        mode: interleaved_ms({name: c[mode] for name, c in calls.items() if mode in c}, device, repeat=repeat)
        for mode in ("fwd", "bwd", "both")
    }
    return {
        name: tuple(
            medians[mode][name][0] if name in medians[mode] else None for mode in ("fwd", "bwd", "both")
        )
        for name in calls
    }


def speedup(timings: dict, reference: str, both: float | None) -> str:
    """``reference``'s forward+backward time over ``both`` ('' where either is missing)."""
    base = timings.get(reference, (None, None, None))[2]
    return f"{base / both:.2f}x" if base is not None and both is not None else ""


def main() -> None:
    # The backward is timed on its own with retain_graph=True, which a compiled backward that donates its
    # buffers refuses.
    torch._functorch.config.donated_buffer = False
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", default=["survey", "locate", "verify"])
    parser.add_argument("--stages", nargs="+", type=int, default=None)
    parser.add_argument("--batch", nargs="+", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--valid",
        type=int,
        default=VALID,
        help=f"valid tokens of the {TOKENS} (default {VALID}; the rest are padding, which the fused CPU "
        "survey kernel skips)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    add_settle_argument(parser)
    parser.add_argument(
        "--graph",
        action="store_true",
        help="CUDA only: time replays of CUDA graphs of each call, i.e. the device's work without the host's",
    )
    parser.add_argument(
        "--toy",
        action="store_true",
        help=f"time a {TOY[0]}-position, {TOY[1]}-channel gate instead of the stages: what a call costs the "
        "host (Python, dispatch, autograd) with each provider",
    )
    args = parser.parse_args()
    configure_timing(args.settle)
    if args.toy and args.stages:
        parser.error("--toy replaces the stage shapes; leave out --stages")
    if not 0 <= args.valid <= TOKENS:
        parser.error(f"--valid must be between 0 and {TOKENS}, got {args.valid}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.graph and device.type != "cuda":
        parser.error("--graph times CUDA graph replays and needs a CUDA device")
    if args.graph:
        use_side_stream()
    dtype = getattr(torch, args.dtype)
    unsupported = dtype_unsupported(dtype, device)
    if unsupported:
        parser.error(f"--dtype {args.dtype}: {unsupported}")
    stages = args.stages or ([1, 2, 3, 4] if device.type == "cuda" else [1, 2])
    shapes = {"toy": TOY} if args.toy else {stage: STAGES[stage] for stage in stages}
    batches = args.batch or ([8] if device.type == "cuda" else [1, 2])
    backends = fused_backends(device)
    copy = copy_bandwidth(device)
    header = [
        "op",
        "stage",
        "B",
        "P",
        "C",
        "provider",
        "fwd ms",
        "bwd ms",
        "fwd+bwd ms",
        "fwd GB/s",
        "fwd % copy",
        "fwd+bwd vs eager",
        "fwd+bwd vs compile",
    ]
    rows = []
    for op in args.ops:
        fused, reference = functions(op)
        # One compilation per gate for all shapes (dynamic shapes), to keep the benchmark short.
        compiled = torch.compile(reference, dynamic=True) if not args.no_compile else None
        for stage, (positions, channels) in shapes.items():
            for batch in batches:
                inputs, grads = make_inputs(op, batch, positions, channels, device, dtype, args.valid)
                providers = {"eager": reference}
                if compiled is not None:
                    providers["compile"] = compiled
                for backend in backends:
                    providers[backend] = functools.partial(fused, backend=backend)
                timings = time_providers(providers, inputs, grads, device, args.repeat, args.graph)
                size = batch * positions * channels * inputs[0].element_size()
                for name, (fwd, bwd, both) in timings.items():
                    # NOTE: a toy call moves a few hundred bytes: no bandwidth to speak of.
                    bandwidth = (
                        TRAFFIC[op][0] * size / (fwd / 1000) / 1e9
                        if fwd is not None and not args.toy
                        else None
                    )
                    rows.append(
                        [
                            op if args.valid == VALID else f"{op} ({args.valid}/{TOKENS} valid)",
                            stage,
                            batch,
                            positions,
                            channels,
                            name,
                            *(f"{t:.3f}" if t is not None else "" for t in (fwd, bwd, both)),
                            f"{bandwidth:.1f}" if bandwidth is not None else "",
                            f"{100 * bandwidth / copy:.0f}%" if bandwidth is not None else "",
                            speedup(timings, "eager", both),
                            speedup(timings, "compile", both),
                        ]
                    )
    timing = "CUDA graph replays" if args.graph else "calls"
    title = (
        f"PCM gates, {args.dtype}, {args.valid} of {TOKENS} tokens valid, timed as {timing} "
        f"(copy bandwidth {copy:.1f} GB/s)"
    )
    print_table(title, header, rows)
    table = [[*r, args.dtype] for r in rows]
    print(f"rows appended to {append_csv('pcm_graph' if args.graph else 'pcm', [*header, 'dtype'], table)}")


if __name__ == "__main__":
    main()
