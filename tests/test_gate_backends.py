"""The fused PCM gate backends (cpp, triton, cuda) against the PyTorch reference: values and gradients
on odd shapes, float64 gradcheck with all-masked rows, torch.library.opcheck, torch.compile, backend
selection, and the model with fused ops against the reference model."""

from __future__ import annotations

import importlib
import logging
import os

import pytest
import torch

import provg
from provg.models.repvgg import RepVGGBlock
from provg.ops import _backend, available_backends, locate_gate, survey_gate, verify_gate
from provg.ops.locate_gate import locate_gate_reference
from provg.ops.survey_gate import survey_gate_reference
from provg.ops.verify_gate import verify_gate_reference

AVAILABLE = available_backends()
# Triton runs on CPU tensors only in its interpreter (tests set TRITON_INTERPRET=1 without a GPU).
CPU_BACKENDS = [
    b
    for b in ("cpp", "triton")
    if AVAILABLE[b] and (b != "triton" or os.environ.get("TRITON_INTERPRET") == "1")
]
GPU_BACKENDS = [b for b in ("triton", "cuda") if AVAILABLE[b] and torch.cuda.is_available()]
# (B, P, C, N, heads): single and odd sizes, P not a multiple of any block, C not a power of two, C = 257
# over several channel blocks, N = 41 over more than a warp of tokens (the CUDA kernels' second key per
# lane, their 64-key register arrays and over 48 KiB of shared memory).
SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 7, 5, 3, 1),
    (3, 97, 12, 7, 3),
    (1, 130, 33, 20, 1),
    (2, 65, 96, 1, 2),
    (2, 5, 257, 4, 1),
    (2, 45, 64, 41, 2),
]


def make(op: str, shape, dtype, device="cpu", seed=0):
    batch, positions, channels, keys, heads = shape
    g = torch.Generator().manual_seed(seed)

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    mask = torch.rand(batch, keys, generator=g) > 0.3
    mask[0] = False  # an all-masked row
    if batch > 1:
        mask[1, 0] = True
    mask = mask.to(device)
    x = rand(batch, positions, channels)
    if op == "survey":
        return (
            x,
            rand(batch, positions, channels),
            rand(batch, keys, channels),
            rand(batch, keys, channels),
            mask,
            heads,
        ), (0, 1, 2, 3)
    if op == "locate":
        return (x, rand(channels), rand(()), rand(batch, keys), rand(batch, keys), mask), (0, 1, 2, 3, 4)
    return (x, rand(batch, keys), rand(batch, keys), mask, rand(()) * 0.5), (0, 1, 2, 4)


FUSED = {"survey": survey_gate, "locate": locate_gate, "verify": verify_gate}
REFERENCE = {
    "survey": survey_gate_reference,
    "locate": locate_gate_reference,
    "verify": verify_gate_reference,
}


def call(op, args, grad_indices, backend):
    """(the differentiable leaves, the output) of one call on fresh copies of ``args``."""
    inputs = [
        a.detach().clone().requires_grad_(i in grad_indices)
        if torch.is_tensor(a) and a.is_floating_point()
        else a
        for i, a in enumerate(args)
    ]
    out = REFERENCE[op](*inputs) if backend == "reference" else FUSED[op](*inputs, backend=backend)
    return [inputs[i] for i in grad_indices], out


def run(op, args, grad_indices, backend, upstream=None):
    leaves, out = call(op, args, grad_indices, backend)
    if upstream is None:
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        upstream = upstream.to(device=out.device, dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, upstream)
    return out, grads, upstream


