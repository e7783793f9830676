"""clear-rl: RL post-training of unified multimodal models on degraded images (CLEAR), on TRL."""

from clear_rl.models.notices import hold_4bit_notices

__version__ = "0.1.0"

hold_4bit_notices()  # before anything imports bitsandbytes: see clear_rl/models/notices.py
