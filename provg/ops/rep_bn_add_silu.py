"""Fused tail of a training-mode RepVGG block (Sec. 4.3, DESIGN §2): ``SiLU(Σ_i BN_i(x_i))``.

The branches x_i (K = 1..3: the 3×3 convolution, the 1×1 convolution, the identity) are each batch
normalised and summed, then SiLU. Eager PyTorch runs this as two passes per batch norm, an add and an
activation; fused, the forward reads every branch twice (statistics, then the output) and writes y
once, and the backward reads grad and the branches twice (the per-channel sums Σ ds and
Σ ds·(x_i − μ_i), then the input gradients), recomputing the pre-activation instead of storing it
(the CPU kernels keep ds in the first input gradient's buffer between the two passes while a call's
tensors fit the last-level cache, where the sigmoid, not memory, bounds them).

With ``training=True`` (or no running statistics) the statistics are the batch's (mean and biased
variance over B·H·W, shifted sums), and the running statistics are updated exactly as
`torch.nn.BatchNorm2d` does (momentum, unbiased running variance); otherwise the running statistics
are used. Backends: ``torch`` (`torch.nn.functional.batch_norm` per branch, then add and SiLU: the
unfused block), ``cpp``, ``cuda``, ``triton``; NCHW and channels-last inputs (y keeps the layout of the
first input). `rep_bn_add_silu_reference` is the float64 oracle the kernels are tested against.

Eager cpp/cuda calls go through one C++ operator (``provg::rep_bn_add_silu_eager``: autograd node,
parameter packing, running-statistic update and the modules' ``num_batches_tracked`` in C++,
csrc/rep_bn_add_silu_autograd.cpp), because on the 15² and 30² CFM maps a Python autograd layer costs
as much as the kernels; torch.compile and torch.export trace ``provg::rep_bn_add_silu``, whose autograd
is registered below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._backend import _log_once
from ._gate_api import choose_backend, differentiable_once, kernels, memory_layout

__all__ = ["rep_bn_add_silu", "rep_bn_add_silu_over", "rep_bn_add_silu_reference"]


def _per_channel(t: Tensor) -> Tensor:
    return t[None, :, None, None]


def rep_bn_add_silu_reference(
    inputs: Sequence[Tensor],
    weight: Tensor,
    bias: Tensor,
    mean: Tensor,
    var: Tensor,
    training: bool,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch reference: (y, mean, var) with the (K, C) statistics used (the batch's when ``training``)."""
    acc = weight.dtype
    total = None
    means, variances = [], []
    for i, x in enumerate(inputs):
        xa = x.to(acc)
        if training:
            m = xa.mean(dim=(0, 2, 3))
            v = (xa - _per_channel(m)).square().mean(dim=(0, 2, 3))
        else:
            m, v = mean[i], var[i]
        means.append(m.detach())
        variances.append(v.detach())
        term = (xa - _per_channel(m)) * _per_channel(weight[i] * torch.rsqrt(v + eps)) + _per_channel(bias[i])
        total = term if total is None else total + term
    return F.silu(total).to(inputs[0].dtype), torch.stack(means), torch.stack(variances)


_SCHEMA = "Tensor[] inputs, Tensor weight, Tensor bias, Tensor mean, Tensor var, bool training, float eps"
torch.library.define("provg::rep_bn_add_silu", f"({_SCHEMA}, str backend) -> (Tensor, Tensor, Tensor)")
torch.library.define(
    "provg::rep_bn_add_silu_grad", f"(Tensor grad, {_SCHEMA}, str backend) -> (Tensor[], Tensor, Tensor)"
)


@torch.library.impl("provg::rep_bn_add_silu", "default")
def _forward(inputs, weight, bias, mean, var, training, eps, backend):
    return tuple(kernels("rep_bn_add_silu", backend)[0](inputs, weight, bias, mean, var, training, eps))


