"""Expression decomposition for ProVG: split a referring expression into spatial and attribute cues.

Installed as ``provg.parsers`` (the source folder is ``parsers/``); it imports neither torch nor the
rest of provg, so it is cheap to import on its own::

    from provg.parsers import get_parser
    get_parser("naive").parse("The small white vehicle on the upper left")
"""

from . import naive as _naive  # noqa: F401  (registers the strategy)
from .registry import ExpressionParser, get_parser, list_parsers, register_parser
from .types import Cue, Decomposition

__all__ = ["Cue", "Decomposition", "ExpressionParser", "get_parser", "list_parsers", "register_parser"]
