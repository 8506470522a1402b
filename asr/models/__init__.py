"""Flax Linen modules of the transducer: encoder, predictor, joiner, and their configs."""

from asr.models.config import CONFIGS, ModelConfig, get_config
from asr.models.transducer import Transducer, build_model

__all__ = ["CONFIGS", "ModelConfig", "Transducer", "build_model", "get_config"]
