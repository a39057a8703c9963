"""synthrs: a generated, deterministic remote-sensing grounding benchmark in the RRSIS-D format.

Scenes of DIOR-category objects (distinct shapes, textures, colours and sizes) on aerial-looking
ground, with RRSIS-D-style expressions whose target shares its category with 1–2 distractors, so
spatial and attribute cues are needed. Every sample carries its gold decomposition.
"""

from .dataset import SynthRS
from .generate import DEFAULT_SIZES, generate

__all__ = ["DEFAULT_SIZES", "SynthRS", "generate"]
