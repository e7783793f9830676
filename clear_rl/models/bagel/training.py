"""BAGEL's teacher-forced pass over token-id batches: what the trainers' forward calls become.

The trainers (and TRL) speak in padded token-id batches, as for any VLM; BAGEL runs on packed
segments. `layout_batch` turns each row into segments the way `BagelDecoder` builds them during a
rollout, so a training pass sees exactly what generation saw:

- the prompt's `<|image_pad|>` becomes the image's VAE-latent block (clean, t = 0) and its ViT block
  (left out where the attention mask hides the placeholder: CLEAR's ViT-token dropout);
- a model-written `<image_restore>` (one after the image; the system prompt may name the tag
  before it) closes its turn (an implied `<|im_end|>`), and for flow rows K noised latent
  blocks x_t follow: bidirectional inside, hidden from every later token, at one position that does
  not advance (nothing later sees them), so the generation expert predicts their velocity from the
  prefix alone, as `velocity` does from the KV cache at sampling time;
- the run of `<|restored_pad|>` placeholders becomes the restored latent's clean block (the
  bridge), followed by an implied `<|im_start|>` that opens the next turn.

Each id position maps to the packed token whose output predicts the id after it (the last
placeholder to the implied `<|im_start|>`), so logits line up with labels as in a plain VLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clear_rl.errors import ClearRLError
from clear_rl.models.bagel.latents import unpatchify_latent
from clear_rl.models.bagel.modeling import BagelOutput, LatentSegment, Segment, Span, TextSegment, VitSegment


@dataclass
class RowLayout:
    """One row's segments, and for each of its id positions (segment number, offset in it)."""

    segments: list[Segment] = field(default_factory=list)
    where: dict[int, tuple[int, int]] = field(default_factory=dict)
    vit: int | None = None  # segment number of the prompt image's ViT block
    image: list[int] = field(default_factory=list)  # ... of its blocks (VAE and ViT): the degraded view
    restored: int | None = None  # ... of the bridge block
    noised: list[int] = field(default_factory=list)  # ... of the noised blocks, in step order


@dataclass
class BatchLayout:
    """A batch's rows laid out for one packed pass; `index` (B, L) maps id positions to packed tokens."""

    rows: list[RowLayout]
    spans: list[list[Span]]  # per row, one span per segment
    index: torch.Tensor  # (B, L) long, -1 on padding

    def span(self, row: int, segment: int | None) -> Span | None:
        return None if segment is None else self.spans[row][segment]


@dataclass
class TokenIds:
    """The ids `layout_batch` reads and writes."""

    image_pad: int
    image_restore: int
    restored_pad: int
    im_start: int
    im_end: int


class _Builder:
    """Accumulates one row's segments; text is buffered so consecutive tokens form one segment."""

    def __init__(self) -> None:
        self.row = RowLayout()
        self.text: list[int] = []
        self.text_positions: list[int | None] = []

    def token(self, token: int, position: int | None) -> None:
        self.text.append(token)
        self.text_positions.append(position)

    def flush(self) -> None:
        if not self.text:
            return
        number = len(self.row.segments)
        self.row.segments.append(TextSegment(torch.tensor(self.text, dtype=torch.long)))
        for offset, position in enumerate(self.text_positions):
            if position is not None:
                self.row.where[position] = (number, offset)
        self.text, self.text_positions = [], []

    def block(self, segment: Segment) -> int:
        self.flush()
        self.row.segments.append(segment)
        return len(self.row.segments) - 1


def layout_row(
    ids: torch.Tensor,
    keep: torch.Tensor,
    visible: torch.Tensor,
    token_ids: TokenIds,
    degraded: torch.Tensor,
    vit_pixels: torch.Tensor | None,
    restored: torch.Tensor | None,
    noised: list[tuple[torch.Tensor, torch.Tensor]],
    slot_length: int,
    stop_after_restore: bool = False,
) -> RowLayout:
    """One row's segments (see the module docstring); `keep` (L,) the real positions, `visible` (L,)
    the attention mask, `noised` [(x_t, t)] the flow blocks after `<image_restore>`."""
    build = _Builder()
    positions = keep.nonzero().squeeze(1).tolist()
    tokens = ids.tolist()
    after_image = False  # a tag before the image is the prompt naming it (the system prompt does)
    i = 0
    while i < len(positions):
        p = positions[i]
        token = tokens[p]
        if token == token_ids.image_pad:
            after_image = True
            build.row.image.append(last := build.block(LatentSegment(degraded)))
            if bool(visible[p]) and vit_pixels is not None:
                build.row.vit = last = build.block(VitSegment(vit_pixels))
                build.row.image.append(last)
            build.row.where[p] = (last, -1)  # the block's closing marker
        elif token == token_ids.image_restore and after_image:
            build.token(token, p)
            build.token(token_ids.im_end, None)
            for x_t, t in noised:
                build.row.noised.append(build.block(LatentSegment(x_t, t, noised=True)))
            noised = []
            if stop_after_restore:
                build.flush()
                return build.row
        elif token == token_ids.restored_pad:
            run = positions[i : i + slot_length]
            if len(run) != slot_length or any(tokens[q] != token_ids.restored_pad for q in run):
                raise ClearRLError(
                    f"a restored slot holds {slot_length} consecutive <|restored_pad|> tokens; this row's does not"
                )
            if restored is None:
                raise ClearRLError(
                    "input_ids hold <|restored_pad|> tokens but no restored_latents were given"
                )
            build.row.restored = number = build.block(LatentSegment(restored))
            for offset, q in enumerate(run[:-1]):
                build.row.where[q] = (number, offset + 1)
            build.token(token_ids.im_start, run[-1])  # the implied turn opener predicts the next text
            i += slot_length
            continue
        else:
            build.token(token, p)
        i += 1
    if noised:
        raise ClearRLError("a flow row of a BAGEL training pass has no <image_restore> to restore at")
    build.flush()
    return build.row


