"""`BagelUnifiedModel`'s training side: the protocol's `TrainableBackbone` (models/backbone.py).

`forward` takes the same padded id batches as the composed model's (the collator's, TRL's scoring
chunks) and runs one packed BAGEL pass over them (models/bagel/training.py): the CE's logits, the
flow MSE's / Flow-GRPO's velocities of noised latent blocks hidden from later tokens, and per-layer
hidden states of the bridge block and the ViT block for the distill loss. Saving writes the
official layout (`model.safetensors`, as CLEAR's trained checkpoints), so `load_unified`,
`clear-rl eval` and BAGEL's own code read the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import ModelOutput

from clear_rl.errors import ClearRLError
from clear_rl.models.bagel.decoding import BagelRestorationContext
from clear_rl.models.bagel.modeling import BagelOutput
from clear_rl.models.bagel.training import (
    BatchLayout,
    TokenIds,
    block_states,
    gather_positions,
    hidden_view_mask,
    layout_batch,
    noised_velocities,
)
from clear_rl.models.same_work import SameWork, with_idle_work
from clear_rl.models.tokens import up_to_last

TRAINED_WEIGHTS_NAME = "model.safetensors"  # what CLEAR's own trained checkpoints hold


# The parts (settings.PARTS): `llm` is the understanding expert (every `language_model` weight without
# `_moe_gen`, the embeddings, head and final norm among them), `head` the generation expert (the `_moe_gen`
# twins, `llm2vae`, `time_embedder`: the restoration branch), `bridge` `vae2llm` (latents into the LLM; the
# restoration branch reads its noised latent through it too), `projector` the connector, `vit` SigLIP. Its
# VAE sits outside the module tree and never trains. Both experts live in the LLM, so LoRA finds the
# restoration branch's layers there: name the `_moe_gen` twins.
BAGEL_PART_PATTERNS = {
    "llm": [r"bagel\.language_model\.(?!.*_moe_gen)"],
    "head": [r"bagel\.language_model\..*_moe_gen", r"bagel\.llm2vae\.", r"bagel\.time_embedder\."],
    "bridge": [r"bagel\.vae2llm\."],
    "projector": [r"bagel\.connector\."],
    "vit": [r"bagel\.vit_model\."],
    "vae": [],
}
BAGEL_LORA_SCOPES = {"llm": r"bagel\.language_model", "head": r"bagel\.language_model"}


@dataclass
class BagelTrainingOutput(ModelOutput):
    """`logits` (B, K, V) at the kept positions; `flow_velocity` (B, K, C, h, w) when asked;
    `hidden_states` the packed per-layer states and `layout` where each row's blocks landed."""

    logits: torch.Tensor | None = None
    flow_velocity: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    layout: BatchLayout | None = None
    bagel_output: BagelOutput | None = None


