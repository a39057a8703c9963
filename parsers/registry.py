"""Registry of expression-parsing strategies, selected by name (``get_parser("naive")``)."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import TypeVar

from .types import Decomposition

__all__ = ["ExpressionParser", "get_parser", "list_parsers", "register_parser"]


class ExpressionParser(ABC):
    """A strategy that decomposes referring expressions into spatial and attribute cues.

    Subclasses implement `_parse`; `parse` and `parse_batch` validate the input type.
    """

    name: str = ""

    def parse(self, text: str) -> Decomposition:
        """Decompose one expression."""
        if not isinstance(text, str):
            raise TypeError(f"{type(self).__name__}.parse expects str, got {type(text).__name__}: {text!r}")
        return self._parse(text)

    def parse_batch(self, texts: Iterable[str]) -> list[Decomposition]:
        """Decompose many expressions; strategies with a faster batch path override `_parse_batch`."""
        if isinstance(texts, str):
            raise TypeError("parse_batch expects an iterable of str, got a single str; use parse(text)")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"{type(self).__name__}.parse_batch expects str items; item {index} is "
                    f"{type(text).__name__}: {text!r}"
                )
        return self._parse_batch(texts)

    @abstractmethod
    def _parse(self, text: str) -> Decomposition: ...

    def _parse_batch(self, texts: list[str]) -> list[Decomposition]:
        return [self._parse(text) for text in texts]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: dict[str, Callable[..., ExpressionParser]] = {}
# Built-in strategies whose modules import heavy libraries (nltk, spacy) load on first use.
_BUILTIN_MODULES = {"naive": "naive", "nltk": "nltk_parser", "spacy": "spacy_parser"}
P = TypeVar("P", bound=type)


def register_parser(name: str) -> Callable[[P], P]:
    """Class decorator that makes a strategy available to `get_parser` under ``name``."""

    def decorate(cls: P) -> P:
        if name in _REGISTRY:
            raise ValueError(f"parser {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_parsers() -> list[str]:
    """Names accepted by `get_parser`, sorted."""
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def get_parser(name: str, **options) -> ExpressionParser:
    """Instantiate the strategy registered as ``name`` with its keyword ``options``."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{_BUILTIN_MODULES[name]}")
    if name not in _REGISTRY:
        raise KeyError(f"unknown parser {name!r}; available: {', '.join(list_parsers())}")
    return _REGISTRY[name](**options)
