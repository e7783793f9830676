"""Interleaved generation: text -> `<image_restore>` -> restore -> bridge -> text, batched, KV-cached.

Each row of a batch writes text until it emits `<image_restore>`; the restoration branch then
denoises a latent for that row, conditioned on the row's context so far (hidden states up to
`<image_restore>`, which include the degraded image), and the latent enters the context as
`<|restored_pad|>` positions carrying bridge embeddings; the row then writes text again until
`</answer>`, EOS or its token budget.

Rows that restore and rows that do not proceed together. When some rows insert their N
placeholder positions, the others get N masked "hole" positions in the same forward pass (their
attention mask is 0 there and position ids skip them), so one KV cache serves the whole batch and
every row's logits are exactly what they would be alone.

What fills the restored slot (`readback`): the bridge's embeddings of the latent, or the
paper's baseline, the VLM's own vision tokens of the VAE-decoded latent (models/readback.py).
`restore="oracle"` puts given clean latents in the slot and hides the image tokens throughout,
measuring how well the model answers from the bridged latent alone; `degraded_view="drop"`
hides a row's image tokens from every position after its restored slot begins. Hidden tokens
keep their position ids: one mask counts positions, another says what attention reads.

`transformers.GenerationMixin.generate` cannot pause a row mid-sequence to run a second model
and splice embeddings in, hence this loop; it reuses transformers' logits warpers and cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from clear_rl.models.composed import ComposedUnifiedModel, RestorationContext
from clear_rl.models.positions import RolloutPositions
from clear_rl.models.readback import (
    DegradedView,
    Readback,
    reencode_embeddings,
    view_mask,
)
from clear_rl.restoration import RestorationSampling, restore_latents

RestorePolicy = Literal["model", "always", "never", "oracle"]


@dataclass
class InterleavedGenerationConfig:
    """Sampling settings of an interleaved rollout (text and restoration)."""

    max_new_tokens: int = 256
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # "model": the model decides; "always": every row restores once before answering;
    # "never": `<image_restore>` is banned (the answer-directly baseline); "oracle": the completion
    # opens with `<image_restore>`, the slot holds the given `oracle_latents` and the image tokens
    # are hidden throughout (the model answers from the bridged latent alone).
    restore: RestorePolicy = "model"
    # What fills the restored slot: "bridge" (CLEAR) or "reencode" (VAE decode -> the VLM's own
    # image processor and vision path; needs `image_processor`).
    readback: Readback = "bridge"
    # "drop": once a row restores, its degraded image tokens are hidden from every later position.
    degraded_view: DegradedView = "keep"
    # How restorations are sampled (ODE by default; "sde" keeps per-step log-probs, for Flow-GRPO).
    restoration: RestorationSampling = field(default_factory=RestorationSampling)
    use_cache: bool = True  # False recomputes the whole prefix each step (for tests/benchmarks)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)  # besides EOS and `</answer>`


@dataclass
class InterleavedOutput:
    """Per-row results, right-padded to the longest completion."""

    completion_ids: torch.Tensor  # (B, T) model-written tokens and placeholders; pad after the end
    completion_mask: torch.Tensor  # (B, T) 1 on real positions (text and placeholders)
    restored_mask: torch.Tensor  # (B, T) True on `<|restored_pad|>` placeholders (not model-written)
    token_logprobs: torch.Tensor  # (B, T) sampling log-prob of each written token; 0 elsewhere
    restored: torch.Tensor  # (B,) whether the row restored
    restored_latents: torch.Tensor  # (B, C, h, w) the restored latent (zeros where not restored)
    degraded_latents: torch.Tensor | None  # (B, C, h, w) VAE latents of the input images, if computed
    trajectory: torch.Tensor | None  # (B, N+1, C, h, w) restoration states (zeros where not restored)
    trajectory_log_probs: torch.Tensor | None  # (B, N) per-step log-probs of the restoration
    timesteps: torch.Tensor | None  # (N+1,) noise levels of the restoration steps
    # (B, N, D) what filled the slot under readback="reencode" (zeros where not restored); else None
    restored_embeds: torch.Tensor | None = None

    @property
    def text_mask(self) -> torch.Tensor:
        """Model-written positions: the ones a text policy gradient may touch (placeholders excluded)."""
        return self.completion_mask.bool() & ~self.restored_mask


class _Rollout:
    """State of one batched interleaved rollout; `run` drives it step by step."""

    def __init__(
        self,
        model,
        input_ids,
        attention_mask,
        vlm_inputs,
        vae_pixel_values,
        degraded_latents,
        cfg,
        gen,
        image_processor=None,
        oracle_latents=None,
    ):
        self.model, self.cfg, self.gen = model, cfg, gen
        self.image_processor, self.oracle_latents = image_processor, oracle_latents
        self.vlm_inputs, self.vae_pixel_values = vlm_inputs, vae_pixel_values
        self.degraded_latents = degraded_latents
        self.ids = model.token_ids
        self.image_token_id = model.config.image_token_id
        text_config = model.config.get_text_config()
        self.pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
        eos = text_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.stop_ids = torch.tensor(
            [*eos, self.ids.answer_end, *cfg.stop_token_ids], device=input_ids.device
        )
        self.batch = input_ids.shape[0]
        self.seq_ids: torch.Tensor | None = None  # the whole sequence so far, holes included
        self.seq_mask: torch.Tensor | None = None  # 1 on real positions, 0 on left padding and holes
        # Per row, the sequence index from which its image tokens are hidden (length: never).
        never = torch.iinfo(torch.long).max
        start = 0 if cfg.restore == "oracle" else never
        self.hide_from = torch.full((input_ids.shape[0],), start, dtype=torch.long, device=input_ids.device)
        self.restored_embeds: torch.Tensor | None = None  # (B, N, D) under readback="reencode"
        self.cache = None
        self.positions = RolloutPositions(model, vlm_inputs)  # 1D, or M-RoPE's 3D with image layouts
        self.hidden: torch.Tensor | None = None  # (B, L, D) conditioning-layer states of the sequence
        self.restored_latents = torch.zeros(self.batch, *model.latent_shape, device=input_ids.device)
        self.warpers = LogitsProcessorList()
        if cfg.do_sample:
            if cfg.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(cfg.temperature))
            if cfg.top_k:
                self.warpers.append(TopKLogitsWarper(cfg.top_k))
            if cfg.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(cfg.top_p))

    # -- model calls ---------------------------------------------------------------------------
    def visible(self, query_index: int) -> torch.Tensor:
        """(B, L) 1 where a query at `query_index` may attend: real positions minus hidden image tokens."""
        hidden = (self.seq_ids == self.image_token_id) & (self.hide_from <= query_index)[:, None]
        return self.seq_mask * (~hidden).long()

    def forward(self, new_ids: torch.Tensor, new_mask: torch.Tensor, slot: bool = False) -> torch.Tensor:
        """Append `new_ids` to the sequence and return the logits of its last position.

        `slot`: `new_ids` are the restored-slot block, filled from the current readback.
        """
        first = self.seq_ids is None
        start = 0 if first else self.seq_ids.shape[1]
        self.seq_ids = new_ids if first else torch.cat([self.seq_ids, new_ids], dim=1)
        self.seq_mask = new_mask if first else torch.cat([self.seq_mask, new_mask], dim=1)
        new = new_ids.shape[1] if self.cfg.use_cache else self.seq_ids.shape[1]
        positions = self.positions(self.seq_ids, self.seq_mask, new)  # hidden image tokens still count
        need_hidden = self.cfg.restore not in ("never", "oracle")
        layer = self.model.config.condition_layer
        reencode = self.cfg.readback == "reencode"
        if self.cfg.use_cache:
            out = self.model(
                input_ids=new_ids,
                attention_mask=self.visible(start),
                position_ids=positions,
                restored_latents=self.restored_latents if slot and not reencode else None,
                restored_embeds=self.restored_embeds if slot and reencode else None,
                cache=self.cache,
                use_cache=True,
                output_hidden_states=need_hidden,
                logits_to_keep=1,
                **(self.vlm_inputs if first else {}),
            )
            self.cache = out.cache
            if need_hidden:
                states = out.hidden_states[layer]
                self.hidden = states if first else torch.cat([self.hidden, states], dim=1)
        else:
            mask = self.seq_mask
            if bool((self.hide_from < self.seq_ids.shape[1]).any()):  # hiding differs per query
                mask = view_mask(self.model, self.seq_ids, mask, self.hide_from)
            out = self.model(
                input_ids=self.seq_ids,
                attention_mask=mask,
                position_ids=positions,
                restored_latents=None if reencode else self.restored_latents,
                restored_embeds=self.restored_embeds if reencode else None,
                use_cache=False,
                output_hidden_states=need_hidden,
                logits_to_keep=1,
                **self.vlm_inputs,
            )
            if need_hidden:
                self.hidden = out.hidden_states[layer]
        return out.logits[:, -1].float()

    def restore(self, rows: torch.Tensor):
        """Denoise a latent for `rows`, conditioned on their context up to `<image_restore>`."""
        if self.degraded_latents is None:
            if self.vae_pixel_values is None:
                raise ValueError("restoration needs vae_pixel_values or degraded_latents")
            self.degraded_latents = self.model.encode_latents(self.vae_pixel_values).float()
        context = RestorationContext(
            self.hidden[rows],
            self.visible(self.seq_ids.shape[1] - 1)[rows].bool(),
            self.degraded_latents[rows],
        )
        return restore_latents(self.model, context, self.cfg.restoration, generator=self.gen)

    # -- token choice ----------------------------------------------------------------------------
    def choose(self, logits, restored, previous, last_step):
        """Pick each row's next token under the restore policy; returns (tokens, log-probs)."""
        ids, cfg = self.ids, self.cfg
        logits = logits.clone()
        logits[:, ids.restored_pad] = float("-inf")  # placeholders are never model-written
        logits[:, self.image_token_id] = float("-inf")  # a sampled image token would have no features
        if cfg.restore == "never":
            logits[:, ids.image_restore] = float("-inf")
        else:
            logits[restored, ids.image_restore] = float("-inf")  # at most one restoration per row
        scaled = logits / cfg.temperature if cfg.do_sample else logits
        if cfg.do_sample:
            probs = torch.softmax(self.warpers(self.seq_ids, logits), dim=-1)
            tokens = torch.multinomial(probs, 1, generator=self.gen).squeeze(1)
        else:
            tokens = logits.argmax(-1)
        if cfg.restore == "oracle":
            # The slot is the only view: a quality check of an image the row cannot see is skipped.
            tokens = torch.where(~restored, torch.full_like(tokens, ids.image_restore), tokens)
        elif cfg.restore == "always":
            would_end = torch.isin(
                tokens, torch.cat([self.stop_ids, self.stop_ids.new_tensor([ids.answer_start])])
            )
            force = ~restored & ((previous == ids.think_end) | would_end | last_step)
            tokens = torch.where(force, torch.full_like(tokens, ids.image_restore), tokens)
        logprobs = torch.log_softmax(scaled, dim=-1).gather(1, tokens[:, None]).squeeze(1)
        return tokens, logprobs

    # -- the loop ---------------------------------------------------------------------------
    def run(self, input_ids, attention_mask) -> InterleavedOutput:
        cfg, ids, device, batch = self.cfg, self.ids, input_ids.device, self.batch
        logits = self.forward(input_ids, attention_mask.long())
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        restored = torch.zeros_like(finished)
        previous = input_ids[:, -1].clone()
        columns: list[tuple[torch.Tensor, ...]] = []  # (ids, real, placeholder, logprob) per column
        trajectory = log_probs = timesteps = None
        for step in range(cfg.max_new_tokens):
            tokens, logprobs = self.choose(logits, restored, previous, step == cfg.max_new_tokens - 1)
            active = ~finished
            tokens = torch.where(active, tokens, torch.full_like(tokens, self.pad_id))
            columns.append((tokens, active, torch.zeros_like(active), torch.where(active, logprobs, 0.0)))
            restoring = active & (tokens == ids.image_restore)
            finished = finished | (active & torch.isin(tokens, self.stop_ids))
            logits = self.forward(tokens[:, None], active.long()[:, None])
            previous = torch.where(active, tokens, previous)
            if restoring.any():
                if cfg.restore == "oracle":
                    self.restored_latents[restoring] = self.oracle_latents[restoring].to(
                        self.restored_latents
                    )
                else:
                    sample = self.restore(restoring)
                    self.restored_latents[restoring] = sample.latents.to(self.restored_latents.dtype)
                    if trajectory is None:
                        trajectory = sample.trajectory.new_zeros(batch, *sample.trajectory.shape[1:])
                        log_probs = sample.log_probs.new_zeros(batch, sample.log_probs.shape[1])
                        timesteps = sample.timesteps
                    trajectory[restoring], log_probs[restoring] = sample.trajectory, sample.log_probs
                n_pad = self.fill_slot(restoring)
                if cfg.degraded_view == "drop":  # the slot replaces the degraded view from here on
                    self.hide_from[restoring] = self.seq_ids.shape[1]
                block = torch.where(restoring[:, None], ids.restored_pad, self.pad_id).expand(batch, n_pad)
                block_logits = self.forward(
                    block.contiguous(), restoring.long()[:, None].expand(batch, n_pad), slot=True
                )
                logits = torch.where(restoring[:, None], block_logits, logits)
                for _ in range(n_pad):
                    columns.append((block[:, 0], restoring, restoring, torch.zeros(batch, device=device)))
                restored = restored | restoring
            if bool(finished.all()):
                break
        return self._collect(columns, restored, trajectory, log_probs, timesteps)

    def fill_slot(self, rows: torch.Tensor) -> int:
        """Prepare what fills `rows`' restored slots; returns the slot's length in positions."""
        if self.cfg.readback != "reencode":
            return self.model.num_restored_tokens
        embeds = reencode_embeddings(self.model, self.restored_latents[rows], self.image_processor)
        if self.restored_embeds is None:
            self.restored_embeds = embeds.new_zeros(self.batch, *embeds.shape[1:])
        self.restored_embeds[rows] = embeds
        return embeds.shape[1]

    def _collect(self, columns, restored, trajectory, log_probs, timesteps) -> InterleavedOutput:
        """Compact the per-step columns into right-padded per-row completions."""
        tokens, real, placeholder, logprobs = (torch.stack(c, dim=1) for c in zip(*columns))
        # Stable sort puts each row's real positions first, in order; the rest becomes padding.
        order = torch.sort((~real).long(), dim=1, stable=True).indices
        length = int(real.sum(1).max())
        take = lambda x: x.gather(1, order)[:, :length]  # noqa: E731
        mask = take(real)
        completion_ids = torch.where(mask, take(tokens), self.pad_id)
        return InterleavedOutput(
            completion_ids=completion_ids,
            completion_mask=mask.long(),
            restored_mask=take(placeholder) & mask,
            token_logprobs=torch.where(mask, take(logprobs), 0.0),
            restored=restored,
            restored_latents=self.restored_latents,
            degraded_latents=self.degraded_latents,
            trajectory=trajectory,
            trajectory_log_probs=log_probs,
            timesteps=timesteps,
            restored_embeds=self.restored_embeds,
        )


