"""YAML configurations of provg, installed as the package ``provg.configs``.

`path(name)` returns the file of a named configuration, in the source tree and when installed.
"""

from importlib.resources import files
from pathlib import Path

__all__ = ["names", "path"]


def names() -> list[str]:
    """Names of the bundled configurations (file stems)."""
    return sorted(p.name.removesuffix(".yaml") for p in files(__name__).iterdir() if p.name.endswith(".yaml"))


def path(name: str) -> Path:
    """The YAML file of configuration ``name`` (e.g. ``"synthrs_tiny"``)."""
    candidate = files(__name__) / f"{name}.yaml"
    if not candidate.is_file():
        raise FileNotFoundError(f"no bundled configuration {name!r}; available: {', '.join(names())}")
    return Path(str(candidate))