def relative(a, b):
    """‖a − b‖ / max(‖b‖, 1): relative, except that gradients which are exactly zero in exact arithmetic
    (a single key makes every score gradient vanish) are compared with an absolute floor."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1.0)) if b.numel() else 0.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backend_matches_reference(backend, op, shape, dtype):
    args, grad_indices = make(op, shape, dtype, seed=sum(shape))
    out_ref, grads_ref, upstream = run(op, args, grad_indices, "reference")
    out, grads, _ = run(op, args, grad_indices, backend, upstream)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert relative(out, out_ref) <= tolerance
    for got, want in zip(grads, grads_ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert relative(got, want) <= tolerance * 10, relative(got, want)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_saturated_gates_match_reference(backend, op):
    """Values scaled up 300× put the attention at up to a few hundred either side of 0, where σ is 0 or 1 in
    float32 and e^(−a) overflows, and the scores (locate's, verify's) far apart: outputs and gradients still
    match the reference, with no NaN or ∞."""
    args, grad_indices = make(op, (2, 37, 19, 6, 1), torch.float32, seed=5)
    args = list(args)
    values = {"survey": 3, "locate": 4, "verify": 2}[op]  # the index of v; k comes before it
    args[values] = args[values] * 300
    if op != "survey":
        args[values - 1] = args[values - 1] * 30  # keys: scores far apart, the softmax one-hot
    out_ref, grads_ref, upstream = run(op, args, grad_indices, "reference")
    out, grads, _ = run(op, args, grad_indices, backend, upstream)
    assert out.isfinite().all() and all(g.isfinite().all() for g in grads)
    assert relative(out, out_ref) <= 1e-5
    for got, want in zip(grads, grads_ref):
        assert relative(got, want) <= 1e-4, relative(got, want)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_cpp_matches_reference_at_a_stage_1_position_count(op):
    """14,400 positions (a 120² map), few channels: hundreds of blocks and jobs, whose sizes differ by a
    row, against the reference in float64."""
    args, grad_indices = make(op, (2, 14400, 3, 5, 1), torch.float64, seed=11)
    out_ref, grads_ref, upstream = run(op, args, grad_indices, "reference")
    out, grads, _ = run(op, args, grad_indices, "cpp", upstream)
    assert relative(out, out_ref) <= 1e-12
    for got, want in zip(grads, grads_ref, strict=True):
        assert relative(got, want) <= 1e-11, relative(got, want)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
@pytest.mark.parametrize(
    "op, shape",
    [
        ("verify", (2, 7, 5, 3, 1)),
        ("verify", (3, 97, 37, 7, 1)),
        ("verify", (2, 65, 96, 4, 1)),
        ("verify", (1, 130, 257, 20, 1)),
        ("survey", (2, 97, 32, 7, 1)),
        ("survey", (2, 130, 64, 20, 2)),
        ("survey", (3, 33, 48, 5, 3)),
        ("survey", (2, 65, 40, 4, 1)),
        ("locate", (3, 97, 37, 7, 1)),
        ("locate", (2, 130, 257, 20, 1)),
    ],
)
def test_cpp_with_streaming_stores_matches_reference(monkeypatch, op, shape):
    """PROVG_CPU_CACHE_BYTES=1 makes every cpp verify, survey and locate call write its outputs with
    streaming stores (their path for calls whose tensors take more than half the cache). Verify and locate:
    rows of 5, 37 and 257 floats start off the vectors' alignment, so each row's ends take the one-value
    path. Survey streams where every head's slice of a row is whole vectors (widths 32, 32 and 16 here), and
    dq then goes through a tile buffer; width 40 keeps the regular path. The results are the regular path's
    to the last bit or two (the same products; a compiler may fuse one path's multiply-add and not the
    other's)."""
    args, grad_indices = make(op, shape, torch.float32, seed=sum(shape))
    out_ref, grads_ref, upstream = run(op, args, grad_indices, "reference")
    regular, regular_grads, _ = run(op, args, grad_indices, "cpp", upstream)
    monkeypatch.setenv("PROVG_CPU_CACHE_BYTES", "1")
    out, grads, _ = run(op, args, grad_indices, "cpp", upstream)
    assert relative(out, out_ref) <= 1e-5
    for got, want in zip(grads, grads_ref, strict=True):
        assert relative(got, want) <= 1e-4, relative(got, want)
    torch.testing.assert_close(out, regular, rtol=1e-6, atol=1e-7)
    for a, b in zip(grads, regular_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_gradcheck_float64_with_all_masked_rows(backend, op):
    args, grad_indices = make(op, (2, 9, 6, 4, 2), torch.float64, seed=7)
    leaves = [a.detach().clone().requires_grad_() for i, a in enumerate(args) if i in grad_indices]

    def call(*tensors):
        full = list(args)
        for i, t in zip(grad_indices, tensors):
            full[i] = t
        return FUSED[op](*full, backend=backend)

    assert torch.autograd.gradcheck(call, leaves)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_opcheck_contiguous_and_permuted(backend, op):
    args, grad_indices = make(op, (2, 12, 8, 5, 2), torch.float32, seed=3)
    operator = getattr(torch.ops.provg, f"{op}_gate").default
    inputs = [a.requires_grad_() if i in grad_indices else a for i, a in enumerate(args)]
    torch.library.opcheck(operator, (*inputs, backend))
    # Non-contiguous x: a (B, C, P) tensor seen through a transpose.
    permuted = list(inputs)
    permuted[0] = args[0].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    assert not permuted[0].is_contiguous()
    torch.library.opcheck(operator, (*permuted, backend))
    out = FUSED[op](*permuted, backend=backend)
    torch.testing.assert_close(out, REFERENCE[op](*permuted), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_survey_items_with_different_valid_token_counts(backend, dtype):
    """The CPU kernel packs each item's valid tokens (masked ones are never read): items with 0, 1, 8, 9,
    16 and 17 valid tokens out of 21, scattered, on either side of a vector's width (16 floats, 8
    doubles). Masked tokens get exactly zero gradient."""
    args, grad_indices = make("survey", (6, 37, 12, 21, 3), dtype, seed=11)
    g = torch.Generator().manual_seed(5)
    mask = torch.zeros(6, 21, dtype=torch.bool)
    for item, count in enumerate((0, 1, 8, 9, 16, 17)):
        mask[item, torch.randperm(21, generator=g)[:count]] = True
    args = (*args[:4], mask, args[5])
    out_ref, grads_ref, upstream = run("survey", args, grad_indices, "reference")
    out, grads, _ = run("survey", args, grad_indices, backend, upstream)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert relative(out, out_ref) <= tolerance
    for got, want in zip(grads, grads_ref):
        assert relative(got, want) <= tolerance * 10
    dk, dv = grads[2], grads[3]
    assert dk[~mask].abs().max() == 0 and dv[~mask].abs().max() == 0


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton's interpreter is not enabled")
@pytest.mark.parametrize("multiprocessors, block_p", [(1, 64), (30, 32), (1000, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_survey_blocks_shrink_until_every_multiprocessor_has_a_program(
    monkeypatch, multiprocessors, block_p, dtype
):
    """3 items × 3 heads × 97 positions: 18 programs of 64 positions, 36 of 32 or 63 of 16 (a short last
    block each time), whichever first gives every multiprocessor one; each matches the reference."""
    from provg.ops.triton import common
    from provg.ops.triton import survey_gate as triton_survey

    monkeypatch.setattr(common, "HOPPER_MULTIPROCESSORS", multiprocessors)
    args, grad_indices = make("survey", (3, 97, 12, 7, 3), dtype, seed=12)
    assert triton_survey._config(args[0], keys=7, width=4)["BLOCK_P"] == block_p
    out_ref, grads_ref, upstream = run("survey", args, grad_indices, "reference")
    out, grads, _ = run("survey", args, grad_indices, "triton", upstream)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert relative(out, out_ref) <= tolerance
    for got, want in zip(grads, grads_ref, strict=True):
        assert relative(got, want) <= tolerance * 10


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_fused_gates_are_differentiable_once(backend, op):
    """With create_graph=True the first derivatives are the reference's; differentiating them again
    raises with the fix (the kernels have no second derivative) instead of silently dropping terms."""
    args, grad_indices = make(op, (2, 9, 6, 4, 2), torch.float64, seed=9)
    grads = {}
    for name in ("reference", backend):
        leaves, out = call(op, args, grad_indices, name)
        grads[name] = torch.autograd.grad(out.square().sum(), leaves, create_graph=True)
    for got, want in zip(grads[backend], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match=rf"{op}_gate: the fused kernels are differentiable once"):
        sum(g.square().sum() for g in grads[backend]).backward()


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_eager_cpp_calls_take_the_cpp_autograd_node(op):
    """Eager cpp calls go through provg::<gate>_eager (the autograd node in C++, no Python frame in the
    backward): its gradients for any subset of inputs, and its values under no_grad and inference mode,
    are the reference's."""
    args, grad_indices = make(op, (2, 9, 6, 4, 2), torch.float64, seed=11)
    want = REFERENCE[op](*args)
    leaves, out = call(op, args, grad_indices, "cpp")
    assert out.grad_fn.name() == f"provg::{op}_gate_backward", out.grad_fn.name()
    for subset in ([grad_indices[0]], grad_indices[1:]):
        fused_leaves, fused = call(op, args, subset, "cpp")
        ref_leaves, ref = call(op, args, subset, "reference")
        upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        got = torch.autograd.grad(fused, fused_leaves, upstream)
        for g, w in zip(got, torch.autograd.grad(ref, ref_leaves, upstream)):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        no_grad = FUSED[op](*with_leaves(args, leaves, grad_indices), backend="cpp")
    with torch.inference_mode():
        inference = FUSED[op](*args, backend="cpp")
    for got in (out, no_grad, inference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert no_grad.grad_fn is None and inference.grad_fn is None


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # forward_ad's import
@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_cpp_autograd_node_guards_its_saved_inputs(op):
    """The C++ node keeps PyTorch's guarantees: x changed in place before the backward raises, a second
    backward through a freed graph raises, and forward-mode AD is refused with the fix."""
    args, _ = make(op, (2, 9, 6, 4, 2), torch.float64, seed=12)
    x = args[0].clone().requires_grad_()
    changed = x * 1.0
    out = FUSED[op](changed, *args[1:], backend="cpp")
    with torch.no_grad():
        changed.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()

    out = FUSED[op](x, *args[1:], backend="cpp")
    out.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()

    import torch.autograd.forward_ad as forward_ad

    with forward_ad.dual_level():
        dual = forward_ad.make_dual(args[0], torch.ones_like(args[0]))
        with pytest.raises(RuntimeError, match=rf"{op}_gate: the fused kernels have no forward-mode"):
            FUSED[op](dual, *args[1:], backend="cpp")


def with_leaves(args, leaves, grad_indices):
    """``args`` with the leaves that require gradients in their places."""
    full = list(args)
    for i, leaf in zip(grad_indices, leaves):
        full[i] = leaf
    return full


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_cpp_results_do_not_depend_on_the_thread_count(op):
    """Partial sums are per block of positions (or per job, whichever thread takes it), added in block
    order: 1, 2 and 3 threads give bitwise the same values and gradients, on a shape of several blocks
    and jobs whose last one is short."""
    args, grad_indices = make(op, (2, 1031, 37, 9, 1), torch.float32, seed=5)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out, grads, _ = run(op, args, grad_indices, "cpp")
            results.append([out, *grads])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_batch(backend):
    for op in ("survey", "locate", "verify"):
        args, grad_indices = make(op, (2, 5, 4, 3, 1), torch.float32)
        empty = [a[:0] if torch.is_tensor(a) and a.dim() >= 2 else a for a in args]
        out, grads, _ = run(op, empty, grad_indices, backend)
        assert out.shape[0] == 0 and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["locate", "verify"])
def test_no_channels(backend, op):
    """C = 0: nothing to gate, and the token gradients (sums over channels) are exactly zero, as the
    reference's are (the kernels do not run, so their partial sums must start from zero)."""
    args, grad_indices = make(op, (2, 5, 0, 3, 1), torch.float64)
    out, grads, _ = run(op, args, grad_indices, backend)
    _, grads_ref, _ = run(op, args, grad_indices, "reference")
    assert out.shape == (2, 5, 0)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
def test_compile_fullgraph_pcm_module_with_fused_ops():
    from provg.models.pcm import PCM
    from provg.text import LanguageFeatures

    torch.manual_seed(0)
    pcm = PCM(8, 6, "SLV", heads=2)
    tokens = torch.randn(2, 5, 6)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    language = LanguageFeatures(tokens, mask, tokens, mask, tokens, mask)
    x = torch.randn(2, 15, 8, requires_grad=True)
    compiled = torch.compile(pcm, fullgraph=True, backend="aot_eager")
    out = compiled(x, language)
    eager = pcm(x, language)
    torch.testing.assert_close(out, eager)
    grad_compiled = torch.autograd.grad(out.square().sum(), x)[0]
    grad_eager = torch.autograd.grad(eager.square().sum(), x)[0]
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
def test_compile_whole_model_vision_path_has_fused_ops_and_no_graph_break():
    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", image_size=64, parser="naive", pcm_heads=2)
    images = torch.randn(2, 3, 64, 64)
    language = model.encode_text(["the small red ship on the upper left", "a storage tank"])
    explained = torch._dynamo.explain(model.ground)(images, language)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    targets = [str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    fused = [t for t in targets if t.startswith("provg.")]
    stages = len(model.pcm)
    blocks = sum(isinstance(m, RepVGGBlock) for m in model.modules())  # train form: the fused tail
    assert sorted(fused) == sorted(
        [f"provg.{g}_gate.default" for g in ("survey", "locate", "verify")] * stages
        + ["provg.rep_bn_add_silu.default"] * blocks
    )

    compiled = torch.compile(model.ground, fullgraph=True, backend="aot_eager")
    out, eager = compiled(images, language), model.ground(images, language)
    torch.testing.assert_close(out.mask_logits, eager.mask_logits)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.mask_logits.square().mean() + out.boxes.sum(), params, allow_unused=True)
    expected = torch.autograd.grad(
        eager.mask_logits.square().mean() + eager.boxes.sum(), params, allow_unused=True
    )
    for g, e in zip(grads, expected):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_backend_selection_errors_and_fallback(monkeypatch, caplog):
    args, _ = make("locate", (1, 4, 3, 2, 1), torch.float32)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        locate_gate(*args, backend="fast")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        locate_gate(*args, backend="cuda")
    bf16 = [a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    if AVAILABLE["cpp"]:
        with pytest.raises(RuntimeError, match="supports float32, float64, got bfloat16"):
            locate_gate(*bf16, backend="cpp")
    monkeypatch.setattr(_backend, "has_cpp", lambda: False)
    _backend._log_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="provg.ops"):
        for _ in range(2):
            locate_gate(*args)
    assert sum("locate_gate: falling back" in r.getMessage() for r in caplog.records) == 1
    _backend._log_once.cache_clear()


def test_automatic_choice_is_the_fused_kernel(monkeypatch):
    if not AVAILABLE["cpp"]:
        pytest.skip("provg._C not built")
    module = importlib.import_module("provg.ops.locate_gate")
    calls = []
    monkeypatch.setattr(module, "locate_gate_reference", lambda *a: calls.append(1))
    args, _ = make("locate", (1, 4, 3, 2, 1), torch.float32)
    locate_gate(*args)
    assert calls == []  # the cpp kernel ran, not the reference
    monkeypatch.setenv("PROVG_BACKEND", "torch")
    locate_gate(*args)
    assert calls == [1]


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="provg._C not built")
def test_model_with_fused_ops_matches_reference_model(monkeypatch):
    torch.manual_seed(0)
    model = provg.create_model("provg_tiny", image_size=64, parser="naive", pcm_heads=2)
    images = torch.randn(2, 3, 64, 64)
    texts = ["the small red ship on the upper left", "a storage tank"]

    def forward_backward():
        model.zero_grad()
        out = model(images, texts)
        (out.boxes.sum() + out.mask_logits.square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    fused_out, fused_grads = forward_backward()
    monkeypatch.setenv("PROVG_BACKEND", "torch")
    ref_out, ref_grads = forward_backward()
    torch.testing.assert_close(fused_out.boxes, ref_out.boxes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_out.mask_logits, ref_out.mask_logits, rtol=1e-4, atol=1e-5)
    assert fused_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.skipif(not GPU_BACKENDS, reason="no CUDA device or GPU backend")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
# (1, 40, 300, 41, 1): 10 chunks of 32 channels in a grid of fewer tiles than SMs, where the CUDA survey's
# float blocks take 8 warps (warps 0 and 1 two chunks each, the last one partial) with 64-key arrays.
@pytest.mark.parametrize("shape", [*SHAPES, (2, 900, 512, 20, 4), (1, 40, 300, 41, 1)])
def test_gpu_backend_matches_reference(backend, op, dtype, shape):
    args, grad_indices = make(op, shape, torch.float64, "cuda", seed=sum(shape))
    cast = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    out_ref, grads_ref, upstream = run(op, args, grad_indices, "reference")  # float64 on the GPU
    out, grads, _ = run(op, cast, grad_indices, backend, upstream.to(dtype))
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)
    assert relative(out, out_ref) <= tolerance
    for got, want in zip(grads, grads_ref):
        assert relative(got, want) <= tolerance * 10


def off_alignment(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` one element past a 16-byte boundary (the kernels use it in place)."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    shifted = storage[1:].view(t.shape).copy_(t)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    return shifted


@pytest.mark.parametrize(
    "device, backend, streaming",
    [("cpu", b, False) for b in CPU_BACKENDS]
    + [("cpu", "cpp", True)]
    + [("cuda", b, False) for b in GPU_BACKENDS],
)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_backend_on_inputs_off_the_vector_alignment(monkeypatch, device, backend, streaming, op):
    """x and the upstream gradient off the 16-byte alignment that packed loads (CUDA) and streaming stores
    (cpp, forced by PROVG_CPU_CACHE_BYTES=1) need, at a width (C = 64) that would take them: the kernels
    must fall back, not read across rows or misplace their writes."""
    if streaming:
        monkeypatch.setenv("PROVG_CPU_CACHE_BYTES", "1")
    args, grad_indices = make(op, (2, 33, 64, 5, 2), torch.float32, device, seed=5)
    out_ref, grads_ref, upstream = run(op, args, grad_indices, "reference")
    inputs = [
        a.detach().clone().requires_grad_(i in grad_indices)
        if torch.is_tensor(a) and a.is_floating_point()
        else a
        for i, a in enumerate(args)
    ]
    inputs[0] = off_alignment(args[0]).requires_grad_()
    out = FUSED[op](*inputs, backend=backend)
    grads = torch.autograd.grad(out, [inputs[i] for i in grad_indices], off_alignment(upstream))
    assert relative(out, out_ref) <= 1e-5
    for got, want in zip(grads, grads_ref):
        assert relative(got, want) <= 1e-4
