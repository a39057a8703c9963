"""Benchmark of the RepVGG block kernels of the CFM fusion blocks: the training-mode fused tail
(`provg.ops.rep_bn_add_silu`), the deploy convolution (`provg.ops.conv3x3_bias_silu`) and the whole CFM
in its train form (eval mode) against its re-parameterized form.

Tail: forward, backward and forward+backward medians (ms) of SiLU(BN(a) + BN(b)) in training mode
(batch statistics and running-statistic updates) for every available backend, against the eager
modules (two `nn.BatchNorm2d`, an add, `F.silu`) and `torch.compile` of them. Deploy convolution:
forward of every backend (on CPU the cpp backend's direct and Winograd algorithms) against eager
`F.conv2d` + bias + SiLU and its `torch.compile`. Chain (``--parts chain``, not run by default): the
tail as a model runs it, ``--links`` tails in a chain under one backward (forward+backward per tail).
Kernels: the tail's forward and backward kernels called directly, and the ATen ops of the eager tail
(``eager ops``: what its autograd runs, without autograd), in GB/s next to a copy of one map.
CFM: forward at the paper's 480×480 input (maps 120², 60², 30², 15² at width 256) in eval mode, train
and deploy form with PyTorch modules and with the fused ops (automatic choices; on CPU also the deploy
form with the direct convolution). Maps are channels-last, as in the model.
Prints tables and appends rows to benchmarks/results/repconv.csv (and repconv_kernels.csv; with
``--graph`` to repconv_graph.csv and repconv_kernels_graph.csv).

    python benchmarks/bench_repconv.py                # CPU: B = 1 and 2; GPU: B = 8
    python benchmarks/bench_repconv.py --sizes 120 --batch 1 --parts tail kernels
    python benchmarks/bench_repconv.py --graph --parts tail kernels conv   # GPU: device time alone
    python benchmarks/bench_repconv.py --parts tail chain --no-compile    # one call against a chain of 8

Large CPU tensors come from fresh pages unless glibc keeps freed memory (page faults then cost as much
as the kernels at 120²); the allocator setting (``GLIBC_TUNABLES``, ``LD_PRELOAD``) is printed and
stored with every row (common.versions), e.g. ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2000000000:
glibc.malloc.trim_threshold=4000000000 python benchmarks/bench_repconv.py``.
"""

from __future__ import annotations

import argparse
import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from provg.models.cfm import CFM
from provg.models.repvgg import reparameterize
from provg.ops import conv3x3_bias_silu, rep_bn_add_silu_over
from provg.ops._gate_api import kernels
from provg.ops.conv3x3_bias_silu import CONV_ALGORITHMS

from common import (
    add_settle_argument,
    append_csv,
    configure_timing,
    dtype_unsupported,
    fused_backends,
    graphed,
    interleaved_ms,
    print_table,
    use_side_stream,
)

WIDTH = 256
HEADER = ["part", "size", "B", "provider", "fwd ms", "bwd ms", "fwd+bwd ms", "vs eager", "vs compile"]


class EagerTail(nn.Module):
    """The unfused train-form tail: SiLU(BN(a) + BN(b))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn_a = nn.BatchNorm2d(channels)
        self.bn_b = nn.BatchNorm2d(channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn_a(a) + self.bn_b(b))


def fused_tail(module: EagerTail, a: torch.Tensor, b: torch.Tensor, backend: str) -> torch.Tensor:
    """The same tail through the fused op, as `provg.models.repvgg.RepVGGBlock` calls it."""
    return rep_bn_add_silu_over([a, b], (module.bn_a, module.bn_b), backend=backend)


def channels_last_map(batch: int, size: int, g: torch.Generator, device, dtype) -> torch.Tensor:
    """A random (batch, WIDTH, size, size) map, channels-last as in the model."""
    map_ = torch.randn(batch, WIDTH, size, size, generator=g).to(device=device, dtype=dtype)
    return map_.contiguous(memory_format=torch.channels_last)


def eager_tail(module: EagerTail, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return module(a, b)


def tail_providers(device: torch.device, compile_: bool) -> dict:
    """The tail's providers: eager modules, their `torch.compile` (with ``compile_``), every fused backend."""
    providers = {"eager": eager_tail}
    if compile_:
        providers["compile"] = torch.compile(eager_tail)
    for backend in fused_backends(device):
        providers[backend] = functools.partial(fused_tail, backend=backend)
    return providers


