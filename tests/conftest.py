"""Shared fixtures: a tiny unified model built in code, and prompts for it."""

from __future__ import annotations

import importlib.metadata
import os

# Tests build every model, tokenizer and dataset in code. Offline mode makes any Hub call fail
# loudly (a download) or stay home (TRL's start-of-training telemetry) instead of reaching out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from clear_rl.models import build_tiny_model  # noqa: E402
from clear_rl.models.processing import prompt_texts, vae_pixel_values  # noqa: E402


def pytest_report_header(config) -> str:
    """The versions the suite runs on: the lock's under make test, the newest under make test-latest."""
    names = ("torch", "transformers", "trl", "peft", "diffusers", "accelerate", "datasets")
    return "versions: " + ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the tiny composed model, eval mode, seed 0. Do not modify in place."""
    model, processor = build_tiny_model(seed=0)
    return model.eval(), processor


@pytest.fixture
def fresh_tiny():
    """A private tiny model a test may modify."""
    model, processor = build_tiny_model(seed=0)
    return model.eval(), processor


def make_images(n: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)) for _ in range(n)]


def make_prompts(processor, questions: list[str], seed: int = 0, size: int = 64):
    """A left-padded prompt batch (input_ids, attention_mask, pixel_values) and its VAE inputs."""
    images = make_images(len(questions), size=size, seed=seed)
    batch = processor(
        images=images, text=prompt_texts(processor, questions), return_tensors="pt", padding=True
    )
    return batch, vae_pixel_values(images, size)
