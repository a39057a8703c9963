"""provg.ops.rep_bn_add_silu: every backend against the float64 reference and nn.BatchNorm2d, gradcheck,
running statistics, opcheck, layouts and bad input."""

from __future__ import annotations

import copy
import itertools
import logging
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from provg.ops import _backend, available_backends, rep_bn_add_silu, rep_bn_add_silu_over
from provg.ops.rep_bn_add_silu import rep_bn_add_silu_reference

AVAILABLE = available_backends()
# Triton runs on CPU tensors only in its interpreter (tests set TRITON_INTERPRET=1 without a GPU).
KERNELS = [
    b
    for b in ("cpp", "triton")
    if AVAILABLE[b] and (b != "triton" or os.environ.get("TRITON_INTERPRET") == "1")
]
GPU_BACKENDS = [b for b in ("triton", "cuda") if AVAILABLE[b] and torch.cuda.is_available()]
BACKENDS = ["torch", *KERNELS]
SHAPES = [(2, 5, 7, 3), (1, 7, 13, 11), (2, 1, 4, 4), (1, 97, 2, 2), (3, 4, 1, 1)]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _case(shape, count, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    xs = [torch.randn(shape, generator=g, dtype=dtype) * 2 + 1 for _ in range(count)]
    weight = torch.rand(count, channels, generator=g, dtype=dtype) + 0.5
    bias = torch.randn(count, channels, generator=g, dtype=dtype)
    mean = torch.randn(count, channels, generator=g, dtype=dtype)
    var = torch.rand(count, channels, generator=g, dtype=dtype) + 0.1
    return xs, weight, bias, mean, var


def _kernel_ops(backend):
    if backend == "triton":
        from provg.ops.triton import rep_bn_add_silu as module

        return module.forward, module.backward
    return torch.ops.provg.rep_bn_add_silu_forward, torch.ops.provg.rep_bn_add_silu_backward


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_match_float64_reference(backend, layout, training, count, dtype):
    """Forward (y and the statistics used) and backward (every gradient) over odd shapes."""
    shapes = SHAPES if backend == "cpp" else SHAPES[:3]
    forward, backward = _kernel_ops(backend)
    for index, shape in enumerate(shapes):
        xs, weight, bias, mean, var = _case(shape, count, dtype, seed=index)
        xs = [x.contiguous(memory_format=LAYOUTS[layout]) for x in xs]
        empty = weight.new_empty(0)
        y, used_mean, used_var = forward(
            xs, weight, bias, empty if training else mean, empty if training else var, training, 1e-5
        )
        grad = torch.randn(shape, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
        dxs, dweight, dbias = backward(grad, xs, weight, bias, used_mean, used_var, training, 1e-5)

        leaves = [t.double().requires_grad_() for t in (*xs, weight, bias)]
        ref_y, ref_mean, ref_var = rep_bn_add_silu_reference(
            leaves[:count], leaves[count], leaves[count + 1], mean.double(), var.double(), training, 1e-5
        )
        ref_grads = torch.autograd.grad(ref_y, leaves, grad.double())
        tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
        got = [y, used_mean, used_var, *dxs, dweight, dbias]
        expected = [ref_y, ref_mean, ref_var, *ref_grads]
        for name, a, b in zip(
            ["y", "mean", "var"] + [f"dx{i}" for i in range(count)] + ["dw", "db"], got, expected
        ):
            scale = b.abs().max().clamp_min(1.0)
            torch.testing.assert_close(
                a.double() / scale, b / scale, **tol, msg=lambda m, n=name, s=shape: f"{n} {s}: {m}"
            )
        assert y.is_contiguous(memory_format=LAYOUTS[layout])
        assert all(d.is_contiguous(memory_format=LAYOUTS[layout]) for d in dxs)


# Triton's interpreter evaluates exp in NumPy, which warns where float32 overflows to ∞ (as it should here).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernels_silu_over_the_float32_range(backend, layout):
    """float32 SiLU and its derivative from −120 to 120 (where σ under- and overflows) to within 1e-6 of
    float64, and ±∞ and NaN as torch's float32 SiLU gives them: eval mode with the identity normalisation,
    17 channels (a whole vector of channels and one lane over)."""
    forward, backward = _kernel_ops(backend)
    channels = 17
    values = torch.cat([torch.linspace(-120, 120, 24001), torch.linspace(-2, 2, 4001)])
    values = torch.cat([values, torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-30])])
    values = torch.cat([values, values[: -values.numel() % channels]])  # whole rows of 17 channels
    x = values.reshape(-1, channels).t().reshape(1, channels, -1, 1).contiguous(memory_format=LAYOUTS[layout])
    weight, bias = torch.ones(1, channels), torch.zeros(1, channels)
    mean, var = torch.zeros(1, channels), torch.full((1, channels), 1 - 1e-5)
    y = forward([x], weight, bias, mean, var, False, 1e-5)[0]
    finite = x.isfinite()
    dx = backward(torch.ones_like(x), [x.nan_to_num()], weight, bias, mean, var, False, 1e-5)[0][0]

    exact = F.silu(x.double())
    sigma = torch.sigmoid(x.double())
    slope = sigma * (1 + x.double() * (1 - sigma))
    # The slope is relative to its terms' size: it crosses zero near x = −1.28, where they cancel.
    terms = sigma * (1 + x.double().abs() * (1 - sigma))
    for name, got, want, size in (("y", y, exact, exact.abs()), ("dy/dx", dx, slope, terms)):
        got, want, size = got.double()[finite], want[finite], size[finite]
        normal = size > 1e-30  # below, float32 results are denormal or flushed
        error = (got - want).abs()
        assert (error[normal] / size[normal]).max() <= 1e-6, name
        assert error[~normal].max() <= 1e-30, name
    torch.testing.assert_close(y[~finite], F.silu(x[~finite]), equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64(backend, training, layout):
    g = torch.Generator().manual_seed(7)
    shape = (2, 3, 3, 2)
    xs = [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    weights = [(torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_() for _ in range(3)]
    biases = [torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    means = [torch.randn(3, generator=g, dtype=torch.float64) for _ in range(3)]
    variances = [torch.rand(3, generator=g, dtype=torch.float64) + 0.2 for _ in range(3)]

    def f(*args):
        inputs = [t.contiguous(memory_format=LAYOUTS[layout]) for t in args[:3]]
        return rep_bn_add_silu(
            inputs,
            None if training else means,
            None if training else variances,
            args[3:6],
            args[6:9],
            training=training,
            backend=backend,
        )

    assert torch.autograd.gradcheck(f, (*xs, *weights, *biases))


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("training", [True, False])
def test_library_op_gradcheck_float64(backend, training):
    """The torch.library operator (what torch.compile and torch.export trace) through its registered
    autograd; eager calls take a C++ node (cpp, cuda) or an autograd.Function (triton) over the same
    kernels."""
    xs, weight, bias, mean, var = _case((2, 3, 2, 3), 2, torch.float64, seed=9)
    leaves = [t.requires_grad_() for t in (*xs, weight, bias)]
    empty = weight.new_empty(0)
    stats = (empty, empty) if training else (mean, var)

    def f(a, b, w, c):
        return torch.ops.provg.rep_bn_add_silu([a, b], w, c, *stats, training, 1e-5, backend)[0]

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("identity", [False, True])
def test_training_steps_match_batchnorm2d(backend, momentum, identity):
    """Outputs and running statistics after several steps equal nn.BatchNorm2d's (float32, 1e-6)."""
    count = 3 if identity else 2
    norms = [torch.nn.BatchNorm2d(6, momentum=momentum) for _ in range(count)]
    for bn in norms:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    _assert_steps_match_batchnorm2d(norms, momentum, backend, steps=4, seed=3, alternate_layout=True)


def _assert_steps_match_batchnorm2d(norms, momentum, backend, steps, seed, alternate_layout=False):
    """Training steps of ``rep_bn_add_silu`` over ``norms`` against copies of them run as modules: outputs
    (1e-5) after every step, running statistics (1e-6) after the last; odd steps channels-last when
    ``alternate_layout``."""
    device = norms[0].weight.device
    reference = copy.deepcopy(norms)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        xs = [(torch.randn(2, 6, 5, 7, generator=g) + 0.5).to(device) for _ in norms]
        if alternate_layout and step % 2:
            xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        y = rep_bn_add_silu(
            xs,
            [bn.running_mean for bn in norms],
            [bn.running_var for bn in norms],
            [bn.weight for bn in norms],
            [bn.bias for bn in norms],
            training=True,
            momentum=momentum,
            backend=backend,
        )
        expected = F.silu(sum(bn(x) for bn, x in zip(reference, xs)))
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(norms, reference):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=1e-6)


def test_hand_worked_values():
    """One channel, two branches of two values each: y and the running statistics by hand."""
    a = torch.tensor([1.0, 3.0], dtype=torch.float64).reshape(2, 1, 1, 1)  # mean 2, biased var 1
    b = torch.tensor([0.0, 4.0], dtype=torch.float64).reshape(2, 1, 1, 1)  # mean 2, biased var 4
    rm = [torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]
    rv = [torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)]
    weights = [torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)]
    biases = [torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)]
    for backend in BACKENDS:
        means = [t.clone() for t in rm]
        variances = [t.clone() for t in rv]
        y = rep_bn_add_silu(
            [a, b], means, variances, weights, biases, training=True, eps=1e-12, backend=backend
        )
        # s = 2·(a − 2)/1 + 0.5 + (b − 2)/2 = [−2.5, 3.5]
        s = torch.tensor([-2.5, 3.5], dtype=torch.float64)
        torch.testing.assert_close(y.flatten(), s / (1 + torch.exp(-s)), rtol=0, atol=1e-9)
        # running mean 0.9·0 + 0.1·2; running var 0.9·1 + 0.1·(unbiased 2 and 8)
        torch.testing.assert_close(torch.cat(means), torch.tensor([0.2, 0.2], dtype=torch.float64))
        torch.testing.assert_close(torch.cat(variances), torch.tensor([1.1, 1.7], dtype=torch.float64))


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(backend, layout):
    xs, weight, bias, mean, var = _case((2, 3, 4, 5), 2, torch.float32, seed=1)
    xs = [x.contiguous(memory_format=LAYOUTS[layout]).requires_grad_() for x in xs]
    weight.requires_grad_()
    bias.requires_grad_()
    for training in (True, False):
        stats = (weight.new_empty(0), weight.new_empty(0)) if training else (mean, var)
        torch.library.opcheck(
            torch.ops.provg.rep_bn_add_silu.default, (xs, weight, bias, *stats, training, 1e-5, backend)
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_layouts_and_eval_empty_batch(backend):
    xs, weight, bias, mean, var = _case((2, 4, 3, 5), 2, torch.float64, seed=2)
    mixed = [xs[0].contiguous(memory_format=torch.channels_last), xs[1]]
    args = ([m for m in mean], [v for v in var], list(weight), list(bias))
    expected = rep_bn_add_silu_reference(xs, weight, bias, mean, var, False, 1e-5)[0]
    got = rep_bn_add_silu(mixed, *args, backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    empty = [torch.empty(0, 4, 3, 5, dtype=torch.float64) for _ in range(2)]
    assert rep_bn_add_silu(empty, *args, backend=backend).shape == (0, 4, 3, 5)


def test_bad_input_names_the_problem():
    x = torch.randn(1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 3, 1, 1\)"):
        rep_bn_add_silu([x, x], training=True)
    with pytest.raises(ValueError, match="every branch must match"):
        rep_bn_add_silu([torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5)], training=True)
    with pytest.raises(ValueError, match="eps must be positive"):
        rep_bn_add_silu([torch.randn(2, 3, 2, 2)], training=True, eps=0.0)
    with pytest.raises(ValueError, match="1 to 3 branch inputs"):
        rep_bn_add_silu([x] * 4)
    with pytest.raises(ValueError, match="2 branches but 1 weights"):
        rep_bn_add_silu([torch.randn(2, 3, 2, 2)] * 2, weights=[torch.ones(3)], training=True)
    with pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        rep_bn_add_silu([torch.randn(2, 3, 2, 2)], training=True, backend="cuda")


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C not built")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpp_results_do_not_depend_on_the_thread_count(layout):
    """Statistics and gradient sums are per block of rows, added in block order: 1, 2 and 3 threads give
    bitwise the same output, statistics and gradients (channels-last: 2·23·29 rows, several blocks, the
    last one short; 37 channels, a partial vector)."""
    shape = (2, 37, 23, 29)
    xs, weight, bias, _, _ = _case(shape, 2, torch.float32, seed=3)
    xs = [x.contiguous(memory_format=LAYOUTS[layout]) for x in xs]
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(4)).contiguous(
        memory_format=LAYOUTS[layout]
    )
    forward, backward = _kernel_ops("cpp")
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            y, mean, var = forward(xs, weight, bias, torch.empty(0), torch.empty(0), True, 1e-5)
            dxs, dweight, dbias = backward(grad, xs, weight, bias, mean, var, True, 1e-5)
            results.append([y, mean, var, *dxs, dweight, dbias])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C not built")
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 37, 23, 29), (2, 64, 9, 11)])
def test_cpp_one_row_groups_when_the_tensors_exceed_the_cache(monkeypatch, count, dtype, shape):
    """Channels-last calls whose tensors exceed the last-level cache walk one row per group instead of 4,
    and their backward recomputes ds in its second pass instead of reading it back from the first input
    gradient's buffer; with rows on the vectors' alignment (64 float32 channels) they write y and dx with
    streaming stores. PROVG_CPU_CACHE_BYTES=1 makes every call do so: both paths match the float64
    reference (37 channels, a partial vector; 2·23·29 rows in several blocks), and the gradient sums, added
    in another order, differ in the last bits (so the path did switch)."""
    xs, weight, bias, _, _ = _case(shape, count, dtype, seed=6)
    xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    grad = grad.contiguous(memory_format=torch.channels_last)
    forward, backward = _kernel_ops("cpp")

    def run():  # y, mean, var, dx_1 .. dx_count, dweight
        y, mean, var = forward(xs, weight, bias, weight.new_empty(0), weight.new_empty(0), True, 1e-5)
        dxs, dweight, _ = backward(grad, xs, weight, bias, mean, var, True, 1e-5)
        return [y, mean, var, *dxs, dweight]

    grouped = run()
    monkeypatch.setenv("PROVG_CPU_CACHE_BYTES", "1")
    rows = run()

    leaves = [t.double().requires_grad_() for t in (*xs, weight)]
    ref_y, ref_mean, ref_var = rep_bn_add_silu_reference(
        leaves[:count], leaves[count], bias.double(), None, None, True, 1e-5
    )
    ref_grads = torch.autograd.grad(ref_y, leaves, grad.double())
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for path in (grouped, rows):
        for got, expected in zip(path, [ref_y, ref_mean, ref_var, *ref_grads], strict=True):
            scale = expected.abs().max().clamp_min(1.0)
            torch.testing.assert_close(got.double() / scale, expected / scale, **tol)
    assert torch.equal(rows[0], grouped[0])  # the output pass sums nothing
    assert not torch.equal(rows[-1], grouped[-1])


