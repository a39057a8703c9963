"""ProVG model modules (PCM, CFM, LCD, heads), the model, and the registry of named configurations."""

from .config import ProVGConfig
from .provg import GroundingOutput, ProVG, boxes_to_xyxy
from .registry import create_model, list_models, model_config, register_model
from .repvgg import RepVGGBlock, reparameterize

__all__ = [
    "GroundingOutput",
    "ProVG",
    "ProVGConfig",
    "RepVGGBlock",
    "boxes_to_xyxy",
    "create_model",
    "list_models",
    "model_config",
    "register_model",
    "reparameterize",
]
