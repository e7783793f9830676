"""Prepared-dataset rows for trainer tests, built without the corruption engine (noise added by hand)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clear_rl.data.samples import PREPARED_COLUMNS, build_target, prepared_features
from clear_rl.io.images import png_bytes
from clear_rl.models import TinyModelConfig
from tests.conftest import make_images

OPTIONS = {"A": "red", "B": "blue", "C": "green", "D": "cyan"}
# A smaller tiny model: 16 ViT tokens, 16 restored tokens, 2 LLM layers; a training step in ~0.1 s.
SMALL = TinyModelConfig(
    image_size=32,
    vit_hidden_size=32,
    vit_layers=1,
    vit_patch_size=8,
    llm_hidden_size=64,
    llm_layers=2,
    llm_heads=2,
    llm_kv_heads=1,
    vae_channels=(16, 16, 16),
    head_layers=1,
    head_heads=2,
    head_head_dim=16,
    num_inference_steps=2,
)


def short_target(label: str, answer: str) -> str:
    """A short protocol target (the template ones are long for a tiny tokenizer)."""
    if label == "restore":
        return f"<think>noisy</think><image_restore><think>ok</think><answer>{answer}</answer>"
    return f"<think>clear</think><answer>{answer}</answer>"


def prepared_rows(n: int, size: int = 32, seed: int = 0, templates: bool = False) -> list[dict]:
    """`n` rows of the prepared schema, alternating restore / direct, PIL images."""
    clean = make_images(n, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for i, image in enumerate(clean):
        noisy = np.clip(np.asarray(image, dtype=float) + rng.normal(0, 60, (size, size, 3)), 0, 255)
        label = "restore" if i % 2 == 0 else "direct"
        answer = "ABCD"[i % 4]
        target = build_target(label, "gaussian_noise", "high", answer, OPTIONS) if templates else None
        rows.append(
            {
                "index": str(i),
                "image": Image.fromarray(noisy.astype(np.uint8)),
                "clean_image": image,
                "question": f"What color is shape {i}?",
                "answer": answer,
                **OPTIONS,
                "corruption": "gaussian_noise",
                "severity": "high" if label == "restore" else "low",
                "intensity": 0.9 if label == "restore" else 0.23,
                "seed": i,
                "label": label,
                "target": target or short_target(label, answer),
            }
        )
    return rows


def prepared_dataset(n: int, size: int = 32, seed: int = 0, templates: bool = False):
    """The rows as a `datasets.Dataset` with the exact prepared features."""
    import datasets

    rows = prepared_rows(n, size, seed, templates)
    columns = {c: [r[c] for r in rows] for c in PREPARED_COLUMNS}
    for key in ("image", "clean_image"):
        columns[key] = [{"bytes": png_bytes(im), "path": None} for im in columns[key]]
    return datasets.Dataset.from_dict(columns, features=prepared_features())
