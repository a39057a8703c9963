"""Registers a fused gate as a pair of `torch.library` operators with autograd.

For a gate ``provg::<name>(inputs..., str backend) -> Tensor`` this defines the forward operator and
``provg::<name>_grad(Tensor grad, inputs..., str backend) -> (grads...)``, gives both fake (meta)
kernels so `torch.compile(fullgraph=True)` traces through them, and wires the backward operator as
the forward's autograd formula. The ``backend`` argument picks the kernels ("cpp", "cuda", "triton");
the PyTorch reference never goes through these operators.

Outside `torch.compile` and `torch.export` a call skips the operator layer. The C++ and CUDA kernels
go through ``provg::<name>_eager``, whose autograd node is C++ (csrc/gate_autograd.cpp); the Triton
kernels through a `torch.autograd.Function` with the same backward. The Python operator's dispatch and
autograd layer cost more host time than a gate's kernels at the model's small stages, and on a GPU at
batch 8 host time is most of a call. Compilers and exporters keep the operators, whose fake kernels
they trace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._gate_api import differentiable_once

__all__ = ["FusedGate"]

_ARG = re.compile(r"\s*(Tensor|int|float)\s+(\w+)\s*")


class FusedGate:
    """A gate operator with kernels per backend.

    Args:
        name: operator name in the ``provg`` namespace.
        schema: the inputs, e.g. ``"Tensor x, Tensor k, Tensor v, Tensor key_mask, Tensor w_q"``.
        differentiable: names of the inputs that receive gradients, in the backward's output order.
        forward: ``forward(backend, *inputs) -> Tensor``.
        backward: ``backward(backend, grad, *inputs) -> tuple of gradients`` (``differentiable`` order).
    """

    def __init__(
        self,
        name: str,
        schema: str,
        differentiable: Sequence[str],
        forward: Callable[..., Tensor],
        backward: Callable[..., tuple[Tensor, ...]],
    ) -> None:
        arguments = [_ARG.fullmatch(part).groups() for part in schema.split(",")]
        self.names = [n for _, n in arguments]
        self.differentiable = list(differentiable)
        outputs = ", ".join(f"Tensor d{n}" for n in differentiable)
        qualified = f"provg::{name}"
        torch.library.define(qualified, f"({schema}, str backend) -> Tensor")
        torch.library.define(f"{qualified}_grad", f"(Tensor grad, {schema}, str backend) -> ({outputs})")
        self.op = getattr(torch.ops.provg, name).default
        self.backward_op = getattr(torch.ops.provg, f"{name}_grad").default

        @torch.library.impl(qualified, "default")
        def _forward(*args):
            *inputs, backend = args
            return forward(backend, *inputs)

        @torch.library.impl(f"{qualified}_grad", "default")
        def _backward(grad, *args):
            *inputs, backend = args
            return tuple(backward(backend, grad, *inputs))

        @torch.library.register_fake(qualified)
        def _forward_fake(*args):
            x = args[0]
            return x.new_empty(x.shape)

        @torch.library.register_fake(f"{qualified}_grad")
        def _backward_fake(grad, *args):
            by_name = dict(zip(self.names, args))
            return tuple(by_name[n].new_empty(by_name[n].shape) for n in self.differentiable)

        def setup_context(ctx, inputs, output):
            *tensors, backend = inputs
            _save_inputs(ctx, tensors, backend)

        def autograd_backward(ctx, grad):
            computed = differentiable_once(name, self.backward_op(grad, *_saved_inputs(ctx), ctx.backend))
            return (*_per_input(self.names, self.differentiable, computed), None)

        torch.library.register_autograd(qualified, autograd_backward, setup_context=setup_context)
        self.eager = _eager_function(name, self.names, self.differentiable, forward, backward)
        self.name = name
        self._native = None  # provg::<name>_eager, looked up once the extension is loaded

    def __call__(self, *inputs, backend: str) -> Tensor:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self.op(*inputs, backend)
        if backend == "triton":
            return self.eager.apply(backend, *inputs)
        if self._native is None:  # cpp or cuda: the extension with these kernels defines the entry point
            self._native = getattr(torch.ops.provg, f"{self.name}_eager").default
        return self._native(*inputs)


def _save_inputs(ctx, inputs: Sequence, backend: str) -> None:
    """Keep a call's inputs for its backward: tensors through ``save_for_backward``, the rest as they are."""
    ctx.backend = backend
    ctx.save_for_backward(*[t for t in inputs if isinstance(t, Tensor)])
    ctx.others = [None if isinstance(t, Tensor) else t for t in inputs]


def _saved_inputs(ctx) -> list:
    """The inputs `_save_inputs` kept, in call order."""
    saved = iter(ctx.saved_tensors)
    return [next(saved) if other is None else other for other in ctx.others]


def _per_input(names: Sequence[str], differentiable: Sequence[str], computed: Sequence) -> list:
    """The backward's gradients (``differentiable`` order) placed at their inputs; None elsewhere."""
    grads = dict(zip(differentiable, computed))
    return [grads.get(n) for n in names]


def _eager_function(
    name: str,
    names: Sequence[str],
    differentiable: Sequence[str],
    forward: Callable[..., Tensor],
    backward: Callable[..., tuple[Tensor, ...]],
) -> type[torch.autograd.Function]:
    """The gate as a `torch.autograd.Function` over its kernels, for eager calls."""

    class Gate(torch.autograd.Function):
        @staticmethod
        def forward(ctx, backend: str, *inputs):
            _save_inputs(ctx, inputs, backend)
            return forward(backend, *inputs)

        @staticmethod
        def backward(ctx, grad):
            computed = differentiable_once(name, backward(ctx.backend, grad, *_saved_inputs(ctx)))
            return (None, *_per_input(names, differentiable, computed))

    Gate.__name__ = Gate.__qualname__ = f"{name}_eager"
    return Gate
