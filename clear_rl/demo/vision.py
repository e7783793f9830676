"""Stage 0 for the vision tower of the demo's tiny model: a short supervised warm-up.

A real backbone's vision tower comes pretrained; the tiny one is random, and a VLM learning to
see from scratch through its LLM spends hundreds of steps before answers depend on the image at
all. So the demo first trains the vision tower and the connector alone to recognise what a
ShapesVQA scene holds (its objects' colours and shapes, how many there are), from ShapesVQA's
scene metadata, through a pooled linear probe that is then thrown away. No library trainer fits a
probe objective on a VLM's vision tower, hence this short loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from clear_rl.demo.shapes_vqa import ShapesVQAConfig
from clear_rl.models.composed import ComposedUnifiedModel


def scene_targets(records: Sequence[dict], config: ShapesVQAConfig) -> torch.Tensor:
    """Multi-hot targets per record: colours present, shapes present, number of objects."""
    colors, shapes = list(config.colors), list(config.shapes)
    width = len(colors) + len(shapes) + config.max_shapes
    targets = torch.zeros(len(records), width)
    for row, record in enumerate(records):
        objects = json.loads(record["meta"])["objects"]
        for obj in objects:
            targets[row, colors.index(obj["color"])] = 1
            targets[row, len(colors) + shapes.index(obj["shape"])] = 1
        targets[row, len(colors) + len(shapes) + len(objects) - 1] = 1
    return targets


def _scene_loss(
    features: torch.Tensor, probe: torch.nn.Linear, targets: torch.Tensor, max_shapes: int
) -> torch.Tensor:
    """Objects are local: max-pool the tokens for colours and shapes present, mean-pool for the count."""
    presence = probe(features).amax(1)
    counted = probe(features.mean(1))
    split = targets.shape[1] - max_shapes
    loss = torch.nn.functional.binary_cross_entropy_with_logits(presence[:, :split], targets[:, :split])
    return loss + torch.nn.functional.cross_entropy(counted[:, split:], targets[:, split:].argmax(1))


def _train_scene_probe(
    encode, parameters: list, width: int, inputs: torch.Tensor, targets: torch.Tensor, max_shapes: int,
    steps: int, desc: str, batch_size: int, learning_rate: float, seed: int,
) -> list[float]:  # fmt: skip
    """Train `encode` (inputs -> (B, tokens, width) features) through a throwaway linear probe."""
    probe = torch.nn.Linear(width, targets.shape[1])
    parameters = [*parameters, *probe.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc=desc, unit="step"):
        rows = torch.randint(len(inputs), (batch_size,), generator=generator)
        loss = _scene_loss(encode(inputs[rows]), probe, targets[rows], max_shapes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def warm_up_vision(
    model: ComposedUnifiedModel,
    processor,
    records: Sequence[dict],
    config: ShapesVQAConfig,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train the vision tower and connector on scene recognition; returns the loss curve."""
    vlm = model.vlm.model
    tower, connector = vlm.vision_tower, vlm.multi_modal_projector
    pixels = processor.image_processor([r["image"] for r in records], return_tensors="pt").pixel_values
    layer = model.config.vlm_config.vision_feature_layer
    first = 1 if model.config.vlm_config.vision_feature_select_strategy == "default" else 0  # CLS dropped

    def encode(batch: torch.Tensor) -> torch.Tensor:
        return connector(tower(batch, output_hidden_states=True).hidden_states[layer][:, first:])

    return _train_scene_probe(
        encode, [*tower.parameters(), *connector.parameters()], model.config.get_text_config().hidden_size,
        pixels, scene_targets(records, config), config.max_shapes,
        steps, "stage 0: vision", batch_size, learning_rate, seed,
    )  # fmt: skip