@torch.library.impl("provg::rep_bn_add_silu_grad", "default")
def _backward(grad, inputs, weight, bias, mean, var, training, eps, backend):
    dinputs, dweight, dbias = kernels("rep_bn_add_silu", backend)[1](
        grad, inputs, weight, bias, mean, var, training, eps
    )
    return list(dinputs), dweight, dbias


@torch.library.register_fake("provg::rep_bn_add_silu")
def _forward_fake(inputs, weight, bias, mean, var, training, eps, backend):
    return torch.empty_like(inputs[0]), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


@torch.library.register_fake("provg::rep_bn_add_silu_grad")
def _backward_fake(grad, inputs, weight, bias, mean, var, training, eps, backend):
    return [torch.empty_like(x) for x in inputs], weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _save(ctx, tensors, weight, bias, used_mean, used_var, training, eps, backend) -> None:
    """What both autograd paths keep for the backward: the inputs and the statistics used."""
    ctx.mark_non_differentiable(used_mean, used_var)
    ctx.save_for_backward(*tensors, weight, bias, used_mean, used_var)
    ctx.arguments = (training, eps, backend)


def _grad_arguments(ctx, grad: Tensor) -> tuple:
    """(grad in the inputs' layout, inputs, weight, bias, mean, var, training, eps, backend)."""
    training, eps, backend = ctx.arguments
    *tensors, weight, bias, mean, var = ctx.saved_tensors
    grad = grad.contiguous(memory_format=memory_layout(tensors[0]))
    return grad, tensors, weight, bias, mean, var, training, eps, backend


def _setup_context(ctx, inputs, output):
    tensors, weight, bias, _, _, training, eps, backend = inputs
    _save(ctx, tensors, weight, bias, output[1], output[2], training, eps, backend)


def _autograd_backward(ctx, grad, _grad_mean, _grad_var):
    dinputs, dweight, dbias = torch.ops.provg.rep_bn_add_silu_grad(*_grad_arguments(ctx, grad))
    *dinputs, dweight, dbias = differentiable_once("rep_bn_add_silu", [*dinputs, dweight, dbias])
    return dinputs, dweight, dbias, None, None, None, None, None


torch.library.register_autograd("provg::rep_bn_add_silu", _autograd_backward, setup_context=_setup_context)


class _EagerFused(torch.autograd.Function):
    """The same kernels as ``provg::rep_bn_add_silu`` without the custom-op wrapping, for eager Triton
    calls: torch.library's autograd layer costs more than the kernels themselves at the 15² and 30²
    maps. Eager cpp/cuda calls take ``provg::rep_bn_add_silu_eager``, whose autograd is in C++."""

    @staticmethod
    def forward(ctx, weight, bias, mean, var, training, eps, backend, *tensors):
        forward = kernels("rep_bn_add_silu", backend)[0]
        y, used_mean, used_var = forward(list(tensors), weight, bias, mean, var, training, eps)
        _save(ctx, tensors, weight, bias, used_mean, used_var, training, eps, backend)
        return y, used_mean, used_var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        *arguments, backend = _grad_arguments(ctx, grad)
        dinputs, dweight, dbias = kernels("rep_bn_add_silu", backend)[1](*arguments)
        *dinputs, dweight, dbias = differentiable_once("rep_bn_add_silu", [*dinputs, dweight, dbias])
        return dweight, dbias, None, None, None, None, None, *dinputs


def _stack_pair(
    first: Sequence[Tensor | None], second: Sequence[Tensor | None], fills: tuple[float, float], like: Tensor
) -> tuple[Tensor, Tensor]:
    """The (K, C) stacks of two lists of per-branch parameters (a missing one, affine=False, is its list's
    fill), as the halves of one (2K, C) stack: one copy, one launch on a GPU."""
    rows = [
        like.new_full(like.shape, fill) if v is None else v if v.dtype == like.dtype else v.to(like.dtype)
        for values, fill in zip((first, second), fills)
        for v in values
    ]
    both = torch.stack(rows)
    return both[: len(first)], both[len(first) :]