@pytest.mark.skipif("cpp" not in KERNELS, reason="provg._C not built")
def test_cpp_rejects_a_bad_cache_size_and_takes_an_empty_one_as_unset(monkeypatch):
    xs, weight, bias, _, _ = _case((1, 4, 3, 3), 1, torch.float32, seed=0)
    xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    forward = _kernel_ops("cpp")[0]
    unset = forward(xs, weight, bias, torch.empty(0), torch.empty(0), True, 1e-5)
    monkeypatch.setenv("PROVG_CPU_CACHE_BYTES", "")
    empty = forward(xs, weight, bias, torch.empty(0), torch.empty(0), True, 1e-5)
    assert all(torch.equal(a, b) for a, b in zip(unset, empty, strict=True))
    monkeypatch.setenv("PROVG_CPU_CACHE_BYTES", "32M")
    with pytest.raises(
        RuntimeError, match="PROVG_CPU_CACHE_BYTES must be a positive number of bytes, got '32M'"
    ):
        forward(xs, weight, bias, torch.empty(0), torch.empty(0), True, 1e-5)


def test_all_backends_agree_on_a_cfm_shape():
    """The width-256 CFM shape at 15² (float32): cpp against the eager batch norms."""
    if "cpp" not in KERNELS:
        pytest.skip("provg._C is not built")
    xs, weight, bias, mean, var = _case((2, 256, 15, 15), 2, torch.float32, seed=5)
    for layout, training in itertools.product(LAYOUTS.values(), (True, False)):
        inputs = [x.contiguous(memory_format=layout) for x in xs]
        stats = (None, None) if training else (list(mean), list(var))
        eager = rep_bn_add_silu(inputs, *stats, list(weight), list(bias), training=training, backend="torch")
        fused = rep_bn_add_silu(inputs, *stats, list(weight), list(bias), training=training, backend="cpp")
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)


