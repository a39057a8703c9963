"""The kernel benchmarks' own logic: bench_repconv.py's eager-ops row times what the eager tail's autograd
computes, and a --dtype the fused backends cannot run is refused before anything is timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_repconv

import common

BENCHMARKS = Path(bench_repconv.__file__).parent
CPU = torch.device("cpu")


def test_eager_ops_compute_the_eager_tail_and_its_gradients():
    """The same ATen ops in the same order as the modules' forward and autograd backward: equal to the bit."""
    g = torch.Generator().manual_seed(0)
    maps = [bench_repconv.channels_last_map(2, 7, g, "cpu", torch.float32) for _ in range(2)]
    grad = torch.randn(maps[0].shape, generator=g)
    forward, backward = bench_repconv.eager_ops(maps, grad)
    module = bench_repconv.EagerTail(bench_repconv.WIDTH).train()
    leaves = [m.detach().requires_grad_() for m in maps]
    y = module(*leaves)
    norms = (module.bn_a, module.bn_b)
    expected = torch.autograd.grad(y, leaves + [p for n in norms for p in (n.weight, n.bias)], grad)
    torch.testing.assert_close(forward(), y, rtol=0, atol=0)
    got = backward()
    for i, (dx, dweight, dbias) in enumerate(got):
        torch.testing.assert_close(dx, expected[i], rtol=0, atol=0)
        torch.testing.assert_close(dweight, expected[2 + 2 * i], rtol=0, atol=0)
        torch.testing.assert_close(dbias, expected[3 + 2 * i], rtol=0, atol=0)


def test_a_dtype_the_cpu_kernels_do_not_run_is_refused_with_the_fix():
    if "cpp" not in common.fused_backends(CPU):
        pytest.skip("provg._C not built")
    assert common.dtype_unsupported(torch.float32, CPU) is None
    message = common.dtype_unsupported(torch.bfloat16, CPU)
    assert "the cpp backend runs float32, float64 on cpu, not bfloat16" in message
    assert "--dtype" in message
    if torch.cuda.is_available():
        return  # the scripts below would benchmark on the GPU
    for script in ("bench_repconv.py", "bench_pcm.py"):
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), "--dtype", "float16"], capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        assert "--dtype float16: the cpp backend runs float32, float64 on cpu, not float16" in done.stderr
