"""The two unconditional contexts of a BAGEL restoration's classifier-free guidance, as each release
builds them.

BAGEL guides a restoration with three contexts: the full one (everything up to the restoration), one
without text ("text-unconditional") and one without the images ("image-unconditional"). Which text
the second one drops is where the releases differ, and it changes the guided velocity:

- `drop-thought` (CLEAR's eval; its inferencer's default `consider_think=True`): the text-unconditional
  context is the prefix before the model's thought turn (system, images, question); the
  image-unconditional one is every text turn, the thought with its `<image_restore>` included.
- `drop-tag` (CLEAR's `consider_think=False`): the text-unconditional context keeps the thought turn
  with only the `<image_restore>` tag removed; the image-unconditional one as above.
- `upstream` (ByteDance's `InterleaveInferencer.interleave_inference`): neither context holds a
  model-written turn; the text-unconditional one stops before the last input text (the question),
  the image-unconditional one is the input texts without the images.

A row is held as the parts a prompt is made of (`RowPrompt`); `cfg_contexts` returns the two contexts
as segment lists, so that they can be checked token by token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clear_rl.models.bagel.modeling import Segment, TextSegment
from clear_rl.models.bagel.presets import CFG_CONTEXTS


@dataclass
class RowPrompt:
    """One row as the decoder saw it: text before the image, the image's blocks, the text after it
    (the question turn, then the answer turn's `<|im_start|>`), and the model's tokens since."""

    before: torch.Tensor  # (n,) ids before the image (e.g. the system turn)
    blocks: list[Segment]  # the image's VAE-latent block and ViT block
    after: torch.Tensor  # (m,) ids after the image, ending with the answer turn's `<|im_start|>`
    written: list[int] = field(default_factory=list)  # model-written ids of the open turn


@dataclass(frozen=True)
class TurnIds:
    """The marker ids the contexts are framed with."""

    im_start: int
    im_end: int
    image_restore: int


def _text(*parts: torch.Tensor | list[int]) -> list[Segment]:
    ids = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in parts]
    joined = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
    return [TextSegment(joined)] if joined.numel() else []


def cfg_contexts(row: RowPrompt, contexts: str, ids: TurnIds) -> tuple[list[Segment], list[Segment]]:
    """(text-unconditional, image-unconditional) segments of a row restoring at the end of its open
    turn (`written` ends with `<image_restore>`; the turn is closed with `<|im_end|>`)."""
    if contexts not in CFG_CONTEXTS:
        raise ValueError(f"CFG contexts must be one of {list(CFG_CONTEXTS)}, got {contexts!r}")
    after = row.after.tolist()
    opens = bool(after) and after[-1] == ids.im_start  # the answer turn's opener ends the prompt
    question, opener = (after[:-1], after[-1:]) if opens else (after, [])
    turn = [*opener, *row.written, ids.im_end]
    blocks = list(row.blocks)
    image_uncond = _text(row.before, question, turn)  # CLEAR: every text turn, the thought included
    if contexts == "drop-thought":
        text_uncond = _text(row.before) + blocks + _text(question)
    elif contexts == "drop-tag":
        kept = [*opener, *(t for t in row.written if t != ids.image_restore), ids.im_end]
        text_uncond = _text(row.before) + blocks + _text(question, kept)
    else:  # upstream: no model-written turn in either; the question out of the text one
        text_uncond = _text(row.before) + blocks
        image_uncond = _text(row.before, question)
    return _merged(text_uncond), image_uncond


def _merged(segments: list[Segment]) -> list[Segment]:
    """Consecutive text segments joined (the packer takes fewer, longer segments)."""
    out: list[Segment] = []
    for segment in segments:
        if isinstance(segment, TextSegment) and out and isinstance(out[-1], TextSegment):
            out[-1] = TextSegment(torch.cat([out[-1].input_ids, segment.input_ids]))
        else:
            out.append(segment)
    return out