def test_cpp_gradients_on_a_cfm_shape_past_the_private_caches():
    """The width-256 CFM shape at 30², B = 2, channels-last (float32): a backward whose sums pass reads
    5.5 MB, more than the private caches of a few cores hold (two threads with 1 MiB each prefetch rows
    ahead there); input and parameter gradients against the float64 torch backend on the same inputs."""
    if "cpp" not in KERNELS:
        pytest.skip("provg._C is not built")
    xs, weight, bias, _, _ = _case((2, 256, 30, 30), 2, torch.float32, seed=6)
    upstream = torch.randn(xs[0].shape, generator=torch.Generator().manual_seed(7))
    grads = {}
    for backend, dtype in (("cpp", torch.float32), ("torch", torch.float64)):
        leaves = [t.to(dtype).requires_grad_() for t in (*xs, weight, bias)]
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in leaves[:2]]
        y = rep_bn_add_silu(
            inputs, None, None, list(leaves[2]), list(leaves[3]), training=True, backend=backend
        )
        grads[backend] = torch.autograd.grad(y, leaves, upstream.to(dtype))
    for ours, reference in zip(grads["cpp"], grads["torch"]):
        torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not GPU_BACKENDS, reason="no CUDA device or GPU backend")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [*SHAPES, (8, 256, 30, 30)])