@torch.no_grad()
def generate_interleaved(
    model: ComposedUnifiedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: InterleavedGenerationConfig | None = None,
    vae_pixel_values: torch.Tensor | None = None,
    degraded_latents: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    image_processor=None,
    oracle_latents: torch.Tensor | None = None,
    **vlm_inputs,
) -> InterleavedOutput:
    """Generate interleaved completions for a left-padded batch of prompts.

    `vlm_inputs` are the processor's image inputs (`pixel_values`, `image_sizes`,
    `image_grid_thw`, ...). The restoration branch needs the degraded images as VAE inputs
    (`vae_pixel_values`, (B, 3, S, S) in [-1, 1]) or their latents (`degraded_latents`).
    `readback="reencode"` needs `image_processor` (the VLM's processor or its image processor);
    `restore="oracle"` needs `oracle_latents` (B, C, h, w), e.g. the clean images' latents.
    """
    config = config or InterleavedGenerationConfig()
    _check(model, input_ids, config, image_processor, oracle_latents)
    rollout = _Rollout(
        model,
        input_ids,
        attention_mask,
        vlm_inputs,
        vae_pixel_values,
        degraded_latents,
        config,
        generator,
        image_processor=image_processor,
        oracle_latents=oracle_latents,
    )
    return rollout.run(input_ids, attention_mask)


