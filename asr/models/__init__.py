"""Flax Linen modules of the transducer: encoder, predictor, joiner, biasing, and their configs."""

from asr.models.biasing import ContextBiasing, context_arrays
from asr.models.config import CONFIGS, ModelConfig, get_config
from asr.models.transducer import Transducer, build_model

__all__ = [
    "CONFIGS",
    "ContextBiasing",
    "ModelConfig",
    "Transducer",
    "build_model",
    "context_arrays",
    "get_config",
]