def test_gpu_backend_matches_reference(backend, layout, training, dtype, shape):
    """Values and gradients on CUDA against the float64 reference of the same (rounded) inputs."""
    count = 3 if shape[0] % 2 else 2
    xs, weight, bias, mean, var = _case(shape, count, torch.float64, seed=sum(shape))
    xs = [x.to("cuda", dtype).contiguous(memory_format=LAYOUTS[layout]).requires_grad_() for x in xs]
    weights = [w.float().cuda().requires_grad_() for w in weight]
    biases = [b.float().cuda().requires_grad_() for b in bias]
    stats = (None, None) if training else ([m.float().cuda() for m in mean], [v.float().cuda() for v in var])
    y = rep_bn_add_silu(xs, *stats, weights, biases, training=training, backend=backend)
    upstream = torch.randn(shape, dtype=torch.float64, device="cuda")
    grads = torch.autograd.grad(y, [*xs, *weights, *biases], upstream.to(dtype))

    leaves = [t.detach().double().requires_grad_() for t in (*xs, torch.stack(weights), torch.stack(biases))]
    ref_y, _, _ = rep_bn_add_silu_reference(
        leaves[:count], leaves[count], leaves[count + 1], mean.cuda(), var.cuda(), training, 1e-5
    )
    ref = torch.autograd.grad(ref_y, leaves, upstream)
    ref_grads = [*ref[:count], *ref[count], *ref[count + 1]]
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert y.is_contiguous(memory_format=LAYOUTS[layout])
    for got, want in zip([y, *grads], [ref_y, *ref_grads]):
        scale = want.abs().max().clamp_min(1.0)
        assert ((got.double() - want).abs().max() / scale).item() <= tolerance * (1 if got is y else 10)


