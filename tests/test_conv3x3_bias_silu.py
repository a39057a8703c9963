"""provg.ops.conv3x3_bias_silu: every backend against F.conv2d + bias + SiLU on odd shapes, gradients,
opcheck, layouts and bad input."""

from __future__ import annotations

import gc
import itertools
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from provg.ops import available_backends, conv3x3_bias_silu
from provg.ops.conv3x3_bias_silu import _choose_algorithm

AVAILABLE = available_backends()
# Triton runs on CPU tensors only in its interpreter (tests set TRITON_INTERPRET=1 without a GPU).
KERNELS = [
    b
    for b in ("cpp", "triton")
    if AVAILABLE[b] and (b != "triton" or os.environ.get("TRITON_INTERPRET") == "1")
]
GPU_BACKENDS = [b for b in ("triton", "cuda") if AVAILABLE[b] and torch.cuda.is_available()]
BACKENDS = ["torch", *KERNELS]
# (backend, algorithm): the cpp backend's two algorithms are each checked on every shape.
PROVIDERS = [("torch", None), *((b, "direct") for b in KERNELS)] + (
    [("cpp", "winograd")] if "cpp" in KERNELS else []
)
# (B, C_in, H, W) -> C_out
SHAPES = [((1, 5, 7, 7), 7), ((2, 7, 13, 11), 5), ((1, 97, 3, 5), 33), ((1, 1, 1, 1), 1), ((1, 16, 9, 9), 16)]


def _case(shape, out_channels, dtype, seed, residual):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    weight = torch.randn(out_channels, shape[1], 3, 3, generator=g, dtype=dtype) / (3 * shape[1] ** 0.5)
    bias = torch.randn(out_channels, generator=g, dtype=dtype)
    r = torch.randn(shape[0], out_channels, *shape[2:], generator=g, dtype=dtype) if residual else None
    return x, weight, bias, r


def _expected(x, weight, bias, r):
    """F.conv2d + bias + SiLU (+ residual) in float64."""
    y = F.silu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
    return y if r is None else y + r.double()


