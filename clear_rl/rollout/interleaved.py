"""Interleaved generation: text -> `<image_restore>` -> restore -> bridge -> text, batched, KV-cached.

Each row of a batch writes text until it emits `<image_restore>`; the restoration branch then
denoises a latent for that row, conditioned on the row's context so far (hidden states up to
`<image_restore>`, which include the degraded image), and the latent enters the context as
`<|restored_pad|>` positions carrying bridge embeddings; the row then writes text again until
`</answer>`, EOS or its token budget. That is clear-rl's single-token protocol; a model whose tags
are plain text (CLEAR's released checkpoints, `model.turn_rules`) restores as the release does, after
a finished text turn holding `<image_restore>`, for a few turns (models/turns.py).

The loop (token choice under the restore policy, stops, the restoration sampler, collecting the
completions) is the same for every backbone; the model calls are its decoder's
(`model.decoder_class`, see models/backbone.py): the composed model's splices bridge embeddings
into `<|restored_pad|>` positions with masked holes for the other rows (models/composed/decoding.py), BAGEL's
appends the restored latent as a clean latent block (models/bagel/decoding.py).

What fills the restored slot (`readback`): the bridge's embeddings of the latent, the paper's
baseline, the VLM's own vision tokens of the VAE-decoded latent, or the bridge of the decoded latent
encoded again (models/readback.py).
`restore="oracle"` puts given clean latents in the slot and hides the image tokens throughout,
measuring how well the model answers from the bridged latent alone; `degraded_view="drop"`
hides a row's image tokens from every position after its restored slot begins.

`transformers.GenerationMixin.generate` cannot pause a row mid-sequence to run a second model
and splice embeddings in, hence this loop; it reuses transformers' logits warpers and cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from clear_rl.choices import (
    DEGRADED_VIEWS,
    READBACKS,
    RESTORE_POLICIES,
    DegradedView,
    Readback,
    RestorePolicy,
)
from clear_rl.models.backbone import UnifiedBackbone
from clear_rl.models.turns import tag_protocol
from clear_rl.rollout.restoration import RestorationSampling, restore_latents


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
    # What fills the restored slot: "bridge" (CLEAR), "reencode" (VAE decode -> the VLM's own image
    # processor and vision path; needs `image_processor`) or "reencode-vae" (decoded to 8-bit pixels and
    # encoded again by the VAE, then the bridge: CLEAR's per-degradation eval).
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
    """The token loop of one batched interleaved rollout; the backbone's decoder makes the model calls."""

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
        self.oracle_latents = oracle_latents
        self.ids = model.token_ids
        self.decoder = model.decoder_class(
            model,
            input_ids,
            vlm_inputs,
            vae_pixel_values,
            degraded_latents,
            cfg,
            image_processor=image_processor,
            generator=gen,
        )
        self.pad_id = self.decoder.pad_id
        self.batch = input_ids.shape[0]
        self.tags = tag_protocol(model, self.decoder, cfg, self.batch, input_ids.device)
        self.banned = torch.tensor(self.decoder.banned_token_ids, dtype=torch.long, device=input_ids.device)
        self.seq_ids = input_ids  # what the logits warpers see (they ignore it)
        self.restored_latents = torch.zeros(self.batch, *model.latent_shape, device=input_ids.device)
        self.warpers = LogitsProcessorList()
        if cfg.do_sample:
            if cfg.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(cfg.temperature))
            if cfg.top_k:
                self.warpers.append(TopKLogitsWarper(cfg.top_k))
            if cfg.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(cfg.top_p))

    def restore(self, rows: torch.Tensor):
        """Denoise a latent for `rows`, conditioned on their context up to `<image_restore>`."""
        context = self.decoder.restoration_context(rows)
        return restore_latents(self.model, context, self.cfg.restoration, generator=self.gen)

    # -- token choice ----------------------------------------------------------------------------
    def choose(self, logits, restored, previous, last_step):
        """Pick each row's next token under the restore policy; returns (tokens, log-probs)."""
        cfg = self.cfg
        logits = logits.clone()
        # Placeholders are never model-written; a sampled image token would have no features.
        logits[:, self.banned] = float("-inf")
        self.tags.mask(logits, restored)
        scaled = logits / cfg.temperature if cfg.do_sample else logits
        if cfg.do_sample:
            probs = torch.softmax(self.warpers(self.seq_ids, logits), dim=-1)
            tokens = torch.multinomial(probs, 1, generator=self.gen).squeeze(1)
        else:
            tokens = logits.argmax(-1)
        tokens = self.tags.force(tokens, restored, previous, last_step)
        logprobs = torch.log_softmax(scaled, dim=-1).gather(1, tokens[:, None]).squeeze(1)
        return tokens, logprobs

    # -- the loop ---------------------------------------------------------------------------
    def run(self, input_ids, attention_mask) -> InterleavedOutput:
        cfg, ids, device, batch = self.cfg, self.ids, input_ids.device, self.batch
        logits = self.decoder.prefill(input_ids, attention_mask)
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
            restoring, ending = self.tags.after(tokens, active)
            finished = finished | ending
            logits = self.decoder.step(tokens, active)
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
                n_pad, block_logits = self.decoder.append_restored(restoring, self.restored_latents)
                logits = torch.where(restoring[:, None], block_logits, logits)
                placeholder = torch.where(restoring, ids.restored_pad, self.pad_id)
                for _ in range(n_pad):
                    columns.append((placeholder, restoring, restoring, torch.zeros(batch, device=device)))
                restored = restored | restoring
            if bool(finished.all()):
                break
        return self._collect(columns, restored, trajectory, log_probs, timesteps)

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
            degraded_latents=self.decoder.degraded_latents,
            trajectory=trajectory,
            trajectory_log_probs=log_probs,
            timesteps=timesteps,
            restored_embeds=self.decoder.restored_embeds,
        )


@torch.no_grad()
def generate_interleaved(
    model: UnifiedBackbone,
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
        ("restore", config.restore, RESTORE_POLICIES),
        ("readback", config.readback, READBACKS),
        ("degraded_view", config.degraded_view, DEGRADED_VIEWS),
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
