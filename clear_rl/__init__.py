"""clear-rl: RL post-training of unified multimodal models on degraded images (CLEAR), on TRL."""

__version__ = "0.1.0"
