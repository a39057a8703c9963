"""Independent, loop-by-loop re-computations of ProVG's equations for tests (float64, tiny sizes)."""

from __future__ import annotations

import math

import torch


def attention_row(
    query: list[float], keys: list[list[float]], values: list[list[float]], valid: list[bool], scale: float
) -> list[float]:
    """softmax over valid keys of scale·(query·key), times values; zeros when no key is valid."""
    width = len(values[0]) if values else 0
    scored = [
        (scale * sum(q * k for q, k in zip(query, key)), value)
        for key, value, ok in zip(keys, values, valid)
        if ok
    ]
    if not scored:
        return [0.0] * width
    top = max(s for s, _ in scored)
    weights = [math.exp(s - top) for s, _ in scored]
    total = sum(weights)
    return [sum(w * v[j] for w, (_, v) in zip(weights, scored)) / total for j in range(width)]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def survey_gate(x, q, k, v, mask, heads):
    batch, positions, channels = x.shape
    width = channels // heads
    out = torch.empty_like(x)
    for b in range(batch):
        for p in range(positions):
            for h in range(heads):
                sl = slice(h * width, (h + 1) * width)
                a = attention_row(
                    q[b, p, sl].tolist(),
                    k[b, :, sl].tolist(),
                    v[b, :, sl].tolist(),
                    mask[b].tolist(),
                    1 / math.sqrt(width),
                )
                for j, value in enumerate(a):
                    out[b, p, h * width + j] = x[b, p, h * width + j] * sigmoid(value)
    return out


def locate_gate(x, w, bias, k, v, mask):
    batch, positions, channels = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        for p in range(positions):
            query = sum(float(x[b, p, c]) * float(w[c]) for c in range(channels)) + float(bias)
            a = attention_row(
                [query], [[float(t)] for t in k[b]], [[float(t)] for t in v[b]], mask[b].tolist(), 1.0
            )
            out[b, p] = x[b, p] * sigmoid(a[0])
    return out


def verify_gate(x, k, v, mask, w_q):
    batch, positions, channels = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        for c in range(channels):
            mean = sum(float(x[b, p, c]) for p in range(positions)) / positions
            a = attention_row(
                [float(w_q) * mean],
                [[float(t)] for t in k[b]],
                [[float(t)] for t in v[b]],
                mask[b].tolist(),
                1.0,
            )
            out[b, :, c] = x[b, :, c] * sigmoid(a[0])
    return out


def linear(x, layer):
    """x @ Wᵀ + b with the layer's float64 parameters, written out."""
    return torch.einsum("...i,oi->...o", x, layer.weight.detach()) + layer.bias.detach()
