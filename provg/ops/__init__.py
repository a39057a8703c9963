"""provg's operators: the PCM gates and mask-to-box, each a PyTorch reference with optional fast backends.

`available_backends()` reports which backends this install has; ``PROVG_BACKEND`` or an op's
``backend`` argument forces one.
"""

from ._backend import BACKENDS, available_backends
from .locate_gate import locate_gate
from .mask_to_box import mask_to_box, mask_to_box_reference, soft_mask_to_box
from .masked_softmax import masked_softmax
from .survey_gate import survey_gate
from .verify_gate import verify_gate

__all__ = [
    "BACKENDS",
    "available_backends",
    "locate_gate",
    "mask_to_box",
    "mask_to_box_reference",
    "masked_softmax",
    "soft_mask_to_box",
    "survey_gate",
    "verify_gate",
]