def tail_forward_backward(call, module: EagerTail, maps: list[torch.Tensor], upstream: torch.Tensor) -> None:
    """One training step of a tail provider: forward on fresh leaves, then the gradients of the leaves and
    the module's parameters."""
    fresh = [m.detach().requires_grad_() for m in maps]
    torch.autograd.grad(call(module, *fresh), fresh + list(module.parameters()), upstream)


def time_tail(size: int, batch: int, device, dtype, repeat: int, compile_: bool, graph: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    maps = [channels_last_map(batch, size, g, device, dtype) for _ in range(2)]
    providers = tail_providers(device, compile_)
    upstream = torch.randn_like(maps[0])

    def calls(call):
        # NOTE: the retained graph timed by "bwd" gets modules of its own: batch norm's backward saves the
        # running statistics, which every other training-mode forward updates in place.
        module, graph_module = (EagerTail(WIDTH).to(device).train() for _ in range(2))

        def forward():
            with torch.no_grad():
                call(module, *maps)

        leaves = [m.detach().requires_grad_() for m in maps]
        out = call(graph_module, *leaves)
        graph_leaves = leaves + list(graph_module.parameters())

        def backward():
            torch.autograd.grad(out, graph_leaves, upstream, retain_graph=True)

        both = functools.partial(tail_forward_backward, call, module, maps, upstream)
        return {"fwd": forward, "bwd": backward, "both": both}

    prepared = {name: calls(call) for name, call in providers.items()}
    medians = {}
    for mode in ("fwd", "bwd", "both"):
        mode_calls = {n: c[mode] for n, c in prepared.items()}
        medians[mode] = interleaved_ms(graphed(mode_calls) if graph else mode_calls, device, repeat=repeat)
    # NOTE: a mode that could not be captured in a CUDA graph is None; a provider with none is left out.
    timed = [n for n in providers if any(n in medians[m] for m in medians)]
    return {
        n: tuple(medians[m][n][0] if n in medians[m] else None for m in ("fwd", "bwd", "both")) for n in timed
    }


def time_tail_chain(size: int, batch: int, device, dtype, repeat: int, compile_: bool, links: int) -> dict:
    """The tail as a model runs it: ``links`` tails in a chain (each one's output is the next one's first
    input, its second a map of its own; each with its own batch norms) and one backward through all of
    them, accumulating the parameters' gradients; {provider: (None, None, fwd+bwd ms per tail)}.

    A call timed alone (`time_tail`) pays the fixed cost of a backward (`torch.autograd.grad`'s Python,
    the engine's set-up, the gradients of every input) for one tail, which a model pays once per step, and
    finds its inputs in the cache its previous call left; in a chain the backward reads the saved inputs
    back after the other tails' work has gone through the cache."""
    g = torch.Generator().manual_seed(0)
    maps = [channels_last_map(batch, size, g, device, dtype) for _ in range(links + 1)]
    upstream = torch.randn_like(maps[0])
    providers = tail_providers(device, compile_)

    def step_of(call):
        modules = [EagerTail(WIDTH).to(device).train() for _ in range(links)]
        parameters = [p for m in modules for p in m.parameters()]

        def step():
            for p in parameters:
                p.grad = None
            leaves = [m.detach().requires_grad_() for m in maps]
            y = leaves[0]
            for module, second in zip(modules, leaves[1:]):
                y = call(module, y, second)
            y.backward(upstream)

        return step

    timed = interleaved_ms({n: step_of(c) for n, c in providers.items()}, device, repeat=repeat)
    return {n: (None, None, t[0] / links) for n, t in timed.items()}


def eager_ops(maps: list[torch.Tensor], grad: torch.Tensor) -> tuple:
    """(forward, backward) callables of the ATen ops that the eager tail's autograd runs, called directly (no
    autograd, no modules), with the parameters of fresh batch norms as `EagerTail` has: two training-mode
    batch norms, the add and SiLU (returns y); SiLU's gradient and the two batch norms' backward, cuDNN's
    where the modules would take it (returns (dx, dweight, dbias) per branch for the upstream ``grad``)."""
    cudnn = torch.backends.cudnn.enabled
    norms = [nn.BatchNorm2d(WIDTH).to(maps[0].device) for _ in maps]
    params = [(n.weight.detach(), n.bias.detach(), n.running_mean, n.running_var) for n in norms]

    def normalize(x, weight, bias, mean, var):
        return torch.ops.aten._batch_norm_impl_index(x, weight, bias, mean, var, True, 0.1, 1e-5, cudnn)

    def forward():
        z = torch.add(*(normalize(x, *p)[0] for x, p in zip(maps, params)))
        return F.silu(z)

    saved = [normalize(x, *p) for x, p in zip(maps, params)]
    z = saved[0][0] + saved[1][0]

    def backward():
        dz = torch.ops.aten.silu_backward(grad, z)
        return [
            torch.ops.aten._batch_norm_impl_index_backward(
                impl, x, dz, weight, mean, var, save_mean, save_var, True, 1e-5, [True] * 3, reserve
            )
            for x, (weight, _, mean, var), (_, save_mean, save_var, reserve, impl) in zip(maps, params, saved)
        ]

    return forward, backward


def time_kernels(size: int, batch: int, device, dtype, repeat: int, graph: bool = False) -> dict:
    """The tail's kernels called directly (no autograd, no Python wrapper), the ATen ops of the eager tail
    (`eager_ops`), and a copy of one map: {name: (fwd ms, bwd ms, fwd GB/s, bwd GB/s)}. The rates count the
    fewest bytes each computation moves: the fused forward 5 maps (reads a, b twice, writes y), its backward 8
    (reads grad, a, b twice, writes da, db); the eager ops 11 (each batch norm reads x twice and writes once,
    the add 3, SiLU 2) and 13 (SiLU's gradient 3, each batch norm's backward reads grad and x twice and writes
    dx)."""
    g = torch.Generator().manual_seed(0)
    maps = [channels_last_map(batch, size, g, device, dtype) for _ in range(2)]
    weight = torch.rand(2, WIDTH, generator=g).to(device) + 0.5
    bias = torch.randn(2, WIDTH, generator=g).to(device)
    empty = weight.new_empty(0)
    calls = dict(zip(("eager fwd", "eager bwd"), eager_ops(maps, torch.randn_like(maps[0]))))
    for backend in fused_backends(device):
        forward, backward = kernels("rep_bn_add_silu", backend)
        _, mean, var = forward(maps, weight, bias, empty, empty, True, 1e-5)
        grad = torch.randn_like(maps[0])
        calls[f"{backend} fwd"] = functools.partial(forward, maps, weight, bias, empty, empty, True, 1e-5)
        calls[f"{backend} bwd"] = functools.partial(backward, grad, maps, weight, bias, mean, var, True, 1e-5)
    target = torch.empty_like(maps[0])
    calls["copy"] = functools.partial(target.copy_, maps[0])
    timed = interleaved_ms(graphed(calls) if graph else calls, device, repeat=repeat)
    size_bytes = maps[0].numel() * maps[0].element_size()
    copy_ms = timed.pop("copy")[0]
    result = {"copy": (copy_ms, None, 2 * size_bytes / copy_ms / 1e6, None)}
    fewest = {"eager": (11, 13), **{backend: (5, 8) for backend in fused_backends(device)}}
    for name, (fwd_maps, bwd_maps) in fewest.items():
        if f"{name} fwd" not in timed or f"{name} bwd" not in timed:
            continue  # not captured in a CUDA graph (the reason is printed)
        fwd, bwd = timed[f"{name} fwd"][0], timed[f"{name} bwd"][0]
        rates = (fwd_maps * size_bytes / fwd / 1e6, bwd_maps * size_bytes / bwd / 1e6)
        result["eager ops" if name == "eager" else f"{name} kernels"] = (fwd, bwd, *rates)
    return result


def time_conv(size: int, batch: int, device, dtype, repeat: int, compile_: bool, graph: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    x = channels_last_map(batch, size, g, device, dtype)
    weight = (torch.randn(WIDTH, WIDTH, 3, 3, generator=g) / (3 * WIDTH**0.5)).to(device=device, dtype=dtype)
    bias = torch.randn(WIDTH, generator=g).to(device=device, dtype=dtype)

    def eager(x, weight, bias):
        return F.silu(F.conv2d(x, weight, bias, padding=1))

    providers = {"eager": eager}
    if compile_:
        providers["compile"] = torch.compile(eager)
    for backend in fused_backends(device):
        if backend == "cpp":  # its two algorithms (the automatic choice is Winograd at this width)
            for algorithm in CONV_ALGORITHMS:
                providers[f"cpp {algorithm}"] = functools.partial(
                    conv3x3_bias_silu, backend=backend, algorithm=algorithm
                )
        else:
            providers[backend] = functools.partial(conv3x3_bias_silu, backend=backend)
    calls = {}
    for name, call in providers.items():
        calls[name] = functools.partial(torch.inference_mode()(call), x, weight, bias)
    timed = interleaved_ms(graphed(calls) if graph else calls, device, repeat=repeat)
    return {n: (t[0], None, None) for n, t in timed.items()}


def time_cfm(batch: int, device, dtype, repeat: int) -> dict:
    """CFM forward in eval mode: train form (PyTorch modules, fused tail) and deploy form."""
    in_channels = [128, 256, 512, 1024]
    sizes = [120, 60, 30, 15]
    g = torch.Generator().manual_seed(0)
    features = [
        torch.randn(batch, c, s, s, generator=g)
        .to(device=device, dtype=dtype)
        .contiguous(memory_format=torch.channels_last)
        for c, s in zip(in_channels, sizes)
    ]
    train_form = CFM(in_channels, WIDTH).to(device=device, dtype=dtype).eval()
    deploy_form = reparameterize(CFM(in_channels, WIDTH).to(device=device, dtype=dtype).eval())

    def under(module, **environment):
        """A call of ``module`` with the given environment variables set (the automatic choices else)."""

        def call():
            previous = {name: os.environ.get(name) for name in environment}
            os.environ.update(environment)
            try:
                with torch.inference_mode():
                    module(features)
            finally:
                for name, value in previous.items():
                    if value is None:
                        os.environ.pop(name)
                    else:
                        os.environ[name] = value

        return call

    calls = {
        "train form, torch ops": under(train_form, PROVG_BACKEND="torch"),
        "train form, fused ops": under(train_form),
        "deploy form, torch ops": under(deploy_form, PROVG_BACKEND="torch"),
        "deploy form, fused ops": under(deploy_form),
    }
    if device.type == "cpu":
        calls["deploy form, fused, direct conv"] = under(deploy_form, PROVG_CONV_ALGORITHM="direct")
    timed = interleaved_ms(calls, device, warmup=2, repeat=repeat)
    return {n: (t[0], None, None) for n, t in timed.items()}


def rows_for(part: str, size: object, batch: int, timings: dict, baseline: str = "eager") -> list[list[str]]:
    """Table rows; the ratios compare forward+backward where the part has it, else the forward (blank
    where a value is missing: a call that could not be captured in a CUDA graph)."""

    def ratio(reference: str, values: tuple) -> str:
        column = 2 if any(v[2] is not None for v in timings.values()) else 0
        base = timings.get(reference, (None, None, None))[column]
        return f"{base / values[column]:.2f}x" if base is not None and values[column] is not None else ""

    return [
        [
            part,
            size,
            batch,
            name,
            *(f"{v:.2f}" if v is not None else "" for v in values),
            ratio(baseline, values),
            ratio("compile", values),
        ]
        for name, values in timings.items()
    ]


def main() -> None:
    # The backward is timed on its own with retain_graph=True, which a compiled backward that donates its
    # buffers refuses.
    torch._functorch.config.donated_buffer = False
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["tail", "kernels", "conv", "cfm"],
        choices=["tail", "chain", "kernels", "conv", "cfm"],
        help="tail: the training-mode tail, one call at a time; chain: the tail in a chain of --links under "
        "one backward, as a model runs it; kernels: the tail's kernels alone; conv: the deploy convolution; "
        "cfm: the CFM forward (default: all but chain)",
    )
    parser.add_argument("--links", type=int, default=8, help="tails per chain (chain; default 8)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[120, 60, 30, 15])
    parser.add_argument("--batch", nargs="+", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    add_settle_argument(parser)
    parser.add_argument(
        "--graph",
        action="store_true",
        help="CUDA only (tail, kernels, conv): time replays of CUDA graphs of each call (the device alone)",
    )
    args = parser.parse_args()
    configure_timing(args.settle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.graph and device.type != "cuda":
        parser.error("--graph times CUDA graph replays and needs a CUDA device")
    if args.graph and {"cfm", "chain"} & set(args.parts):
        parser.error("--graph times the tail, kernels and conv parts; leave out cfm and chain")
    if args.links < 1:
        parser.error(f"--links must be at least 1, got {args.links}")
    if args.graph:
        use_side_stream()
    dtype = getattr(torch, args.dtype)
    unsupported = dtype_unsupported(dtype, device)
    if unsupported and set(args.parts) - {"cfm"}:  # the CFM part takes the automatic choices
        parser.error(f"--dtype {args.dtype}: {unsupported}")
    batches = args.batch or ([8] if device.type == "cuda" else [1, 2])
    rows, kernel_rows = [], []
    for batch in batches:
        for size in args.sizes:
            if "tail" in args.parts:
                timings = time_tail(size, batch, device, dtype, args.repeat, not args.no_compile, args.graph)
                rows += rows_for("tail (train)", f"{size}²", batch, timings)
            if "chain" in args.parts:
                timings = time_tail_chain(
                    size, batch, device, dtype, args.repeat, not args.no_compile, args.links
                )
                rows += rows_for(f"tail ×{args.links} chain", f"{size}²", batch, timings)
            if "kernels" in args.parts:
                timings = time_kernels(size, batch, device, dtype, args.repeat, args.graph)
                for name, (fwd, bwd, fwd_rate, bwd_rate) in timings.items():
                    optional = [
                        f"{bwd:.3f}" if bwd else "",
                        f"{fwd_rate:.1f}",
                        f"{bwd_rate:.1f}" if bwd_rate else "",
                    ]
                    kernel_rows.append([f"{size}²", batch, name, f"{fwd:.3f}", *optional])
            if "conv" in args.parts:
                timings = time_conv(size, batch, device, dtype, args.repeat, not args.no_compile, args.graph)
                rows += rows_for("conv (deploy)", f"{size}²", batch, timings)
        if "cfm" in args.parts:
            timings = time_cfm(batch, device, dtype, max(5, args.repeat // 2))
            rows += rows_for("CFM eval fwd", "480 input", batch, timings, baseline="train form, torch ops")
    timing = ", CUDA graph replays" if args.graph else ""
    suffix = "_graph" if args.graph else ""
    if kernel_rows:
        header = ["size", "B", "what", "fwd ms", "bwd ms", "fwd GB/s", "bwd GB/s"]
        title = "Tail kernels and eager ops alone (copy = one map copied; GB/s on the fewest bytes they move)"
        print_table(f"{title}, {args.dtype}{timing}", header, kernel_rows)
        table = [[*r, args.dtype] for r in kernel_rows]
        print(f"rows appended to {append_csv(f'repconv_kernels{suffix}', [*header, 'dtype'], table)}")
    if rows:
        print_table(f"RepVGG block kernels, width {WIDTH}, {args.dtype}, channels-last{timing}", HEADER, rows)
        table = [[*r, args.dtype] for r in rows]
        print(f"rows appended to {append_csv(f'repconv{suffix}', [*HEADER, 'dtype'], table)}")


if __name__ == "__main__":
    main()
