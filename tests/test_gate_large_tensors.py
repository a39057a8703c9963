"""The fused PCM gates on tensors past int32's range: (2, 2²³ + 128, 128) float32 inputs hold 2³¹ + 2¹⁵
elements, so the last 256 positions of the second batch item sit at offsets no 32-bit index reaches.
GPU only (each such tensor is 8.6 GB; a call and its backward hold about six). The same checks run on
small inputs with every backend, which pins the checks themselves.

Checking the whole output against the reference would need the reference's temporaries at full size, so
the upstream gradient is zero except on the last rows: every output row depends on its own position
alone, and so then do the key, value and parameter gradients, which the reference gives from those rows.
Verify's gate takes the mean over all positions, which enters its reference as the sum of the other rows
(whose gradient is what every other row of dx must hold)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile

import pytest
import torch
from test_gate_backends import relative

from provg.ops import available_backends, locate_gate, survey_gate, verify_gate
from provg.ops.locate_gate import locate_gate_reference
from provg.ops.masked_softmax import masked_softmax
from provg.ops.survey_gate import survey_gate_reference

AVAILABLE = available_backends()
CPU_BACKENDS = [b for b in ("cpp", "triton") if AVAILABLE[b]]  # Triton: in its interpreter (conftest)
GPU_BACKENDS = [b for b in ("triton", "cuda") if AVAILABLE[b] and torch.cuda.is_available()]
BIG = (2, 2**23 + 128, 128, 7, 2)  # (B, P, C, N, heads): B·P·C = 2³¹ + 2¹⁵
ROWS = 64


def all_zero(t: torch.Tensor) -> bool:
    """Whether every element is 0, by a reduction (no temporary the size of ``t``)."""
    return float(torch.linalg.vector_norm(t)) == 0.0


def upstream_on_last_rows(out: torch.Tensor, rows: int, rand) -> torch.Tensor:
    up = torch.zeros_like(out)
    up[:, -rows:] = rand(out.shape[0], rows, out.shape[2])
    return up


def check_survey(backend, shape, device, rows):
    batch, positions, channels, keys, heads = shape
    rand = _random(device)
    x, q = rand(batch, positions, channels), rand(batch, positions, channels)
    k, v, mask = rand(batch, keys, channels), rand(batch, keys, channels), _mask(batch, keys, device)
    leaves = [t.requires_grad_() for t in (x, q, k, v)]
    out = survey_gate(x, q, k, v, mask, heads=heads, backend=backend)
    up = upstream_on_last_rows(out, rows, rand)
    dx, dq, dk, dv = torch.autograd.grad(out, leaves, up)
    for part in (slice(0, rows), slice(positions - rows, positions)):
        want = survey_gate_reference(
            *(t[:, part].double() for t in (x, q)), k.double(), v.double(), mask, heads
        )
        assert relative(out[:, part], want) <= 1e-5
    last = [t[:, -rows:].detach().double().requires_grad_() for t in (x, q)]
    kv = [t.detach().double().requires_grad_() for t in (k, v)]
    want = survey_gate_reference(*last, *kv, mask, heads)
    expected = torch.autograd.grad(want, [*last, *kv], up[:, -rows:].double())
    for got, ref in zip((dx[:, -rows:], dq[:, -rows:], dk, dv), expected, strict=True):
        assert relative(got, ref) <= 1e-4
    assert all_zero(dx[:, :-rows]) and all_zero(dq[:, :-rows])


def check_locate(backend, shape, device, rows):
    batch, positions, channels, keys, _ = shape
    rand = _random(device)
    x, w, b = rand(batch, positions, channels), rand(channels) / channels**0.5, rand(())
    k, v, mask = rand(batch, keys), rand(batch, keys), _mask(batch, keys, device)
    leaves = [t.requires_grad_() for t in (x, w, b, k, v)]
    out = locate_gate(x, w, b, k, v, mask, backend=backend)
    up = upstream_on_last_rows(out, rows, rand)
    grads = torch.autograd.grad(out, leaves, up)
    small = [t.detach().double() for t in (w, b, k, v)]
    for part in (slice(0, rows), slice(positions - rows, positions)):
        assert relative(out[:, part], locate_gate_reference(x[:, part].double(), *small, mask)) <= 1e-5
    last = x[:, -rows:].detach().double().requires_grad_()
    params = [t.requires_grad_() for t in small]
    want = locate_gate_reference(last, *params, mask)
    expected = torch.autograd.grad(want, [last, *params], up[:, -rows:].double())
    for got, ref in zip((grads[0][:, -rows:], *grads[1:]), expected, strict=True):
        assert relative(got, ref) <= 1e-4
    assert all_zero(grads[0][:, :-rows])


def check_verify(backend, shape, device, rows):
    batch, positions, channels, keys, _ = shape
    rand = _random(device)
    x, k, v, mask = (
        rand(batch, positions, channels),
        rand(batch, keys),
        rand(batch, keys),
        _mask(batch, keys, device),
    )
    w_q = torch.tensor(0.5, device=device)
    leaves = [t.requires_grad_() for t in (x, k, v, w_q)]
    out = verify_gate(x, k, v, mask, w_q, backend=backend)
    up = upstream_on_last_rows(out, rows, rand)
    dx, dk, dv, dw_q = torch.autograd.grad(out, leaves, up)

    last = x[:, -rows:].detach().double().requires_grad_()
    rest = x[:, :-rows].detach().sum(1, dtype=torch.float64).requires_grad_()  # Σ_p x over the other rows
    params = [t.detach().double().requires_grad_() for t in (k, v, w_q)]
    mean = (last.sum(1) + rest) / positions
    weights = masked_softmax(params[2] * mean[:, :, None] * params[0][:, None, :], mask[:, None, :])
    gate = torch.sigmoid((weights * params[1][:, None, :]).sum(-1))  # (B, C)
    assert relative(out[:, :rows], x[:, :rows].double() * gate[:, None, :]) <= 1e-5
    want = last * gate[:, None, :]
    assert relative(out[:, -rows:], want) <= 1e-5
    d_last, d_rest, *d_params = torch.autograd.grad(want, [last, rest, *params], up[:, -rows:].double())
    for got, ref in zip((dx[:, -rows:], dk, dv, dw_q), (d_last, *d_params), strict=True):
        assert relative(got, ref) <= 1e-4
    for row in (0, positions - rows - 1):  # without upstream gradient, a row's dx is the mean's share
        assert relative(dx[:, row], d_rest) <= 1e-4


CHECKS = {"survey": check_survey, "locate": check_locate, "verify": check_verify}


def _random(device):
    g = torch.Generator(device=device).manual_seed(7)

    def rand(*shape):
        return torch.randn(*shape, generator=g, device=device)

    return rand


def _mask(batch, keys, device):
    mask = torch.ones(batch, keys, dtype=torch.bool, device=device)
    mask[:, -1] = False
    return mask


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_last_row_checks_on_small_inputs(backend, op):
    """The checks of the large-tensor test on (2, 300, 24) inputs: they hold for a correct kernel."""
    CHECKS[op](backend, (2, 300, 24, 7, 2), "cpu", ROWS)


@pytest.mark.skipif(not GPU_BACKENDS, reason="no CUDA device or GPU backend")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", ["survey", "locate", "verify"])
def test_gpu_backend_past_int32_offsets(backend, op):
    with one_process_at_a_time():
        free, _ = torch.cuda.mem_get_info()
        if free < 64 * 2**30:
            pytest.skip(f"needs about 64 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
        try:
            CHECKS[op](backend, BIG, "cuda", ROWS)
        finally:
            torch.cuda.empty_cache()  # for the next process's turn


@contextlib.contextmanager
def one_process_at_a_time():
    """Holds a file lock, so that test processes sharing the GPU (pytest-xdist workers) take turns."""
    with open(os.path.join(tempfile.gettempdir(), "provg-large-gpu-tests.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