@pytest.mark.skipif(not GPU_BACKENDS, reason="no CUDA device or GPU backend")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_training_steps_match_batchnorm2d(backend):
    """On the GPU (the cuda backend through the C++ entry point, whose running update takes ATen ops
    there): outputs and running statistics after three steps equal nn.BatchNorm2d's."""
    norms = [torch.nn.BatchNorm2d(6, momentum=m).cuda() for m in (0.1, 0.3)]
    _assert_steps_match_batchnorm2d(norms, [0.1, 0.3], backend, steps=3, seed=5)


@pytest.mark.skipif(not AVAILABLE["cpp"], reason="provg._C is not built")
def test_cpp_entry_point_without_affine_under_inference_mode():
    """The C++ entry point (autograd, parameter packing, running update in C++) against the torch backend:
    missing weights/biases (affine=False, and one branch of two), inference mode, gradcheck of the inputs."""
    g = torch.Generator().manual_seed(11)
    xs = [torch.randn(2, 5, 3, 7, generator=g, dtype=torch.float64) for _ in range(2)]
    one_weight = [torch.rand(5, dtype=torch.float64) + 0.5, None]
    for weights, biases in (([None, None], [None, None]), (one_weight, one_weight)):
        results = {}
        for backend in ("torch", "cpp"):
            seeded = [torch.Generator().manual_seed(i) for i in range(2)]
            means = [torch.randn(5, generator=s, dtype=torch.float64) for s in seeded]
            variances = [m.abs() + 0.5 for m in means]
            with torch.inference_mode():
                train = rep_bn_add_silu(xs, means, variances, weights, biases, training=True, backend=backend)
                evaluated = rep_bn_add_silu(xs, means, variances, weights, biases, backend=backend)
            results[backend] = (train, evaluated, *means, *variances)
        for ours, theirs in zip(results["cpp"], results["torch"]):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    leaves = [x.clone().requires_grad_() for x in xs]
    assert torch.autograd.gradcheck(
        lambda a, b: rep_bn_add_silu([a, b], training=True, backend="cpp"), leaves
    )


