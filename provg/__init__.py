"""provg — ProVG remote-sensing visual grounding: boxes (RSREC) and masks (RSRES) from expressions.

The top-level names load lazily, so ``import provg.parsers`` stays free of torch::

    import provg
    model = provg.create_model("provg_tiny")
    out = model(images, ["the small white vehicle on the upper left"])
    out.boxes, out.mask_logits
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "provg.models",
    "list_models": "provg.models",
    "register_model": "provg.models",
    "reparameterize": "provg.models",
    "ProVG": "provg.models",
    "ProVGConfig": "provg.models",
}
_SUBMODULES = {"data", "engine", "losses", "metrics", "models", "ops", "parsers", "text", "configs"}

__all__ = ["__version__", *sorted(_LAZY), *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"provg.{name}")
    else:
        raise AttributeError(f"module 'provg' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