def _check(model, input_ids, config: InterleavedGenerationConfig, image_processor, oracle_latents) -> None:
    """Clear errors for settings that cannot run, before any model call."""
    for name, value, valid in (
        ("restore", config.restore, ("model", "always", "never", "oracle")),
        ("readback", config.readback, ("bridge", "reencode")),
        ("degraded_view", config.degraded_view, ("keep", "drop")),
    ):
        if value not in valid:
            raise ValueError(
                f"InterleavedGenerationConfig.{name} must be one of {list(valid)}, got {value!r}"
            )
    if config.readback == "reencode" and image_processor is None:
        raise ValueError(
            "readback='reencode' decodes each restored latent and re-encodes it with the VLM's own "
            "image processor and vision tower: pass generate_interleaved(..., image_processor=processor)"
        )
    if config.restore == "oracle":
        expected = (input_ids.shape[0], *model.latent_shape)
        if oracle_latents is None:
            raise ValueError(
                "restore='oracle' fills the restored slot with given latents: pass "
                f"generate_interleaved(..., oracle_latents=...) of shape {expected} (e.g. the clean images')"
            )
        if tuple(oracle_latents.shape) != expected:
            raise ValueError(f"oracle_latents must have shape {expected}, got {tuple(oracle_latents.shape)}")