@pytest.mark.skipif(not AVAILABLE["cpp"], reason="provg._C is not built")
@pytest.mark.parametrize(
    "momenta, stat_dtype",
    [((0.1, 0.1), torch.float32), ((0.1, 0.3), torch.float32), ((0.2, 0.2), torch.float64)],
    ids=["one momentum: foreach ops", "two momenta: per branch", "float64 statistics: per branch"],
)
def test_cpp_entry_point_updates_statistics_its_loop_does_not_take(momenta, stat_dtype):
    """The C++ entry point's running update for statistics that its CPU loop does not take (here strided
    views; on a GPU, every call): the foreach ops (one momentum, the statistics' dtype) or one update per
    branch, against the update written out in float64 from the batch statistics; the weights and biases
    packed from strided views too. Counters that the direct write does not take (int32 here) advance
    through the foreach add."""
    g = torch.Generator().manual_seed(12)
    xs = [torch.randn(3, 5, 4, 7, generator=g) + 0.5 for _ in range(2)]
    storage = torch.rand(2, 2, 5, 2, generator=g, dtype=stat_dtype) + 0.5
    means, variances = list(storage[0, ..., 0]), list(storage[1, ..., 0])  # strided (stride 2) views
    parameters = torch.rand(2, 2, 5, 2, generator=g) + 0.5
    weights, biases = list(parameters[0, ..., 1]), list(parameters[1, ..., 1])
    before = [t.double().clone() for t in means + variances]
    counters = [torch.tensor(4, dtype=torch.int32), torch.tensor(7, dtype=torch.int32)]
    with torch.no_grad():
        y = torch.ops.provg.rep_bn_add_silu_eager(
            xs, weights, biases, means, variances, counters, True, momenta, 1e-5
        )
    expected = F.silu(
        sum(
            F.batch_norm(x.double(), None, None, w.double(), b.double(), True, 0.0, 1e-5)
            for x, w, b in zip(xs, weights, biases)
        )
    )
    torch.testing.assert_close(y, expected.float(), rtol=1e-5, atol=1e-5)
    count = xs[0].numel() // 5
    for i, (x, m) in enumerate(zip(xs, momenta)):
        x = x.double()
        batch_mean, batch_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(means[i].double(), (1 - m) * before[i] + m * batch_mean, rtol=0, atol=1e-6)
        unbiased = batch_var * count / (count - 1)
        torch.testing.assert_close(
            variances[i].double(), (1 - m) * before[2 + i] + m * unbiased, rtol=0, atol=1e-6
        )
        assert means[i].dtype == stat_dtype
    assert [c.item() for c in counters] == [5, 8]


