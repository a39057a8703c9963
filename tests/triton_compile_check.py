"""Compile every provg Triton kernel for a GPU target on a machine without a GPU.

The Triton interpreter (how CI runs the kernels on CPU tensors) executes the kernels' Python, but not
Triton's compiler: its type checks, constexpr handling and lowering to PTX and machine code. A kernel can
pass every interpreter test and still fail to compile on a GPU (seen on an H100 with Triton 3.6: an
early ``return`` inside a constexpr branch, which 3.8 refuses too, and a string default of a constexpr
parameter). This script drives
each op's Triton wrappers on CPU tensors with a stand-in driver that reports a CUDA target, so each
launch compiles its kernel with the real compiler (through ``ptxas``, shipped with Triton) and launches
nothing. It covers the dtypes and block configurations the wrappers pick for float32, bfloat16 and
float64 at small and model-sized shapes.

    python tests/triton_compile_check.py [--arch 90] [-k 'survey forward']

Prints one line per (op, case) and exits non-zero if any kernel fails to compile; then lists the
float32 and bfloat16 kernels whose compiled code keeps values on the stack (register spills, read with
cuobjdump). Must run without ``TRITON_INTERPRET=1`` (tests/test_triton_compiles.py runs it in a
subprocess).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def install_compile_only_driver(arch: int) -> None:
    """Make Triton believe a CUDA device of compute capability ``arch`` is current, and compile instead
    of launching (JITFunction.run with warmup=True)."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class CompileOnlyDriver:
        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(CompileOnlyDriver())
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        COMPILED.append((self.fn.__name__, kernel))
        return kernel

    JITFunction.run = compile_only


COMPILED: list = []  # (kernel name, compiled kernel) of the launches of the current case


def resource_usage(kernel) -> tuple[int, int]:
    """(registers, stack bytes) per thread of a compiled kernel, from cuobjdump (shipped with Triton).

    A stack means the compiler ran out of registers and keeps values in local memory, which a
    memory-bound kernel pays for with extra device-memory traffic.
    """
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        report = subprocess.run(
            [str(tool), "--dump-resource-usage", cubin.name], capture_output=True, text=True
        )
    usage = re.search(r"REG:(\d+) STACK:(\d+)", report.stdout)
    if usage is None:
        raise RuntimeError(f"cuobjdump gave no resource usage: {report.stdout}{report.stderr}")
    return int(usage[1]), int(usage[2])


