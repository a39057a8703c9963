"""provg's operators: the PCM gates, the RepVGG block's fused tail and deploy convolution, and
mask-to-box, each a PyTorch reference with optional fast backends.

`available_backends()` reports which backends this install has; ``PROVG_BACKEND`` or an op's
``backend`` argument forces one.
"""

from ._backend import BACKENDS, available_backends
from .conv3x3_bias_silu import conv3x3_bias_silu
from .locate_gate import locate_gate
from .mask_to_box import mask_to_box, mask_to_box_reference, soft_mask_to_box
from .masked_softmax import masked_softmax
from .rep_bn_add_silu import rep_bn_add_silu, rep_bn_add_silu_over
from .survey_gate import survey_gate
from .verify_gate import verify_gate

__all__ = [
    "BACKENDS",
    "available_backends",
    "conv3x3_bias_silu",
    "locate_gate",
    "mask_to_box",
    "mask_to_box_reference",
    "masked_softmax",
    "rep_bn_add_silu",
    "rep_bn_add_silu_over",
    "soft_mask_to_box",
    "survey_gate",
    "verify_gate",
]
