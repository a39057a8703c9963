"""Backend selection for provg's operators: automatic by device and availability, or forced.

A call's ``backend`` argument forces one backend for that call; the ``PROVG_BACKEND`` environment
variable forces one for every op that implements it. A forced backend that cannot run raises with the
reason; an automatic choice that falls back to the PyTorch reference is logged once per op and reason.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from ._extension import extension_error, has_cpp, has_cuda_kernels

__all__ = ["BACKENDS", "available_backends", "select_backend"]

BACKENDS = ("torch", "cpp", "triton", "cuda")
ENV_VAR = "PROVG_BACKEND"
logger = logging.getLogger("provg.ops")


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends() -> dict[str, bool]:
    """Which backends this install can run somewhere (device permitting)."""
    return {
        "torch": True,
        "cpp": has_cpp(),
        "triton": _triton_importable() and (torch.cuda.is_available() or _triton_interpreted()),
        "cuda": has_cuda_kernels() and torch.cuda.is_available(),
    }


def _why_unusable(backend: str, device_type: str) -> str:
    """'' when ``backend`` can run on a ``device_type`` tensor, else the reason and the fix."""
    if backend == "torch":
        return ""
    if backend == "cpp":
        if device_type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a {device_type} tensor"
        if not has_cpp():
            return (
                "provg._C is not built (" + extension_error() + "); build it with "
                "`pip install --no-build-isolation -e .`"
            )
        return ""
    if backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device_type} tensor"
        if not has_cuda_kernels():
            return "provg._C was not compiled with CUDA; rebuild with FORCE_CUDA=1 and CUDA_HOME set"
        return ""
    if backend == "triton":
        if not _triton_importable():
            return "triton is not installed"
        if device_type == "cuda" or (device_type == "cpu" and _triton_interpreted()):
            return ""
        return f"triton runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device_type}"
    raise AssertionError(backend)


def _why_not(
    backend: str,
    device_type: str,
    dtype: torch.dtype | None,
    dtypes: dict[str, tuple[torch.dtype, ...]] | None,
) -> str:
    """'' when ``backend`` can run ``dtype`` tensors on ``device_type``, else the reason and the fix."""
    reason = _why_unusable(backend, device_type)
    if not reason and dtypes and dtype is not None and backend in dtypes and dtype not in dtypes[backend]:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes[backend])
        reason = f"the {backend} backend supports {names}, got {str(dtype).removeprefix('torch.')}"
    return reason


@functools.cache
def _log_once(message: str) -> None:
    logger.warning(message)


# NOTE: under torch.compile the choice is made once, while tracing, and baked into the graph.
@torch.compiler.assume_constant_result
def select_backend(
    op: str,
    device: torch.device,
    implemented: tuple[str, ...],
    preference: dict[str, tuple[str, ...]],
    requested: str | None = None,
    dtype: torch.dtype | None = None,
    dtypes: dict[str, tuple[torch.dtype, ...]] | None = None,
) -> str:
    """Choose the backend that runs ``op`` on ``device``.

    Args:
        op: the op's name, for messages.
        device: where the inputs live.
        implemented: backends this op has ("torch" is always among them).
        preference: device type -> backends to try in order before falling back to "torch".
        requested: the call's ``backend`` argument (None: the environment variable, else automatic).
        dtype, dtypes: the inputs' dtype and, per backend, the dtypes it supports (all when absent).
    """
    # NOTE: every fused op's call runs this (several per RepVGG block), so the common path, automatic with
    # no environment override, reads the device type once and defines no closure.
    device_type = device.type
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"{op}: unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
        if requested not in implemented:
            raise ValueError(f"{op} has no {requested!r} backend; it implements {', '.join(implemented)}")
        reason = _why_not(requested, device_type, dtype, dtypes)
        if reason:
            raise RuntimeError(f"{op}: backend {requested!r} was requested but cannot run: {reason}")
        return requested
    forced = os.environ.get(ENV_VAR)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={forced!r} is not a backend; choose one of {', '.join(BACKENDS)}")
        if forced in implemented:
            reason = _why_not(forced, device_type, dtype, dtypes)
            if reason:
                raise RuntimeError(f"{op}: {ENV_VAR}={forced} cannot run: {reason}")
            return forced
        _log_once(f"{op} has no {forced!r} backend ({ENV_VAR}={forced}); choosing automatically")
    reasons = []
    for backend in preference.get(device_type, ()):
        if backend not in implemented:
            continue
        reason = _why_not(backend, device_type, dtype, dtypes)
        if not reason:
            return backend
        reasons.append(f"{backend}: {reason}")
    if reasons:
        _log_once(f"{op}: falling back to the torch reference on {device_type} ({'; '.join(reasons)})")
    return "torch"
