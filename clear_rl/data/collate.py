"""Prepared rows -> teacher-forced model batches for stages 1 and 2.

A row's sequence is its chat prompt (system prompt, the DEGRADED image, the question with its
options) followed by the target, whose `<image_restore>` is followed by the model's number of
`<|restored_pad|>` placeholders, and EOS. Sequences are right-padded. Labels are -100 on the
prompt, on the placeholders (they carry the restored latent, the model never writes them) and on
padding. The batch also carries what the losses need beside the VLM inputs: the VAE views of the
degraded and the clean image, the clean image's own prompt batch (the distill teacher), and a
per-row restore flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clear_rl.data.prompts import format_question, row_options
from clear_rl.errors import DataError
from clear_rl.models.backbone import TrainableBackbone
from clear_rl.models.processing import encode_prompts, vae_pixel_values
from clear_rl.models.tokens import SYSTEM_PROMPT

IGNORE_INDEX = -100
CLEAN_PREFIX = "clean_"  # the teacher's prompt batch: clean_input_ids, clean_pixel_values, ...
# Batch keys that are not inputs of the VLM itself.
LOSS_KEYS = ("labels", "restore", "vae_pixel_values", "clean_vae_pixel_values")


def _split_batch(batch: Mapping[str, Any]) -> tuple[list[torch.Tensor], dict[str, list], dict[str, Any]]:
    """Per-row unpadded prompt ids, per-row unpadded per-token extras, and the image inputs."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    rows = [ids[i][mask[i]] for i in range(ids.shape[0])]
    per_token, images = {}, {}
    for key, value in batch.items():
        if key in ("input_ids", "attention_mask"):
            continue
        if torch.is_tensor(value) and value.shape == ids.shape:  # e.g. token_type_ids
            per_token[key] = [value[i][mask[i]] for i in range(ids.shape[0])]
        else:
            images[key] = value
    return rows, per_token, images


def _right_pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


@dataclass
class ClearCollator:
    """Builds training batches; use `ClearCollator.for_model(model, processor, system_prompt)`."""

    processor: Any
    num_restored_tokens: int
    vae_image_size: int
    image_restore_id: int
    restored_pad_id: int
    system_prompt: str | None = SYSTEM_PROMPT
    # True (stage 2): labels only on the text after the restored slot; rows without one get none.
    labels_after_slot: bool = False

    @classmethod
    def for_model(
        cls,
        model: TrainableBackbone,
        processor,
        system_prompt: str | None = SYSTEM_PROMPT,
        labels_after_slot: bool = False,
    ) -> ClearCollator:
        ids = model.token_ids
        return cls(
            processor=processor,
            num_restored_tokens=model.num_restored_tokens,
            vae_image_size=model.config.vae_image_size,
            image_restore_id=ids.image_restore,
            restored_pad_id=ids.restored_pad,
            system_prompt=system_prompt,
            labels_after_slot=labels_after_slot,
        )

    def completion_labels(self, ids: torch.Tensor) -> torch.Tensor:
        """Labels of a completion: the ids, -100 on placeholders (and before them, if after-slot only)."""
        is_pad = ids == self.restored_pad_id
        if not self.labels_after_slot:
            return ids.masked_fill(is_pad, IGNORE_INDEX)
        if not bool(is_pad.any()):
            return torch.full_like(ids, IGNORE_INDEX)
        last = int(is_pad.nonzero().max())
        return torch.cat([torch.full_like(ids[: last + 1], IGNORE_INDEX), ids[last + 1 :]])

    def completion_ids(self, target: str, where: str) -> list[int]:
        """Target ids with the placeholders inserted after `<image_restore>`, then EOS."""
        tokenizer = self.processor.tokenizer
        ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        if self.restored_pad_id in ids:
            raise DataError(
                f"{where}: the target holds <|restored_pad|> placeholders; the collator adds them"
            )
        restores = [i for i, t in enumerate(ids) if t == self.image_restore_id]
        if len(restores) > 1:
            raise DataError(f"{where}: the target has {len(restores)} <image_restore> tokens; at most one")
        if restores:
            at = restores[0] + 1
            ids = ids[:at] + [self.restored_pad_id] * self.num_restored_tokens + ids[at:]
        return ids + [tokenizer.eos_token_id]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        questions = [format_question(row["question"], row_options(row)) for row in rows]
        degraded = [row["image"] for row in rows]
        clean = [row["clean_image"] for row in rows]
        prompt, per_token, image_inputs = _split_batch(
            encode_prompts(self.processor, degraded, questions, self.system_prompt)
        )
        completions = [
            torch.tensor(self.completion_ids(row["target"], f"row index={row.get('index', i)}"))
            for i, row in enumerate(rows)
        ]
        pad_id = self.processor.tokenizer.pad_token_id
        sequences = [torch.cat([p, c]) for p, c in zip(prompt, completions)]
        labels = [
            torch.cat([torch.full_like(p, IGNORE_INDEX), self.completion_labels(c)])
            for p, c in zip(prompt, completions)
        ]
        batch: dict[str, torch.Tensor] = {
            "input_ids": _right_pad(sequences, pad_id),
            "attention_mask": _right_pad([torch.ones_like(s) for s in sequences], 0),
            "labels": _right_pad(labels, IGNORE_INDEX),
            "restore": torch.tensor([bool((c == self.image_restore_id).any()) for c in completions]),
            "vae_pixel_values": vae_pixel_values(degraded, self.vae_image_size),
            "clean_vae_pixel_values": vae_pixel_values(clean, self.vae_image_size),
            **image_inputs,
        }
        for key, values in per_token.items():  # zeros (text) over the completion
            batch[key] = _right_pad(
                [torch.cat([v, v.new_zeros(len(c))]) for v, c in zip(values, completions)], 0
            )
        clean_prompt, clean_per_token, clean_images = _split_batch(
            encode_prompts(self.processor, clean, questions, self.system_prompt)
        )
        batch[CLEAN_PREFIX + "input_ids"] = _right_pad(clean_prompt, pad_id)
        batch[CLEAN_PREFIX + "attention_mask"] = _right_pad([torch.ones_like(p) for p in clean_prompt], 0)
        for key, values in clean_per_token.items():
            batch[CLEAN_PREFIX + key] = _right_pad(values, 0)
        batch.update({CLEAN_PREFIX + key: value for key, value in clean_images.items()})
        return batch


def split_inputs(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the VLM inputs of the training sequence, the VLM inputs of the clean-image teacher prompt)."""
    student = {k: v for k, v in inputs.items() if k not in LOSS_KEYS and not k.startswith(CLEAN_PREFIX)}
    teacher = {
        k[len(CLEAN_PREFIX) :]: v
        for k, v in inputs.items()
        if k.startswith(CLEAN_PREFIX) and k not in LOSS_KEYS
    }
    return student, teacher