def _eager(
    inputs: list[Tensor],
    running_means: Sequence[Tensor] | None,
    running_vars: Sequence[Tensor] | None,
    weights: Sequence[Tensor | None],
    biases: Sequence[Tensor | None],
    training: bool,
    momenta: Sequence[float],
    eps: float,
) -> Tensor:
    """The ``torch`` backend: `torch.nn.functional.batch_norm` per branch (its native kernels, its
    running-statistic update), summed, then SiLU — what the unfused block computes."""
    total = None
    for i, x in enumerate(inputs):
        term = F.batch_norm(
            x,
            None if running_means is None else running_means[i],
            None if running_vars is None else running_vars[i],
            weights[i],
            biases[i],
            training or running_means is None,
            momenta[i],
            eps,
        )
        total = term if total is None else total + term
    return F.silu(total)


def rep_bn_add_silu(
    inputs: Sequence[Tensor],
    running_means: Sequence[Tensor] | None = None,
    running_vars: Sequence[Tensor] | None = None,
    weights: Sequence[Tensor | None] | None = None,
    biases: Sequence[Tensor | None] | None = None,
    training: bool = False,
    momentum: float | Sequence[float] = 0.1,
    eps: float = 1e-5,
    backend: str | None = None,
) -> Tensor:
    """``SiLU(Σ_i batch_norm(inputs[i], running_means[i], running_vars[i], weights[i], biases[i]))``.

    Arguments follow `torch.nn.functional.batch_norm`, one entry per branch (``momentum`` may be one
    factor per branch; ``torch.nn.BatchNorm2d`` with ``momentum=None`` passes 1/num_batches_tracked).
    Batch statistics are used when ``training`` or when no running statistics are given; in training
    the running statistics are updated in place as `torch.nn.BatchNorm2d` updates them.
    """
    inputs = _checked_branches(inputs)
    count = len(inputs)
    momenta = (
        [float(momentum)] * count if isinstance(momentum, (int, float)) else [float(m) for m in momentum]
    )
    weights = [None] * count if weights is None else list(weights)
    biases = [None] * count if biases is None else list(biases)
    tracked = running_means is not None and running_vars is not None
    for name, values in (("momentum", momenta), ("weights", weights), ("biases", biases)) + (
        (("running_means", running_means), ("running_vars", running_vars)) if tracked else ()
    ):
        if len(values) != count:
            raise ValueError(f"rep_bn_add_silu: {count} branches but {len(values)} {name}")
    return _fused(
        inputs,
        list(running_means) if tracked else None,
        list(running_vars) if tracked else None,
        weights,
        biases,
        training,
        momenta,
        eps,
        backend,
    )


def _checked_branches(inputs: Sequence[Tensor]) -> list[Tensor]:
    """The branch inputs as a list, after checking that they are 1 to 3 floating (B, C, H, W) tensors of one
    shape, dtype and device."""
    inputs = list(inputs)
    if not 1 <= len(inputs) <= 3:
        raise ValueError(f"rep_bn_add_silu: 1 to 3 branch inputs, got {len(inputs)}")
    first = inputs[0]
    if not isinstance(first, Tensor) or first.dim() != 4 or not first.is_floating_point():
        raise ValueError(
            "rep_bn_add_silu: inputs must be floating (B, C, H, W) tensors, got "
            f"{getattr(first, 'shape', first)}"
        )
    for x in inputs[1:]:
        if x.shape != first.shape or x.dtype != first.dtype or x.device != first.device:
            raise ValueError(
                "rep_bn_add_silu: every branch must match the first one's shape, dtype and device "
                f"({tuple(first.shape)}, {first.dtype}, {first.device}); got "
                f"({tuple(x.shape)}, {x.dtype}, {x.device})"
            )
    return inputs