def cases():
    """(name, thunk) pairs calling each Triton wrapper on CPU tensors."""
    from provg.ops.triton import conv3x3_bias_silu, locate_gate, rep_bn_add_silu, survey_gate, verify_gate

    def gates(dtype, batch, positions, channels, tokens, heads):
        g = torch.Generator().manual_seed(0)

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(dtype)

        x, q, grad = (
            rand(batch, positions, channels),
            rand(batch, positions, channels),
            rand(batch, positions, channels),
        )
        k3, v3 = rand(batch, tokens, channels), rand(batch, tokens, channels)
        k2, v2 = rand(batch, tokens), rand(batch, tokens)
        mask = torch.ones(batch, tokens, dtype=torch.bool)
        w, b, w_q = rand(channels), rand(()), rand(())
        return [
            ("survey forward", lambda: survey_gate.forward(x, q, k3, v3, mask, heads)),
            ("survey backward", lambda: survey_gate.backward(grad, x, q, k3, v3, mask, heads)),
            ("locate forward", lambda: locate_gate.forward(x, w, b, k2, v2, mask)),
            ("locate backward", lambda: locate_gate.backward(grad, x, w, b, k2, v2, mask)),
            ("verify forward", lambda: verify_gate.forward(x, k2, v2, mask, w_q)),
            ("verify backward", lambda: verify_gate.backward(grad, x, k2, v2, mask, w_q)),
        ]

    def tail(dtype, batch, channels, size, count, training, channels_last):
        g = torch.Generator().manual_seed(1)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        maps = [
            torch.randn(batch, channels, size, size, generator=g).to(dtype).contiguous(memory_format=layout)
            for _ in range(count)
        ]
        weight, bias = torch.rand(count, channels) + 0.5, torch.randn(count, channels)
        mean, var = torch.randn(count, channels), torch.rand(count, channels) + 0.5
        stats = (weight.new_empty(0), weight.new_empty(0)) if training else (mean, var)
        grad = torch.randn_like(maps[0])
        return [
            ("tail forward", lambda: rep_bn_add_silu.forward(maps, weight, bias, *stats, training, 1e-5)),
            (
                "tail backward",
                lambda: rep_bn_add_silu.backward(grad, maps, weight, bias, mean, var, training, 1e-5),
            ),
        ]

    def conv(dtype, batch, c_in, c_out, size, residual):
        g = torch.Generator().manual_seed(2)
        x = (
            torch.randn(batch, c_in, size, size, generator=g)
            .to(dtype)
            .contiguous(memory_format=torch.channels_last)
        )
        weight, bias = torch.randn(c_out, c_in, 3, 3).to(dtype), torch.randn(c_out).to(dtype)
        r = torch.randn(batch, c_out, size, size).to(dtype) if residual else None
        return [("conv3x3 forward", lambda: conv3x3_bias_silu.forward(x, weight, bias, r))]

    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        tag = str(dtype).removeprefix("torch.")
        # N = 1 makes BLOCK_N = 1, specialized to a constant: a case Triton 3.6 once failed to lower
        for shape in (
            (2, 37, 24, 5, 1),
            (2, 65, 96, 1, 2),
            (8, 3600, 256, 20, 1),
            (2, 900, 512, 20, 4),
            (8, 225, 1024, 20, 1),
        ):
            for name, thunk in gates(dtype, *shape):
                yield f"{name} {tag} {shape}", thunk
        for training in (True, False):
            for shape in ((2, 6, 7, 2, False), (8, 256, 30, 2, True), (3, 96, 15, 3, True)):
                for name, thunk in tail(dtype, *shape[:4], training, shape[4]):
                    yield f"{name} {tag} training={training} {shape[:4]}", thunk
        for tf32 in (True, False) if dtype == torch.float32 else (False,):
            for shape in ((1, 5, 7, 9, True), (8, 256, 256, 30, False), (8, 256, 256, 30, True)):
                torch.backends.cudnn.allow_tf32 = tf32
                for name, thunk in conv(dtype, *shape):
                    yield f"{name} {tag} allow_tf32={tf32} {shape}", thunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", type=int, default=90, help="compute capability to compile for (90 = Hopper)"
    )
    parser.add_argument("-k", dest="only", default="", help="only the cases whose name contains this")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    install_compile_only_driver(args.arch)
    failures, spills = 0, []
    for name, thunk in cases():
        if args.only not in name:
            continue
        COMPILED.clear()
        try:
            thunk()
            if "float64" not in name:  # float64 runs without tl.dot, on wide multiply-and-sum tiles
                for kernel_name, kernel in COMPILED:
                    registers, stack = resource_usage(kernel)
                    if stack:
                        spills.append(f"{name}: {kernel_name} {registers} registers, {stack} stack bytes")
        except Exception as error:  # every failure is reported, then the run fails
            failures += 1
            root = error
            while root.__cause__ is not None:
                root = root.__cause__
            print(f"FAIL {name}: {type(root).__name__}: {root}")
            print("\n".join(str(error).strip().splitlines()[-4:]))
        else:
            print(f"ok   {name}")
    print(f"{failures} failed" if failures else "all Triton kernels compiled", f"(sm_{args.arch})")
    for spill in spills:
        print(f"SPILL {spill}")
    if not spills:
        print("no float32/bfloat16 kernel spills registers to the stack")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
