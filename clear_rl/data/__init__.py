"""Data: VQA sources, prompts, the prepared samples and `prepare`, collators, image sources for alignment."""
