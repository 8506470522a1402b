"""How a model is made: corpus, data pipeline, losses, trainer, checkpoints, configs."""
