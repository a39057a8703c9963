"""Expression decomposition for ProVG: split a referring expression into spatial and attribute cues.

Installed as ``provg.parsers`` (the source folder is ``parsers/``); it imports neither torch nor the
rest of provg. Strategies, chosen by name with `get_parser`:

- ``naive``: attributes before the first spatial preposition, spatial cues after it;
- ``nltk``: lexicon tagging and a chunk grammar, no downloaded NLTK data (`parsers.nltk_parser`);
- ``spacy``: dependency parse with en_core_web_sm (`parsers.spacy_parser`).

::

    from provg.parsers import get_parser
    get_parser("spacy").parse("The small white vehicle on the upper left")

`parsers.scoring` scores decompositions against gold ones (token-level P/R/F1 per cue type).
"""

from .registry import ExpressionParser, get_parser, list_parsers, register_parser
from .types import Cue, Decomposition

__all__ = ["Cue", "Decomposition", "ExpressionParser", "get_parser", "list_parsers", "register_parser"]