@pytest.mark.parametrize(("backend", "algorithm"), PROVIDERS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_against_conv2d(backend, algorithm, channels_last, residual, dtype):
    for index, (shape, out_channels) in enumerate(SHAPES):
        x, weight, bias, r = _case(shape, out_channels, dtype, index, residual)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = conv3x3_bias_silu(x, weight, bias, r, backend=backend, algorithm=algorithm)
        expected = _expected(x, weight, bias, r)
        assert y.dtype == dtype and y.shape == expected.shape
        layout = torch.channels_last if channels_last and not x.is_contiguous() else torch.contiguous_format
        assert y.is_contiguous(memory_format=layout)
        # fp32 relative error ≤ 1e-5 of the output's scale
        rtol = 1e-5 if dtype == torch.float32 else 1e-12
        scale = expected.abs().max().clamp_min(1.0)
        torch.testing.assert_close(y.double() / scale, expected / scale, rtol=rtol, atol=rtol)


@pytest.mark.parametrize(("backend", "algorithm"), PROVIDERS)
def test_empty_batch(backend, algorithm):
    x = torch.empty(0, 4, 5, 5)
    y = conv3x3_bias_silu(x, torch.randn(3, 4, 3, 3), torch.randn(3), backend=backend, algorithm=algorithm)
    assert y.shape == (0, 3, 5, 5)


@pytest.mark.parametrize("backend", KERNELS[:1])
def test_gradients_float64(backend):
    """The backward (recomputed pre-activation + ATen's convolution backward) is shared by every
    backend; checked through the first kernel backend."""
    x, weight, bias, r = _case((2, 3, 4, 3), 2, torch.float64, 3, True)
    leaves = [t.requires_grad_() for t in (x, weight, bias, r)]
    assert torch.autograd.gradcheck(lambda *a: conv3x3_bias_silu(*a, backend=backend), leaves)


@pytest.mark.parametrize(("backend", "algorithm"), PROVIDERS[1:])
@pytest.mark.parametrize(("channels_last", "residual"), list(itertools.product([False, True], [False, True])))
def test_opcheck(backend, algorithm, channels_last, residual):
    x, weight, bias, r = _case((2, 4, 6, 5), 3, torch.float32, 4, residual)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(
        torch.ops.provg.conv3x3_bias_silu.default, (x.requires_grad_(), weight, bias, r, backend, algorithm)
    )


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C is not built")
def test_winograd_on_a_cfm_shape_and_after_the_weight_changes():
    """256 channels (the CFM width) at float32: within 1e-5 of the float64 convolution; an in-place change
    of the weight (a fine-tuning step) is seen, not hidden by the cached filter transform."""
    x, weight, bias, r = _case((1, 256, 15, 13), 256, torch.float32, 8, True)
    x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        y = conv3x3_bias_silu(x, weight, bias, r, algorithm="winograd")
        expected = _expected(x, weight, bias, r)
        scale = expected.abs().max()
        assert ((y.double() - expected).abs().max() / scale).item() <= 1e-5
        with torch.no_grad():
            weight.mul_(-0.5)


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C is not built")
@pytest.mark.parametrize(("shape", "out_channels"), [((2, 8, 37, 29), 5), ((3, 33, 33, 1), 40)])
def test_winograd_across_tile_groups(shape, out_channels):
    """More tiles than one GEMM group (256): 2 × 19 × 15 = 570 tiles in groups of 256, 256, 58 with
    images straddling them; and a one-column map (half-empty tiles at every right edge)."""
    x, weight, bias, r = _case(shape, out_channels, torch.float64, 10, True)
    x = x.contiguous(memory_format=torch.channels_last)
    expected = _expected(x, weight, bias, r)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        args = [t.to(dtype) for t in (x, weight, bias, r)]
        y = conv3x3_bias_silu(*args, algorithm="winograd")
        assert ((y.double() - expected).abs().max() / expected.abs().max()).item() <= tolerance


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C is not built")
@pytest.mark.parametrize("gemm", ["onednn", "blas"])
def test_winograd_products_by_either_gemm(monkeypatch, gemm):
    """The 16 products by oneDNN's matmul (automatic for float32) or ATen's bmm, forced with
    PROVG_WINOGRAD_GEMM: both within 1e-5 of the float64 convolution, over two tile groups (2 × 14 × 12 =
    336 tiles) with 48 input and 40 output channels (not multiples of a vector)."""
    monkeypatch.setenv("PROVG_WINOGRAD_GEMM", gemm)
    x, weight, bias, r = _case((2, 48, 27, 23), 40, torch.float32, 11, True)
    x = x.contiguous(memory_format=torch.channels_last)
    y = conv3x3_bias_silu(x, weight, bias, r, algorithm="winograd")
    expected = _expected(x, weight, bias, r)
    assert ((y.double() - expected).abs().max() / expected.abs().max()).item() <= 1e-5


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C is not built")
def test_winograd_gemm_choice_errors_and_an_empty_choice(monkeypatch):
    x, weight, bias, _ = _case((1, 4, 5, 5), 3, torch.float64, 12, False)
    monkeypatch.setenv("PROVG_WINOGRAD_GEMM", "")  # set but empty: automatic (bmm for float64)
    torch.testing.assert_close(
        conv3x3_bias_silu(x, weight, bias, algorithm="winograd"),
        _expected(x, weight, bias, None),
        rtol=1e-12,
        atol=1e-12,
    )
    monkeypatch.setenv("PROVG_WINOGRAD_GEMM", "onednn")
    with pytest.raises(RuntimeError, match=r"oneDNN's matmul takes float32, got Double; unset it"):
        conv3x3_bias_silu(x, weight, bias, algorithm="winograd")
    monkeypatch.setenv("PROVG_WINOGRAD_GEMM", "mkl")
    with pytest.raises(RuntimeError, match="PROVG_WINOGRAD_GEMM must be onednn or blas, got 'mkl'"):
        conv3x3_bias_silu(x.float(), weight.float(), bias.float(), algorithm="winograd")


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C is not built")
def test_winograd_filter_cache_follows_the_weight_lifetime():
    cache = sys.modules["provg.ops.conv3x3_bias_silu"]._winograd_weights
    x, weight, bias, _ = _case((1, 8, 5, 6), 8, torch.float32, 9, False)
    conv3x3_bias_silu(x, weight, bias, algorithm="winograd")
    key = id(weight)
    assert key in cache and cache[key][0]() is weight
    del weight
    gc.collect()
    assert key not in cache


def test_algorithm_choice():
    x32, x64 = torch.randn(1, 64, 4, 4), torch.randn(1, 64, 4, 4, dtype=torch.float64)
    wide, narrow = torch.randn(64, 64, 3, 3), torch.randn(16, 64, 3, 3)
    assert _choose_algorithm(None, "cpp", x32, wide) == "winograd"
    assert _choose_algorithm(None, "cpp", x32, narrow) == "direct"
    assert _choose_algorithm(None, "cpp", x64, wide.double()) == "direct"
    assert _choose_algorithm(None, "torch", x32, wide) == "direct"
    assert _choose_algorithm("direct", "cpp", x32, wide) == "direct"
    assert _choose_algorithm("winograd", "cpp", x64, narrow.double()) == "winograd"


def test_follows_autocast_like_conv2d():
    x, weight, bias, r = _case((1, 8, 6, 5), 4, torch.float32, 6, True)
    for residual, dtype in ((None, torch.bfloat16), (r.bfloat16(), torch.bfloat16), (r, torch.float32)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = F.silu(F.conv2d(x, weight, bias, padding=1))
            expected = expected if residual is None else expected + residual
            got = conv3x3_bias_silu(x, weight, bias, residual)
        assert got.dtype == expected.dtype == dtype
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_bad_input_names_the_problem():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match=r"weight must be \(C_out, 4, 3, 3\)"):
        conv3x3_bias_silu(x, torch.randn(3, 4, 1, 1), torch.randn(3))
    with pytest.raises(ValueError, match=r"bias must be \(3,\)"):
        conv3x3_bias_silu(x, torch.randn(3, 4, 3, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"residual must be \(1, 3, 5, 5\)"):
        conv3x3_bias_silu(x, torch.randn(3, 4, 3, 3), torch.randn(3), torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="x must be a floating"):
        conv3x3_bias_silu(torch.randn(4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(3))
    with pytest.raises(ValueError, match="unknown algorithm 'fft'"):
        conv3x3_bias_silu(x, torch.randn(3, 4, 3, 3), torch.randn(3), algorithm="fft")
    with pytest.raises(ValueError, match=r"winograd algorithm is a kernel of the cpp backend.*'torch'"):
        conv3x3_bias_silu(x, torch.randn(3, 4, 3, 3), torch.randn(3), backend="torch", algorithm="winograd")


@pytest.mark.skipif(not available_backends()["cpp"], reason="provg._C is not built")
def test_cpu_kernels_check_the_residual_themselves():
    """The C++ kernels (called directly, past the Python checks) refuse a residual of the wrong shape or
    dtype with the expected one named, for the direct and the Winograd kernel alike."""
    x, weight, bias = torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(3)
    u = torch.ops.provg.conv3x3_winograd_weight(weight)
    direct = torch.ops.provg.conv3x3_bias_silu_forward
    winograd = torch.ops.provg.conv3x3_bias_silu_winograd_forward
    for bad in (torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 5, dtype=torch.float64)):
        for call in (lambda r: direct(x, weight, bias, r), lambda r: winograd(x, u, bias, r)):
            with pytest.raises(RuntimeError, match=r"residual must be \[1, 3, 5, 5\] Float on cpu"):
                call(bad)


@pytest.mark.skipif(not GPU_BACKENDS, reason="no CUDA device or GPU backend")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backend_matches_conv2d(backend, channels_last, residual, dtype, monkeypatch):
    # NOTE: the cuda backend's cuDNN convolution follows torch.backends.cudnn.allow_tf32 as F.conv2d does;
    # full float32 precision is what this checks.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    for index, (shape, out_channels) in enumerate([*SHAPES, ((8, 256, 30, 30), 256)]):
        x, weight, bias, r = (
            t.to("cuda", dtype) if t is not None else None
            for t in _case(shape, out_channels, torch.float64, index, residual)
        )
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = conv3x3_bias_silu(x, weight, bias, r, backend=backend)
        expected = _expected(x, weight, bias, r)
        tolerance = 1e-5 if dtype == torch.float32 else 3e-2
        scale = expected.abs().max().clamp_min(1.0)
        assert ((y.double() - expected).abs().max() / scale).item() <= tolerance


@pytest.mark.skipif(not GPU_BACKENDS, reason="no CUDA device or GPU backend")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_float32_follows_cudnn_allow_tf32(backend, monkeypatch):
    """With torch.backends.cudnn.allow_tf32 on (PyTorch's default, as F.conv2d uses it) float32 products
    may run on the tf32 tensor cores: the result stays within tf32's rounding of the float64 one."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    x, weight, bias, r = (t.cuda() for t in _case((8, 256, 30, 30), 256, torch.float32, 11, True))
    x = x.contiguous(memory_format=torch.channels_last)
    y = conv3x3_bias_silu(x, weight, bias, r, backend=backend)
    expected = _expected(x, weight, bias, r)
    error = ((y.double() - expected).abs().max() / expected.abs().max()).item()
    assert error <= 5e-3
