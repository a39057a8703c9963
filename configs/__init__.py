"""YAML configurations of provg, installed as the package ``provg.configs``.

`path(name)` returns the file of a named configuration, in the source tree and when installed: the paper
settings by stem (``"provg_swin_b_rrsisd"``), the ablations of Tables 1, 4 and 5 under ``ablations/``
(``"ablations/table1_pcm_global"``).
"""

from importlib.resources import files
from pathlib import Path

__all__ = ["names", "path"]


def names() -> list[str]:
    """Names of the bundled configurations (paths without ``.yaml``, relative to this package)."""
    root = files(__name__)
    found = [p.name for p in root.iterdir() if p.name.endswith(".yaml")]
    ablations = root / "ablations"
    if ablations.is_dir():
        found += [f"ablations/{p.name}" for p in ablations.iterdir() if p.name.endswith(".yaml")]
    return sorted(name.removesuffix(".yaml") for name in found)


def path(name: str) -> Path:
    """The YAML file of configuration ``name`` (e.g. ``"synthrs_tiny"``, ``"ablations/table4_no_cfm"``)."""
    candidate = files(__name__).joinpath(*f"{name}.yaml".split("/"))
    if not candidate.is_file():
        raise FileNotFoundError(f"no bundled configuration {name!r}; available: {', '.join(names())}")
    return Path(str(candidate))