class BagelTrainingMixin:
    """The training forward and the `TrainableBackbone` methods of `BagelUnifiedModel`."""

    # Generation can re-encode a restoration as a ViT block (eval's baseline); the training pass lays
    # every slot out as a latent block, so GRPO replays only the bridge.
    # Sharded training's same-work rule (models/same_work.py): set by the trainers, never by users.
    same_work: SameWork | None = None
    # FSDP's auto-wrap units (accelerate reads them when the config names none): the MoT layers and
    # the ViT's layers.
    _no_split_modules = ["MoTDecoderLayer", "SiglipEncoderLayer"]

    # -- what peft, transformers and TRL read off a model ---------------------------------------
    def add_model_tags(self, tags: list[str]) -> None:
        """Trainers tag the models they train (a model card's tags; BAGEL's layout has no card)."""
        self.model_tags = sorted({*getattr(self, "model_tags", []), *tags})

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.bagel.language_model.model.embed_tokens

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.bagel.language_model.lm_head

    def activation_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        """Recompute each MoT layer in backward (non-reentrant; transformers' settings do not apply)."""
        self.bagel.gradient_checkpointing_enable(True)

    def activation_checkpointing_disable(self) -> None:
        self.bagel.gradient_checkpointing_enable(False)

    gradient_checkpointing_enable = activation_checkpointing_enable  # the names peft and TRL call
    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.bagel.language_model.model.gradient_checkpointing

    def enable_input_require_grads(self) -> None:
        """peft's k-bit preparation: embeddings' outputs require grad (reentrant checkpointing)."""
        self.get_input_embeddings().register_forward_hook(lambda module, args, out: out.requires_grad_(True))

    # -- parts ------------------------------------------------------------------------------------
    def part_patterns(self) -> dict[str, list[str]]:
        return {part: list(patterns) for part, patterns in BAGEL_PART_PATTERNS.items()}

    def same_work_parts(self) -> dict[str, torch.nn.Module]:
        """The parts the same-work rule runs idle: the velocity head (the bridge's modules, shared
        with the prompt's latent block, run in every pass)."""
        return {"head": self.bagel.llm2vae}

    def lora_scopes(self) -> dict[str, str]:
        return dict(BAGEL_LORA_SCOPES)

    # -- token positions ----------------------------------------------------------------------------
    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The prompt's `<|image_pad|>` placeholder: masking it hides the ViT block (not the VAE block)."""
        return input_ids == self.config.image_token_id

    def up_to_last_restore(self, input_ids: torch.Tensor) -> torch.Tensor:
        return up_to_last(input_ids, self.token_ids.image_restore)

    def _token_layout(self) -> TokenIds:
        cfg = self.bagel.config
        ids = self.token_ids
        return TokenIds(
            self.config.image_token_id, ids.image_restore, ids.restored_pad, cfg.im_start_id, cfg.im_end_id
        )

    # -- the training forward ---------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        latent_pixel_values: torch.Tensor | None = None,
        restored_latents: torch.Tensor | None = None,
        restored_embeds: torch.Tensor | None = None,
        flow_latents: torch.Tensor | None = None,
        flow_timesteps: torch.Tensor | None = None,
        flow_rows: torch.Tensor | None = None,
        degraded_latents: torch.Tensor | None = None,
        hide_view_from: torch.Tensor | None = None,
        clear_step: Callable[..., Any] | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        use_cache: bool = False,
        **unused: Any,
    ) -> BagelTrainingOutput:
        """One packed teacher-forced pass over a padded id batch (see the module docstring).

        The prompt image's VAE block comes from `degraded_latents`, else from encoding
        `latent_pixel_values` (the processor's VAE view; the VAE is frozen). `hide_view_from` (B,)
        hides each row's degraded view from that id position's block on (`hidden_view_inputs`).
        """
        if clear_step is not None:
            named = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "pixel_values": pixel_values,
                "image_sizes": image_sizes,
                "latent_pixel_values": latent_pixel_values,
                "restored_latents": restored_latents,
                "restored_embeds": restored_embeds,
                "flow_latents": flow_latents,
                "flow_timesteps": flow_timesteps,
                "flow_rows": flow_rows,
                "degraded_latents": degraded_latents,
                "hide_view_from": hide_view_from,
            }
            batch = {k: v for k, v in named.items() if v is not None}
            if output_hidden_states:
                batch["output_hidden_states"] = True
            if not isinstance(logits_to_keep, int) or logits_to_keep:
                batch["logits_to_keep"] = logits_to_keep
            batch.update(unused)
            return clear_step(self, self.forward, batch)
        extra = sorted(k for k, v in unused.items() if v is not None and k not in ("labels", "fused_lm_head"))
        if extra:
            raise ClearRLError(f"BAGEL's training forward does not take {extra}")
        if restored_embeds is not None:
            raise ClearRLError(
                "restored_embeds (readback: reencode) cannot be trained on BAGEL: its training pass lays "
                "the restored slot out as a latent block"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        degraded = self._degraded_latents(degraded_latents, latent_pixel_values)
        flow = None
        if flow_latents is not None:
            rows = flow_rows if flow_rows is not None else torch.ones(input_ids.shape[0], dtype=torch.bool)
            flow = (flow_latents, flow_timesteps, rows.bool())
        layout, packed = layout_batch(
            input_ids, attention_mask, self._token_layout(), degraded, pixel_values, image_sizes,
            restored_latents, flow, self.num_restored_tokens, self.bagel.pack,
        )  # fmt: skip
        mask = None if hide_view_from is None else hidden_view_mask(packed, layout, hide_view_from)
        output = self.bagel.forward(packed, output_hidden_states=output_hidden_states, attention_mask=mask)
        index = gather_positions(layout, logits_to_keep)
        logits = self.bagel.language_model.lm_head(output.last_hidden_state[index])
        velocity = None if flow is None else noised_velocities(self.bagel, output, layout, flow_latents)
        work = self.same_work
        if (
            flow is not None
            and work is not None
            and work.needs_idle("head", any(r.noised for r in layout.rows))
        ):
            # the same-work rule (models/same_work.py): the velocity head on one token, weight zero
            velocity = with_idle_work(velocity, [self.bagel.llm2vae(output.last_hidden_state[:1])])
        return BagelTrainingOutput(
            logits=logits,
            flow_velocity=velocity,
            hidden_states=output.hidden_states,
            layout=layout,
            bagel_output=output,
        )

    def _degraded_latents(self, latents: torch.Tensor | None, pixels: torch.Tensor | None) -> torch.Tensor:
        if latents is not None:
            return latents
        if pixels is None:
            raise ClearRLError(
                "BAGEL's training forward needs the prompt image's latents: degraded_latents, or the "
                "BagelProcessor's latent_pixel_values"
            )
        with torch.no_grad():
            return self.encode_latents(pixels).float()

    def hidden_view_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hide_from: torch.Tensor
    ) -> dict:
        """The forward's inputs hiding each row's degraded view from id position `hide_from` on."""
        return {"attention_mask": attention_mask, "hide_view_from": hide_from}

    # -- distill ------------------------------------------------------------------------------------
    def _block(self, output: BagelTrainingOutput, row: int, kind: str):
        layout = output.layout
        number = getattr(layout.rows[row], kind)
        if number is None:
            raise ClearRLError(f"row {row} of a BAGEL training pass has no {kind} block to distill")
        return layout.span(row, number)

    def restored_token_states(
        self, output: BagelTrainingOutput, input_ids: torch.Tensor, row: int
    ) -> torch.Tensor:
        return block_states(output.bagel_output, self._block(output, row, "restored"))

    def image_token_states(
        self, output: BagelTrainingOutput, input_ids: torch.Tensor, row: int
    ) -> torch.Tensor:
        return block_states(output.bagel_output, self._block(output, row, "vit"))

    def restored_token_grid(self, output: BagelTrainingOutput, row: int) -> tuple[int, int]:
        _, h, w = self._block(output, row, "restored").grid
        p = self.bagel.config.latent_patch_size
        return (h // p, w // p)

    def image_token_grid(
        self, output: BagelTrainingOutput, row: int, count: int, grid_thw=None
    ) -> tuple[int, int]:
        return tuple(self._block(output, row, "vit").grid)

    # -- stage 2 ------------------------------------------------------------------------------------
    def teacher_forced_context(
        self, forward, inputs: dict, degraded_latents: torch.Tensor, rows: torch.Tensor
    ) -> BagelRestorationContext:
        """`rows`' prefixes up to their `<image_restore>` (turn closed) as a KV cache, as at sampling."""
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        chosen = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        chosen[rows] = True
        layout, _ = layout_batch(
            input_ids, mask, self._token_layout(), degraded_latents, inputs.get("pixel_values"),
            inputs.get("image_sizes"), None, None, self.num_restored_tokens, self.bagel.pack,
            stop_after_restore=True,
        )  # fmt: skip
        samples = [row.segments if bool(chosen[b]) else [] for b, row in enumerate(layout.rows)]
        cache = self.bagel.prefill(samples).cache
        return BagelRestorationContext(cache, rows, degraded_latents[rows])

    # -- files --------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, state_dict: dict | None = None, **_: Any) -> None:
        """The official layout, written into `path` (an existing run folder keeps its other files);
        `state_dict`: this model's, gathered whole where its parameters are sharded."""
        from clear_rl.models.bagel.io import write_bagel_files

        if any(type(m).__name__ == "Linear4bit" for m in self.modules()):
            raise ClearRLError("a 4-bit BAGEL trains through LoRA adapters only; its base cannot be saved")
        Path(path).mkdir(parents=True, exist_ok=True)
        state = None if state_dict is None else {k.removeprefix("bagel."): v for k, v in state_dict.items()}
        write_bagel_files(self.bagel, path, TRAINED_WEIGHTS_NAME, self.tokenizer, state=state)

    def load_saved_weights(self, path: str | os.PathLike) -> None:
        """Put the weights `save_pretrained` wrote into this model (resuming a full fine-tune)."""
        from clear_rl.models.bagel.io import load_bagel

        saved = load_bagel(path, dtype=self.dtype, device="cpu", weights_name=TRAINED_WEIGHTS_NAME)
        self.bagel.load_state_dict(saved.state_dict())
