"""PCM gate ops (Eq. 1–7) against loop-by-loop re-computation, all-masked rows, and float64 gradcheck."""

from __future__ import annotations

import pytest
import torch

from provg.ops import locate_gate, masked_softmax, survey_gate, verify_gate

import reference_math as ref


def _mask(batch, tokens, generator):
    mask = torch.rand(batch, tokens, generator=generator) > 0.4
    mask[0] = False  # an all-masked row
    if batch > 1:
        mask[1, 0] = True
    return mask


@pytest.mark.parametrize(
    ("batch", "positions", "channels", "tokens", "heads"),
    [(1, 1, 1, 1, 1), (2, 3, 4, 3, 2), (3, 7, 6, 5, 3), (2, 5, 9, 1, 1)],
)
def test_survey_gate_matches_loops(batch, positions, channels, tokens, heads):
    g = torch.Generator().manual_seed(positions * 31 + channels)
    x, q = (torch.randn(batch, positions, channels, generator=g, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(batch, tokens, channels, generator=g, dtype=torch.float64) for _ in range(2))
    mask = _mask(batch, tokens, g)
    out = survey_gate(x, q, k, v, mask, heads)
    torch.testing.assert_close(out, ref.survey_gate(x, q, k, v, mask, heads), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0], x[0] * 0.5, rtol=0, atol=0)  # all masked: gate σ(0)


@pytest.mark.parametrize(
    ("batch", "positions", "channels", "tokens"), [(1, 1, 1, 1), (2, 7, 5, 3), (3, 4, 97, 6)]
)
def test_locate_gate_matches_loops(batch, positions, channels, tokens):
    g = torch.Generator().manual_seed(positions + 7 * channels)
    x = torch.randn(batch, positions, channels, generator=g, dtype=torch.float64)
    w = torch.randn(channels, generator=g, dtype=torch.float64)
    b = torch.randn((), generator=g, dtype=torch.float64)
    k, v = (torch.randn(batch, tokens, generator=g, dtype=torch.float64) for _ in range(2))
    mask = _mask(batch, tokens, g)
    out = locate_gate(x, w, b, k, v, mask)
    torch.testing.assert_close(out, ref.locate_gate(x, w, b, k, v, mask), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0], x[0] * 0.5, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("batch", "positions", "channels", "tokens"), [(1, 1, 1, 1), (2, 7, 5, 3), (2, 13, 6, 4)]
)
def test_verify_gate_matches_loops(batch, positions, channels, tokens):
    g = torch.Generator().manual_seed(positions * channels)
    x = torch.randn(batch, positions, channels, generator=g, dtype=torch.float64)
    k, v = (torch.randn(batch, tokens, generator=g, dtype=torch.float64) for _ in range(2))
    w_q = torch.tensor(0.7, dtype=torch.float64)
    mask = _mask(batch, tokens, g)
    out = verify_gate(x, k, v, mask, w_q)
    torch.testing.assert_close(out, ref.verify_gate(x, k, v, mask, w_q), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0], x[0] * 0.5, rtol=0, atol=0)


def test_all_masked_rows_pass_no_gradient_to_keys_and_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    q = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    survey_gate(x, q, k, v, mask, heads=2).sum().backward()
    assert torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    assert k.grad[0].abs().max() == 0 and v.grad[0].abs().max() == 0
    assert k.grad[1, 1].abs().max() == 0 and v.grad[1, 1].abs().max() == 0  # a masked key
    assert v.grad[1, 0].abs().max() > 0


def test_masked_softmax_rows():
    scores = torch.tensor([[1.0, 2.0, 3.0], [5.0, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    weights = masked_softmax(scores, mask)
    e = torch.exp(torch.tensor([1.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(
        weights[0], torch.stack([e[0], torch.tensor(0.0, dtype=torch.float64), e[1]]) / e.sum()
    )
    assert weights[1].abs().max() == 0


def test_gates_gradcheck_float64_with_all_masked_rows():
    g = torch.Generator().manual_seed(5)

    def leaf(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)

    mask = torch.tensor([[False, False, False], [True, False, True]])
    x, q, k, v = leaf(2, 4, 6), leaf(2, 4, 6), leaf(2, 3, 6), leaf(2, 3, 6)
    assert torch.autograd.gradcheck(lambda *a: survey_gate(*a, mask, 3), (x, q, k, v))
    w, b, ks, vs = leaf(6), leaf(), leaf(2, 3), leaf(2, 3)
    assert torch.autograd.gradcheck(lambda *a: locate_gate(*a, mask), (x, w, b, ks, vs))
    w_q = leaf()
    assert torch.autograd.gradcheck(
        lambda x_, k_, v_, wq: verify_gate(x_, k_, v_, mask, wq), (x, ks, vs, w_q)
    )