@pytest.mark.skipif(not AVAILABLE["cpp"], reason="provg._C is not built")
def test_cpp_entry_point_dispatches_few_ops_beside_its_kernel():
    """Around its forward kernel, the entry point's training call on statistics and parameters its CPU loops
    do not take (on a GPU, every call) dispatches one stack of the weights and biases, one foreach add of the
    counters and three foreach ops for the running statistics: five launches on a GPU, where one ATen op per
    tensor made thirteen for two branches. Views and allocations launch nothing and are not counted."""

    class Dispatched(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(f"{func.overloadpacket.__name__}.{func._overloadname}")
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(13)
    xs = [torch.randn(2, 8, 4, 4, generator=g) for _ in range(2)]
    statistics, parameters = torch.rand(2, 2, 8, 2, generator=g) + 0.5, torch.rand(2, 2, 8, 2, generator=g)
    counters = [torch.tensor(1, dtype=torch.int32) for _ in range(2)]
    with torch.no_grad(), Dispatched() as dispatched:
        torch.ops.provg.rep_bn_add_silu_eager(
            xs,
            list(parameters[0, ..., 1]),
            list(parameters[1, ..., 1]),
            list(statistics[0, ..., 0]),
            list(statistics[1, ..., 0]),
            counters,
            True,
            [0.1, 0.1],
            1e-5,
        )
    launching = sorted(
        n for n in dispatched.names if n.split(".")[0] not in {"empty", "slice", "unbind", "select"}
    )
    assert launching == [
        "_foreach_add_.List",
        "_foreach_add_.List",
        "_foreach_add_.Scalar",
        "_foreach_mul_.Scalar",
        "rep_bn_add_silu_forward.default",
        "stack.default",
    ]


@pytest.mark.skipif(not AVAILABLE["cpp"], reason="provg._C is not built")
def test_cpp_entry_point_schema_declares_the_running_statistic_update():
    xs, *_ = _case((2, 3, 4, 5), 2, torch.float32, seed=4)
    xs = [x.requires_grad_() for x in xs]
    stats = [[torch.zeros(3), torch.zeros(3)], [torch.ones(3), torch.ones(3)]]
    params = [torch.ones(3, requires_grad=True), None]
    torch.library.opcheck(
        torch.ops.provg.rep_bn_add_silu_eager.default,
        (xs, params, [None, None], *stats, [torch.tensor(0), torch.tensor(5)], True, [0.1, 0.2], 1e-5),
        test_utils=("test_schema", "test_autograd_registration"),
    )


@pytest.mark.skipif(not AVAILABLE["cpp"], reason="provg._C is not built")
def test_cpp_entry_point_is_differentiable_once():
    """Under create_graph=True the first derivative is the torch backend's; differentiating it again
    raises with the fix instead of silently dropping the second-order terms."""
    xs, weight, bias, *_ = _case((2, 3, 4, 5), 2, torch.float64, seed=8)
    weights = [w.clone().requires_grad_() for w in weight]
    grads = {}
    for backend in ("torch", "cpp"):
        leaves = [x.clone().requires_grad_() for x in xs]
        y = rep_bn_add_silu(leaves, weights=weights, biases=list(bias), training=True, backend=backend)
        grads[backend] = torch.autograd.grad(y.square().sum(), leaves + weights, create_graph=True)
    for ours, theirs in zip(grads["cpp"], grads["torch"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    penalty = sum(g.square().sum() for g in grads["cpp"])
    with pytest.raises(RuntimeError, match=r"differentiable once.*backend='torch'"):
        penalty.backward()
    sum(g.square().sum() for g in grads["torch"]).backward()  # the reference has a second derivative
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # forward_ad's import
@pytest.mark.skipif(not AVAILABLE["cpp"], reason="provg._C is not built")
def test_cpp_entry_point_node_guards_its_saved_inputs():
    """The C++ node (named after the kernel it runs) keeps PyTorch's guarantees: a branch changed in place
    before the backward raises, a second backward through a freed graph raises, and forward-mode AD is
    refused with the fix."""
    xs, weight, bias, *_ = _case((2, 3, 4, 5), 2, torch.float64, seed=9)
    leaves = [x.clone().requires_grad_() for x in xs]
    branches = [leaf * 1.0 for leaf in leaves]
    y = rep_bn_add_silu(branches, weights=list(weight), biases=list(bias), training=True, backend="cpp")
    assert y.grad_fn.name() == "provg::rep_bn_add_silu_backward"
    with torch.no_grad():
        branches[1].add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()

    y = rep_bn_add_silu(leaves, weights=list(weight), biases=list(bias), training=True, backend="cpp")
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()

    import torch.autograd.forward_ad as forward_ad

    with forward_ad.dual_level():
        dual = forward_ad.make_dual(xs[0], torch.ones_like(xs[0]))
        with pytest.raises(RuntimeError, match="rep_bn_add_silu: the fused kernels have no forward-mode"):
            rep_bn_add_silu([dual, xs[1]], training=True, backend="cpp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_over_modules_matches_them_in_training_and_eval(backend):
    """`rep_bn_add_silu_over` against the modules themselves: the cumulative average (momentum=None), a
    momentum of 0.3 and affine=False together; momenta alone (whose num_batches_tracked the C++ entry point
    advances); outputs, running statistics and num_batches_tracked (and its version counter, as an in-place
    add moves it) after three training steps, then eval mode; and norms without running statistics (batch
    statistics in eval mode too)."""
    torch.manual_seed(0)
    for norms in (
        [nn.BatchNorm2d(6, momentum=None), nn.BatchNorm2d(6, momentum=0.3), nn.BatchNorm2d(6, affine=False)],
        [nn.BatchNorm2d(6, momentum=0.3), nn.BatchNorm2d(6, affine=False)],
        [nn.BatchNorm2d(6, track_running_stats=False), nn.BatchNorm2d(6, track_running_stats=False)],
    ):
        for bn in norms:
            if bn.affine:
                with torch.no_grad():
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_()
        reference = copy.deepcopy(norms)
        versions = [n.num_batches_tracked._version for n in norms if n.track_running_stats]
        g = torch.Generator().manual_seed(1)
        for training in (True, True, True, False):
            for module in norms + reference:
                module.train(training)
            xs = [torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64) + 0.5 for _ in norms]
            y = rep_bn_add_silu_over(xs, [n.double() for n in norms], backend=backend)
            expected = F.silu(sum(bn.double()(x) for bn, x in zip(reference, xs)))
            torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
        for ours, theirs in zip(norms, reference):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-12, atol=1e-12)
        assert [n.num_batches_tracked._version - v for n, v in zip(norms, versions)] == [3] * len(versions)


@pytest.mark.parametrize("backend", BACKENDS)
def test_over_modules_reads_a_parametrized_weight(backend):
    """A weight behind `torch.nn.utils.parametrize` is no longer a registered parameter (the module reads it
    through a property): `rep_bn_add_silu_over` must read it as the module's forward does, and send its
    gradient to the parametrization's original."""

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    torch.manual_seed(0)
    norms = [nn.BatchNorm2d(6).double(), nn.BatchNorm2d(6).double()]
    torch.nn.utils.parametrize.register_parametrization(norms[0], "weight", Double())
    reference = copy.deepcopy(norms)
    xs = [torch.randn(2, 6, 5, 7, dtype=torch.float64) for _ in norms]
    upstream = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    rep_bn_add_silu_over(xs, norms, backend=backend).backward(upstream)
    F.silu(sum(bn(x) for bn, x in zip(reference, xs))).backward(upstream)
    ours, theirs = norms[0].parametrizations.weight.original, reference[0].parametrizations.weight.original
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(norms[0].running_var, reference[0].running_var, rtol=1e-12, atol=1e-12)


def test_over_modules_refuses_norms_that_disagree():
    xs = [torch.randn(2, 3, 4, 4) for _ in range(2)]
    with pytest.raises(ValueError, match=r"share eps, got \[1e-05, 0\.001\]"):
        rep_bn_add_silu_over(xs, [nn.BatchNorm2d(3), nn.BatchNorm2d(3, eps=1e-3)])
    with pytest.raises(ValueError, match="share running statistics"):
        rep_bn_add_silu_over(xs, [nn.BatchNorm2d(3), nn.BatchNorm2d(3, track_running_stats=False)])
    with pytest.raises(ValueError, match="one batch norm per input, got 2 inputs, 1 norms"):
        rep_bn_add_silu_over(xs, [nn.BatchNorm2d(3)])


def test_over_sync_batch_norm_in_training_runs_the_modules(caplog):
    """SyncBatchNorm's statistics span the process group, which the kernels cannot see: in training the
    helper runs the modules themselves (their forward is called, the fallback logged once); in eval mode
    the fused op applies (running statistics are the same on every process)."""
    torch.manual_seed(0)
    norms = [nn.SyncBatchNorm(4), nn.SyncBatchNorm(4)]
    reference = copy.deepcopy(norms)
    calls = []
    for norm in norms:
        norm.register_forward_hook(lambda *_: calls.append(1))
    xs = [torch.randn(2, 4, 3, 5) for _ in norms]
    _backend._log_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="provg.ops"):
        for _ in range(2):
            y = rep_bn_add_silu_over(xs, norms)
            torch.testing.assert_close(y, F.silu(sum(n(x) for n, x in zip(reference, xs))))
    assert len(calls) == 4
    assert sum("SyncBatchNorm in training mode" in r.getMessage() for r in caplog.records) == 1
    for ours, theirs in zip(norms, reference):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    for module in norms + reference:
        module.eval()
    y = rep_bn_add_silu_over(xs, norms)
    torch.testing.assert_close(y, F.silu(sum(n(x) for n, x in zip(reference, xs))), rtol=1e-5, atol=1e-6)
    assert len(calls) == 4  # eval mode took the fused op
