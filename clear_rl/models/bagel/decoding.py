"""BAGEL's decoder: the model calls of an interleaved rollout (see models/backbone.py).

All rows share one packed `BagelCache` (each row a sample of it, as BAGEL's own cache), so rows of
any length move together without padding: a step appends one text token to each active row and
nothing to the others. A prompt's `<|image_pad|>` placeholder becomes the degraded image's VAE
latent block and ViT block. `<image_restore>` closes its text turn (`<|im_end|>`: CLEAR restores
after the turn that holds the tag); the restoration then attends to the row's cached prefix, and
the restored latent enters as a clean latent block through the generation expert (BAGEL's
bridge), followed by `<|im_start|>` opening the next turn. Under `readback="reencode"` the
restoration is decoded to pixels and enters as a ViT block instead, as an input image would. In
the completion the slot shows as one `<|restored_pad|>` per latent (or ViT) token; that framing is
implied.

Restoration CFG contexts are built when a restoration needs them, from each row's prompt parts and
written tokens, as the guidance's `contexts` says (models/bagel/guidance.py: CLEAR's eval drops the
thought turn from the text-unconditional context).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clear_rl.models.bagel.guidance import RowPrompt, TurnIds, cfg_contexts
from clear_rl.models.bagel.modeling import LatentSegment, Segment, TextSegment, VitSegment
from clear_rl.models.bagel.mot import BagelCache
from clear_rl.models.readback import latents_to_images


@dataclass
class BagelRestorationContext:
    """The prefix that `velocity` attends to: a cache of all B rows, of which `rows` restore."""

    cache: BagelCache
    rows: torch.Tensor  # (R,) indices into the cache's samples
    degraded_latents: torch.Tensor  # (R, C, h, w)
    # (text-unconditional, image-unconditional): BAGEL's CFG contexts, or None
    guidance_contexts: tuple[BagelRestorationContext, BagelRestorationContext] | None = None

    @property
    def num_rows(self) -> int:
        return int(self.rows.numel())

    @property
    def device(self) -> torch.device:
        return self.degraded_latents.device


def _extend(segments: list[Segment], new: Segment) -> None:
    """Append `new`, merging consecutive text into one segment (fewer segments to pack)."""
    if isinstance(new, TextSegment) and segments and isinstance(segments[-1], TextSegment):
        segments[-1] = TextSegment(
            torch.cat([segments[-1].input_ids, new.input_ids.to(segments[-1].input_ids)])
        )
    else:
        segments.append(new)


class BagelDecoder:
    """KV-cached interleaved decoding of a `BagelUnifiedModel`."""

    def __init__(
        self,
        model,
        input_ids,
        vlm_inputs,
        vae_pixel_values,
        degraded_latents,
        cfg,
        image_processor=None,
    ):
        if cfg.readback == "reencode" and not hasattr(image_processor, "vit_view"):
            raise ValueError(
                "readback='reencode' on BAGEL re-encodes each decoded restoration with the ViT view "
                "of its BagelProcessor: pass the processor as image_processor"
            )
        if not cfg.use_cache and (cfg.restore == "oracle" or cfg.degraded_view == "drop"):
            raise ValueError(
                "BAGEL hides the degraded image through its cache: use_cache=False cannot hide it"
            )
        if vlm_inputs.get("pixel_values") is None or vlm_inputs.get("image_sizes") is None:
            raise ValueError(
                "BAGEL prompts need the ViT view of their images: pass the BagelProcessor's "
                "pixel_values and image_sizes"
            )
        self.model, self.cfg = model, cfg
        self.vit_view = getattr(image_processor, "vit_view", None)
        core = model.bagel.config
        self.vit_pixels, self.vit_sizes = vlm_inputs["pixel_values"], vlm_inputs["image_sizes"]
        self.vae_pixel_values, self.degraded_latents = vae_pixel_values, degraded_latents
        self.ids = model.token_ids
        self.im_start, self.im_end = core.im_start_id, core.im_end_id
        self.stop_token_ids = (core.im_end_id,)
        self.pad_id = model.config.pad_token_id
        self.banned_token_ids = tuple(
            sorted(
                {
                    self.ids.restored_pad,
                    model.config.image_token_id,
                    core.vision_start_id,
                    core.vision_end_id,
                    *model.cut_token_ids(),
                }
            )
        )
        self.restored_embeds = None
        self.batch = input_ids.shape[0]
        self.device = input_ids.device
        self.cache: BagelCache | None = None
        # Each row's full context as segments, and its prompt's parts (for the CFG contexts).
        self.main: list[list[Segment]] = [[] for _ in range(self.batch)]
        self.rows: list[RowPrompt] = []
        self.image_index: list[torch.Tensor] = []  # per row: cache indices of its degraded image blocks

    # -- running segments ---------------------------------------------------------------------------
    def _run(self, new: list[list[Segment]]) -> torch.Tensor:
        """Append each row's `new` segments (already in `self.main`); logits of each row's last token."""
        bagel = self.model.bagel
        if self.cfg.use_cache:
            output = bagel.forward(new, cache=self.cache, update_cache=True)
            self.cache = output.cache
        else:
            output = bagel.forward(self.main)
        last = torch.zeros(self.batch, dtype=torch.long, device=bagel.device)
        for span in output.packed.spans:
            last[span.sample] = span.end - 1  # an image block ends with its `<|vision_end|>` marker
        return bagel.text_logits(output, last).float()

    def _hide(self, rows: list[int]) -> None:
        """Hide `rows`' degraded image blocks from every later query."""
        for row in rows:
            self.cache.visible[self.image_index[row]] = False

    # -- the decoder protocol ---------------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each row's prompt: text segments, and at its `<|image_pad|>` the image's VAE and ViT blocks."""
        if self.degraded_latents is None:
            if self.vae_pixel_values is None:
                raise ValueError("BAGEL prompts need vae_pixel_values or degraded_latents (the VAE block)")
            self.degraded_latents = self.model.encode_latents(self.vae_pixel_values).float()
        placeholder = self.model.config.image_token_id
        head: list[list[Segment]] = []  # through the image blocks
        tail: list[list[Segment]] = []  # after them
        for row in range(self.batch):
            ids = input_ids[row][attention_mask[row].bool()]
            where = (ids == placeholder).nonzero().squeeze(1).tolist()
            if len(where) != 1:
                raise ValueError(
                    f"row {row}: a BAGEL prompt holds one <|image_pad|> placeholder, found {len(where)}"
                )
            before, after = ids[: where[0]], ids[where[0] + 1 :]
            h, w = self.vit_sizes[row].tolist()
            blocks = [LatentSegment(self.degraded_latents[row]), VitSegment(self.vit_pixels[row, :, :h, :w])]
            head.append(([TextSegment(before)] if before.numel() else []) + blocks)
            tail.append([TextSegment(after)] if after.numel() else [])
            self.rows.append(RowPrompt(before, blocks, after))
            for segment in head[row] + tail[row]:
                _extend(self.main[row], segment)
        if not self.cfg.use_cache:
            return self._run(head)
        # Two passes, so that `oracle` can hide the image from the question on.
        output = self.model.bagel.forward(head, update_cache=True)
        self.cache = output.cache
        self.image_index = [torch.zeros(0, dtype=torch.long, device=self.cache.visible.device)] * self.batch
        for span in output.packed.spans:
            if span.kind != "text":
                index = torch.arange(span.start, span.end, device=self.cache.visible.device)
                self.image_index[span.sample] = torch.cat([self.image_index[span.sample], index])
        if self.cfg.restore == "oracle":
            self._hide(list(range(self.batch)))
        if not any(tail):
            raise ValueError("BAGEL prompts end with text after the image (the question and `<|im_start|>`)")
        return self._run(tail)

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        new: list[list[Segment]] = []
        for row, (token, moving) in enumerate(zip(tokens.tolist(), active.tolist())):
            if not moving:
                new.append([])
                continue
            restore = token == self.ids.image_restore
            segment = TextSegment(torch.tensor([token, self.im_end] if restore else [token]))
            _extend(self.main[row], segment)
            self.rows[row].written.append(token)
            new.append([segment])
        return self._run(new)

    def restoration_context(self, rows: torch.Tensor) -> BagelRestorationContext:
        """The rows' cached prefix (closed turn included) and, when guided, the two CFG contexts."""
        bagel = self.model.bagel
        index = rows.nonzero().squeeze(1)
        chosen = set(index.tolist())
        degraded = self.degraded_latents[index]
        cache = self.cache if self.cfg.use_cache else bagel.prefill(self.main).cache
        guidance = self.cfg.restoration.guidance
        unconditional = None
        if guidance is not None and self.cfg.restoration.sampler == "ode" and guidance.cfg_text > 1.0:
            turn = TurnIds(self.im_start, self.im_end, self.ids.image_restore)
            built = {r: cfg_contexts(self.rows[r], guidance.contexts, turn) for r in chosen}
            contexts = []
            for which in (0, 1):  # text-unconditional, image-unconditional
                picked = [built[r][which] if r in chosen else [] for r in range(self.batch)]
                contexts.append(BagelRestorationContext(bagel.prefill(picked).cache, index, degraded))
            unconditional = (contexts[0], contexts[1])
        return BagelRestorationContext(cache, index, degraded, unconditional)

    def append_restored(self, rows: torch.Tensor, restored_latents: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The restored latents as clean latent blocks (the bridge), or under `reencode` as ViT
        blocks of their decoded pixels (the paper's baseline), then `<|im_start|>`."""
        chosen = rows.nonzero().squeeze(1).tolist()
        if self.cfg.degraded_view == "drop":
            self._hide(chosen)
        blocks, slot = self._restored_blocks(chosen, restored_latents)
        new: list[list[Segment]] = [[] for _ in range(self.batch)]
        for row, block in zip(chosen, blocks):
            new[row] = [block, TextSegment(torch.tensor([self.im_start]))]
            for segment in new[row]:
                _extend(self.main[row], segment)
        return slot, self._run(new)

    def _restored_blocks(
        self, chosen: list[int], restored_latents: torch.Tensor
    ) -> tuple[list[Segment], int]:
        """One block per chosen row, and its length in `<|restored_pad|>` positions."""
        if self.cfg.readback == "bridge":
            return [LatentSegment(restored_latents[row]) for row in chosen], self.model.num_restored_tokens
        # Decoded to 8-bit pixels and resized like any input image, so the ViT sees what it would
        # see had the restoration been saved and loaded as a file.
        images = latents_to_images(self.model, restored_latents[chosen])
        views = [self.vit_view(image).to(self.vit_pixels) for image in images]
        patch = self.model.bagel.config.vit_json["patch_size"]
        _, height, width = views[0].shape  # the restorations of one batch share its VAE view size
        return [VitSegment(view) for view in views], (height // patch) * (width // patch)