def _fused(
    inputs: list[Tensor],
    running_means: list[Tensor] | None,
    running_vars: list[Tensor] | None,
    weights: list[Tensor | None],
    biases: list[Tensor | None],
    training: bool,
    momenta: list[float],
    eps: float,
    backend: str | None,
    counters: Sequence[Tensor] = (),
) -> Tensor:
    """`rep_bn_add_silu` on checked arguments, one per branch (running statistics: both lists or both None).
    ``counters`` (batch-norm modules' ``num_batches_tracked``) are advanced by one, by the C++ entry point
    where it runs."""
    first = inputs[0]
    channels = first.shape[1]
    tracked = running_means is not None
    use_batch = training or not tracked
    elements = first.numel() // max(channels, 1)
    if use_batch and elements <= 1:
        raise ValueError(
            "rep_bn_add_silu: batch statistics need more than 1 value per channel, got input size "
            f"{tuple(first.shape)}; use a larger batch or map, or eval mode"
        )
    if use_batch and eps <= 0.0:
        raise ValueError(f"rep_bn_add_silu: eps must be positive with batch statistics, got {eps}")
    chosen = choose_backend("rep_bn_add_silu", first, backend)
    if chosen in ("cpp", "cuda") and not torch.compiler.is_compiling():
        # The C++ entry point: autograd node, parameter packing, counters and running-statistic update.
        return torch.ops.provg.rep_bn_add_silu_eager.default(
            inputs,
            weights,
            biases,
            running_means if tracked else [],
            running_vars if tracked else [],
            list(counters),
            training,
            momenta,
            eps,
        )
    if counters:
        torch._foreach_add_(list(counters), 1)  # one launch on a GPU for every branch
    if chosen == "torch":
        return _eager(inputs, running_means, running_vars, weights, biases, training, momenta, eps)
    acc = torch.float64 if first.dtype == torch.float64 else torch.float32
    like = first.new_empty(channels, dtype=acc)
    weight, bias = _stack_pair(weights, biases, (1.0, 0.0), like)
    if use_batch:
        mean = var = like.new_empty((0,))
    else:
        mean, var = (s.detach() for s in _stack_pair(running_means, running_vars, (0.0, 1.0), like))
    layout = memory_layout(first)
    inputs = [x.contiguous(memory_format=layout) for x in inputs]
    if torch.compiler.is_compiling():
        y, batch_mean, batch_var = torch.ops.provg.rep_bn_add_silu.default(
            inputs, weight, bias, mean, var, use_batch, eps, chosen
        )
    else:
        y, batch_mean, batch_var = _EagerFused.apply(weight, bias, mean, var, use_batch, eps, chosen, *inputs)
    if training and tracked:
        _update_running(running_means, running_vars, batch_mean, batch_var, momenta, elements)
    return y


@torch.no_grad()
def _update_running(
    running_means: Sequence[Tensor],
    running_vars: Sequence[Tensor],
    batch_mean: Tensor,
    batch_var: Tensor,
    momenta: list[float],
    elements: int,
) -> None:
    """running = (1 − m)·running + m·batch, with the unbiased batch variance (as nn.BatchNorm2d)."""
    unbiased = batch_var * (elements / (elements - 1))
    same = all(m == momenta[0] for m in momenta) and all(
        r.dtype == batch_mean.dtype for r in (*running_means, *running_vars)
    )
    if same:  # one foreach call per step instead of one op per branch
        m = momenta[0]
        torch._foreach_mul_([*running_means, *running_vars], 1 - m)
        torch._foreach_add_(
            [*running_means, *running_vars], [*batch_mean.unbind(0), *unbiased.unbind(0)], alpha=m
        )
        return
    for i, m in enumerate(momenta):
        running_means[i].mul_(1 - m).add_(batch_mean[i].to(running_means[i].dtype), alpha=m)
        running_vars[i].mul_(1 - m).add_(unbiased[i].to(running_vars[i].dtype), alpha=m)


