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
as segment lists, so that they can be checked token by token. A row may restore after a later turn
(the release's turn loop, tags "text"): what came between the prompt and that turn (`earlier`: finished
turns, earlier restorations' read-back blocks) belongs to both contexts as the release's inferencer
carries it, the input image's blocks excepted from the image-unconditional one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clear_rl.choices import CFG_CONTEXTS
from clear_rl.models.bagel.modeling import Segment, TextSegment


@dataclass
class RowPrompt:
    """One row as the decoder saw it: text before the image, the image's blocks, the text after it
    (the question turn, then the answer turn's `<|im_start|>`), and the model's tokens since."""

    before: torch.Tensor  # (n,) ids before the image (e.g. the system turn)
    blocks: list[Segment]  # the image's VAE-latent block and ViT block
    after: torch.Tensor  # (m,) ids after the image, ending with the answer turn's `<|im_start|>`
    written: list[int] = field(default_factory=list)  # model-written ids of the open turn
    # Since the prompt, before the open turn: finished turns (`<|im_end|>` closed), read-back blocks and
    # the open turn's `<|im_start|>`; empty while the first turn is open.
    earlier: list[Segment] = field(default_factory=list)
    # The open turn without its `<image_restore>` (`drop-tag`), where the tag is text: the turn's text
    # with the tag removed, re-tokenised (as the release builds it); None: `written` without the tag id.
    kept: list[int] | None = None


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
    blocks = list(row.blocks)
    # Everything before the open turn, with and without the input image; the turn's opener comes off.
    prefix, opener = _without_opener(
        _merged([*_text(row.before), *blocks, *_text(row.after), *row.earlier]), ids
    )
    text_only, _ = _without_opener(_merged([*_text(row.before), *_text(row.after), *row.earlier]), ids)
    turn = _text(opener, row.written, [ids.im_end])
    image_uncond = _merged(text_only + turn)  # CLEAR: every text turn, the thought included
    if contexts == "drop-thought":
        text_uncond = prefix
    elif contexts == "drop-tag":
        kept = row.kept if row.kept is not None else [t for t in row.written if t != ids.image_restore]
        text_uncond = prefix + _text(opener, kept, [ids.im_end])
    else:  # upstream: no model-written turn in either; the question out of the text one
        after = row.after.tolist()
        question = after[:-1] if after and after[-1] == ids.im_start else after
        text_uncond = _text(row.before) + blocks
        image_uncond = _text(row.before, question)
    return _merged(text_uncond), image_uncond


def _without_opener(segments: list[Segment], ids: TurnIds) -> tuple[list[Segment], list[int]]:
    """`segments` without the `<|im_start|>` that ends them (the open turn's), and that opener ([] if
    they do not end with one)."""
    last = segments[-1] if segments else None
    if (
        not isinstance(last, TextSegment)
        or not last.input_ids.numel()
        or int(last.input_ids[-1]) != ids.im_start
    ):
        return segments, []
    head = segments[:-1] + _text(last.input_ids[:-1])
    return head, [ids.im_start]


def _merged(segments: list[Segment]) -> list[Segment]:
    """Consecutive text segments joined (the packer takes fewer, longer segments)."""
    out: list[Segment] = []
    for segment in segments:
        if isinstance(segment, TextSegment) and out and isinstance(out[-1], TextSegment):
            out[-1] = TextSegment(torch.cat([out[-1].input_ids, segment.input_ids]))
        else:
            out.append(segment)
    return out
