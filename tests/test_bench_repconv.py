"""bench_repconv.py's eager-ops row: the ATen ops it times are what the eager tail's autograd computes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_repconv


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
