"""Loads the compiled operators (``provg._C``) once and says what they hold.

Importing ``provg._C`` registers ``torch.ops.provg.*`` kernels for CPU (and CUDA when compiled with it).
provg runs without it: every op has a PyTorch reference, and `provg.ops.available_backends()` reports
what this install has.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

__all__ = ["extension", "extension_error", "has_cpp", "has_cuda_kernels"]


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        module = importlib.import_module("provg._C")
    except ImportError as error:  # not built, or built against another torch
        return None, f"{type(error).__name__}: {error}"
    return module, ""


def extension() -> ModuleType | None:
    """The loaded ``provg._C`` module, or None when it is not built."""
    return _load()[0]


def extension_error() -> str:
    """Why ``provg._C`` could not be imported ('' when it was)."""
    return _load()[1]


def has_cpp() -> bool:
    """True when the C++ CPU kernels are registered."""
    return extension() is not None


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA sources."""
    module = extension()
    return module is not None and bool(getattr(module, "WITH_CUDA", 0))
