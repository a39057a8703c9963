"""Training, evaluation, baselines and the demo."""

from .config import TrainConfig, load_config
from .evaluate import evaluate
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "load_config", "train"]