def _counted_momenta(norms: list[nn.modules.batchnorm._BatchNorm]) -> list[float]:
    """Advances each module's ``num_batches_tracked`` by one, as its training forward does, and returns the
    running-statistic factor that forward would use (``momentum=None``: the cumulative average
    1/num_batches_tracked)."""
    momenta = []
    for n in norms:
        counter = n.num_batches_tracked
        if counter is not None:
            counter.add_(1)
        if n.momentum is not None:
            momenta.append(n.momentum)
        else:
            momenta.append(1.0 / float(counter) if counter is not None else 0.0)
    return momenta


# What rep_bn_add_silu_over reads from each batch norm, in its order.
_NORM_MEMBERS = ("running_mean", "running_var", "num_batches_tracked", "weight", "bias")


def rep_bn_add_silu_over(
    inputs: Sequence[Tensor], norms: Sequence[nn.modules.batchnorm._BatchNorm], backend: str | None = None
) -> Tensor:
    """`rep_bn_add_silu` with the parameters and statistics of batch-norm modules, one per branch: what
    ``F.silu(sum(norm(x) for norm, x in zip(norms, inputs)))`` computes, in the modules' (shared) training
    mode, with each module's momentum and ``num_batches_tracked`` counted as its forward counts them.
    `torch.nn.SyncBatchNorm` in training mode runs as the modules themselves (logged once): its
    statistics are the whole process group's."""
    norms = list(norms)
    if len(norms) != len(inputs) or not norms:
        raise ValueError(
            f"rep_bn_add_silu_over: one batch norm per input, got {len(inputs)} inputs, {len(norms)} norms"
        )
    # One pass over the modules, reading registered parameters and buffers from their tables: this runs in
    # every RepVGG block, where on the 15² maps the Python around the kernels costs as much as they do, and
    # nn.Module.__getattr__ is a Python call per attribute.
    training, eps = norms[0].training, norms[0].eps
    running_means, running_vars, weights, biases, counters, momenta, tracking = [], [], [], [], [], [], []
    agree, sync, counted = True, False, True  # counted: every module has a momentum and a counter
    for n in norms:
        parameters, buffers = n._parameters, n._buffers
        try:
            mean, var = buffers["running_mean"], buffers["running_var"]
            counter, weight, bias = buffers["num_batches_tracked"], parameters["weight"], parameters["bias"]
        except KeyError:  # a module that keeps some of them as plain attributes
            mean, var, counter, weight, bias = (getattr(n, name) for name in _NORM_MEMBERS)
        momentum = n.momentum
        running_means.append(mean)
        running_vars.append(var)
        counters.append(counter)
        weights.append(weight)
        biases.append(bias)
        momenta.append(momentum if momentum is None else float(momentum))
        tracking.append(mean is not None and var is not None)
        agree = agree and n.training == training and n.eps == eps
        sync = sync or isinstance(n, nn.SyncBatchNorm)
        counted = counted and momentum is not None and counter is not None
    if sync and any(n.training for n in norms):
        # Its batch statistics span the process group; the kernels would see this process's batch only.
        _log_once(
            "rep_bn_add_silu_over: SyncBatchNorm in training mode runs as its own modules (its statistics "
            "span the process group, the fused kernels see one process's batch)"
        )
        return F.silu(sum(norm(x) for norm, x in zip(norms, inputs, strict=True)))
    tracked = tracking[0]
    if not agree or tracking.count(tracked) != len(tracking):
        shared = {
            "eps": [n.eps for n in norms],
            "training": [n.training for n in norms],
            "running statistics": tracking,
        }
        for name, values in shared.items():
            if len(set(values)) > 1:
                raise ValueError(f"rep_bn_add_silu_over: the batch norms must share {name}, got {values}")
    inputs = _checked_branches(inputs)
    if not (training and tracked):
        momenta, counters = [0.0 if m is None else m for m in momenta], []
    elif not counted:
        momenta, counters = _counted_momenta(norms), []  # the cumulative average needs the advanced counts
    return _fused(
        inputs,
        running_means if tracked else None,
        running_vars if tracked else None,
        weights,
        biases,
        training,
        momenta,
        eps,
        backend,
        counters,
    )