def layout_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_ids: TokenIds,
    degraded_latents: torch.Tensor,
    pixel_values: torch.Tensor | None,
    image_sizes: torch.Tensor | None,
    restored_latents: torch.Tensor | None,
    flow: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    slot_length: int,
    pack: Callable,
    stop_after_restore: bool = False,
) -> tuple[BatchLayout, object]:
    """Every row's layout and the packed sequence (`pack` is `BagelModel.pack`)."""
    if attention_mask.dim() != 2:
        raise ClearRLError(
            "BAGEL's training pass takes a (batch, length) attention mask, not a per-query one: hide the "
            "degraded view with `hidden_view_inputs` (hide_view_from)"
        )
    visible = attention_mask.bool()
    keep = visible | (input_ids == token_ids.image_pad)  # a hidden placeholder still stands for its VAE block
    rows = []
    for b in range(input_ids.shape[0]):
        pixels = None
        if pixel_values is not None and image_sizes is not None:
            h, w = image_sizes[b].tolist()
            pixels = pixel_values[b, :, :h, :w]
        noised = []
        if flow is not None and bool(flow[2][b]):
            noised = [(flow[0][b, k], flow[1][b, k]) for k in range(flow[0].shape[1])]
        rows.append(
            layout_row(
                input_ids[b],
                keep[b],
                visible[b],
                token_ids,
                degraded_latents[b],
                pixels,
                None if restored_latents is None else restored_latents[b],
                noised,
                slot_length,
                stop_after_restore,
            )
        )
    packed = pack([row.segments for row in rows])
    spans: list[list[Span]] = [[] for _ in rows]
    for span in packed.spans:
        spans[span.sample].append(span)
    index = torch.full(input_ids.shape, -1, dtype=torch.long)
    for b, row in enumerate(rows):
        for position, (number, offset) in row.where.items():
            span = spans[b][number]
            index[b, position] = span.end - 1 if offset == -1 else span.start + offset
    return BatchLayout(rows, spans, index.to(input_ids.device)), packed


def gather_positions(layout: BatchLayout, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """(B, K) packed indices of the id positions whose logits are asked for (0 on padding)."""
    length = layout.index.shape[1]
    if torch.is_tensor(logits_to_keep):
        positions = logits_to_keep.to(layout.index.device)
    else:
        keep = length if logits_to_keep in (0, None) else int(logits_to_keep)
        positions = torch.arange(length - keep, length, device=layout.index.device)
    return layout.index[:, positions].clamp(min=0)


def noised_velocities(
    model, output: BagelOutput, layout: BatchLayout, flow_latents: torch.Tensor
) -> torch.Tensor:
    """(B, K, C, h, w) `llm2vae` of each noised block (zeros for rows without one)."""
    out = torch.zeros_like(flow_latents, dtype=torch.float32)
    p = model.config.latent_patch_size
    for b, row in enumerate(layout.rows):
        for k, number in enumerate(row.noised):
            span = layout.spans[b][number]
            tokens = model.llm2vae(output.last_hidden_state[span.inner_start : span.inner_end])
            c, h, w = span.grid
            out[b, k] = unpatchify_latent(tokens, c, h, w, p).float()
    return out


def block_states(output: BagelOutput, span: Span) -> torch.Tensor:
    """(layers, tokens, D) a block's hidden states at every layer's output (embeddings left out)."""
    return torch.stack([h[span.inner_start : span.inner_end] for h in output.hidden_states[1:]])


def hidden_view_mask(packed, layout: BatchLayout, hide_from: torch.Tensor) -> torch.Tensor:
    """The packed attention mask with each row's degraded view (its prompt image blocks) hidden from
    the block holding id position `hide_from[b]` on (its restored slot), as `BagelDecoder` hides it
    under `degraded_view="drop"`; a row whose `hide_from` is past its ids hides nothing."""
    mask = packed.attention_mask()
    for b, row in enumerate(layout.rows):
        position = int(hide_from[b])
        if position >= layout.index.shape[1] or int(layout.index[b, position]) < 0:
            continue
        start = next(
            span.start for span in layout.spans[b] if span.start <= layout.index[b, position] < span.end
        )
        end = layout.spans[b][-1].end
        for number in row.image:
            span = layout.spans[b][number]
            mask[start:end, span.start : span.end] = False
    return mask
