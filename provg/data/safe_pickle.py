"""Loading untrusted pickles (REFER's ``refs(unc).p``) without executing code.

The unpickler admits only what pickle encodes natively — dict, list, tuple, str, bytes, int, float,
bool, None — and refuses every global (class or function) reference, so a crafted file cannot run
code. Errors name the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "load_plain_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global (class or callable), which plain data never needs."""


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self._source}: refusing to load {module}.{name}; this file should hold only plain "
            "containers and scalars (convert it to JSON with `provg` if it came from a trusted source)"
        )


def load_plain_pickle(path: str | Path) -> Any:
    """Load a pickle of plain containers and scalars; raise `UnsafePickleError` on anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"pickle file not found: {path}") from None
    try:
        return _PlainDataUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, IndexError, KeyError) as error:
        raise ValueError(f"{path}: truncated or corrupt pickle ({type(error).__name__}: {error})") from error
