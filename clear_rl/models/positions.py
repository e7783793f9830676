"""Position ids of sequences holding image tokens and restored blocks, for M-RoPE VLMs.

A VLM with multimodal RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4V, ...: a `get_rope_index`
method) gives its image tokens 3D positions (temporal, height, width) laid out as the image's
token grid, and the text after an image continues from the largest of them + 1. A restored latent
is an image the model put back into its own context, so its `<|restored_pad|>` block gets the same
treatment: the block is shown to the VLM's own `get_rope_index` as one more image, of grid
`latent_bridge.grid_size(...)` (row-major, like the bridge's tokens), in its place. Using the VLM's
function rather than a copy of it keeps every detail (offsets, merge sizes, videos) exact.

The same positions serve the teacher-forced pass (`positions_for_forward`) and KV-cached generation
(`RolloutPositions`, which, like transformers' Qwen2-VL generation, computes the positions in full
when image or restored tokens enter and continues text with per-row rope deltas). A 1D-RoPE VLM
(LLaVA, ...) keeps its consecutive positions: these helpers return None or 2D ids for it.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

# The VLM inputs that `get_rope_index` reads besides the ids and the mask.
ROPE_INPUTS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")

TEXT, IMAGE, VIDEO = 0, 1, 2  # `mm_token_type_ids` values of transformers' processors


@functools.cache
def _takes_token_types(cls: type) -> bool:
    return "mm_token_type_ids" in inspect.signature(cls.get_rope_index).parameters


def rope_index_fn(vlm: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """The VLM's `get_rope_index` if it uses multimodal RoPE, else None (1D positions).

    Found on the VLM or its base model (transformers puts it on `Qwen2_5_VLModel`). A VLM whose
    `get_rope_index` does not take `mm_token_type_ids` (an older or unusual signature) is left to
    its own position logic, with a warning: restored blocks then get text positions.
    """
    for module in (vlm, getattr(vlm, "base_model", None), getattr(vlm, "model", None)):
        fn = getattr(module, "get_rope_index", None)
        if callable(fn):
            if _takes_token_types(type(module)):
                return fn
            warnings.warn(
                f"{type(module).__name__}.get_rope_index does not take mm_token_type_ids; restored "
                "blocks get the VLM's default positions, not image positions",
                stacklevel=3,
            )
            return None
    return None


def uses_mrope(model) -> bool:
    """Whether the composed model's VLM gives image tokens multimodal (3D) RoPE positions."""
    return rope_index_fn(model.vlm) is not None


def restored_block_grid(model) -> tuple[int, int]:
    """(rows, cols) of the restored block's tokens, row-major, as the bridge lays them out."""
    return model.latent_bridge.grid_size(model.latent_shape[1:])


def image_grid_thw_for(model, grid: tuple[int, int]) -> tuple[int, int, int]:
    """The (t, h, w) patch grid of an image whose LLM tokens form a `grid` of (rows, cols)."""
    merge = getattr(model.config.vlm_config.vision_config, "spatial_merge_size", 1)
    return 1, grid[0] * merge, grid[1] * merge


def _token_types(model, input_ids: torch.Tensor) -> torch.Tensor:
    """`mm_token_type_ids` with `<|restored_pad|>` positions marked as image tokens."""
    vlm_config = model.config.vlm_config
    types = torch.zeros_like(input_ids, dtype=torch.int)
    types[input_ids == model.config.image_token_id] = IMAGE
    types[input_ids == model.config.restored_pad_token_id] = IMAGE
    video = getattr(vlm_config, "video_token_id", None)
    if video is not None:
        types[input_ids == video] = VIDEO
    return types


def _image_grids(
    input_ids: torch.Tensor,
    layout: torch.Tensor,
    image_token_id: int,
    restored_pad_id: int,
    image_grid_thw: torch.Tensor | None,
    restored: tuple[int, int, int],
    block: int,
) -> torch.Tensor | None:
    """One (t, h, w) per image-typed run, in `get_rope_index`'s order: rows, then left to right.

    Runs of image tokens take the next grid of `image_grid_thw`; runs of `<|restored_pad|>` take
    the restored grid and must be exactly one block long.
    """
    given = list(image_grid_thw) if image_grid_thw is not None else []
    device = image_grid_thw.device if image_grid_thw is not None else input_ids.device
    restored_row = torch.tensor(restored, device=device, dtype=torch.long)
    grids: list[torch.Tensor] = []
    used = 0
    for row, (ids, keep) in enumerate(zip(input_ids, layout)):
        seq = ids[keep]
        visual = ((seq == image_token_id) | (seq == restored_pad_id)).int()
        edges = torch.diff(visual, prepend=visual.new_zeros(1), append=visual.new_zeros(1))
        starts, ends = (edges == 1).nonzero().squeeze(1).tolist(), (edges == -1).nonzero().squeeze(1).tolist()
        for start, end in zip(starts, ends):
            pads = int((seq[start:end] == restored_pad_id).sum())
            if pads == 0:
                if used == len(given):
                    raise ValueError(
                        f"row {row} holds more images than image_grid_thw has grids ({len(given)})"
                    )
                grids.append(given[used].to(device=device, dtype=torch.long))
                used += 1
            elif pads == end - start == block:
                grids.append(restored_row)
            else:
                raise ValueError(
                    f"row {row}: a run of {end - start} image/<|restored_pad|> tokens ({pads} placeholders) "
                    f"is not one restored block of {block} tokens standing apart from image tokens"
                )
    if used != len(given):
        raise ValueError(f"image_grid_thw has {len(given)} grids but the sequences hold {used} images")
    return torch.stack(grids) if grids else None


def multimodal_position_ids(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    restored_grid: tuple[int, int] | None = None,
    **vlm_inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(position ids (3, B, L), rope deltas (B, 1)) with restored blocks placed as images; None for 1D RoPE.

    Positions are laid out over the real tokens: left/right padding and generation's holes (mask 0)
    are skipped, but image and restored tokens count even where the mask hides them (CLEAR's ViT
    token dropout hides a row's image from attention, not from the layout). `restored_grid`
    overrides the bridge's (rows, cols), for tests of non-square grids.
    """
    rope_index = rope_index_fn(model.vlm)
    if rope_index is None:
        return None
    types = _token_types(model, input_ids)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    layout = mask | (types != TEXT)
    grid = restored_grid or restored_block_grid(model)
    grids = _image_grids(
        input_ids,
        layout,
        model.config.image_token_id,
        model.config.restored_pad_token_id,
        vlm_inputs.get("image_grid_thw"),
        image_grid_thw_for(model, grid),
        grid[0] * grid[1],
    )
    extra = {k: vlm_inputs[k] for k in ROPE_INPUTS[1:] if vlm_inputs.get(k) is not None}
    positions, deltas = rope_index(
        input_ids, mm_token_type_ids=types, image_grid_thw=grids, attention_mask=layout.long(), **extra
    )
    return positions, deltas.to(positions.device).view(-1, 1)


def positions_for_forward(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vlm_kwargs: Mapping[str, Any]
) -> torch.Tensor | None:
    """3D positions for a full teacher-forced pass of an M-RoPE VLM; None where the VLM's own apply.

    None for a 1D-RoPE VLM, when the caller passes `position_ids`, and when a non-empty cache means
    the ids are a continuation (whose positions only the caller, e.g. `RolloutPositions`, knows).
    """
    if vlm_kwargs.get("position_ids") is not None:
        return None
    cache = vlm_kwargs.get("cache", vlm_kwargs.get("past_key_values"))
    if cache is not None and cache.get_seq_length() > 0:
        return None
    result = multimodal_position_ids(model, input_ids, attention_mask, **vlm_kwargs)
    return None if result is None else result[0]


class RolloutPositions:
    """Position ids of a generation's growing sequence, equal to a full pass's over the same tokens.

    1D RoPE: the count of real positions before each token (holes and padding skipped). M-RoPE:
    computed in full whenever the new ids hold image or restored tokens (the prompt, a restored
    block) or the caller recomputes the whole sequence; text in between continues with each row's
    rope delta (max position + 1 - real length), as transformers' Qwen2-VL generation does.
    """

    def __init__(self, model, vlm_inputs: Mapping[str, Any]):
        self.model = model
        self.inputs = {k: vlm_inputs[k] for k in ROPE_INPUTS if vlm_inputs.get(k) is not None}
        self.mrope = uses_mrope(model)
        self.deltas: torch.Tensor | None = None

    def __call__(self, seq_ids: torch.Tensor, seq_mask: torch.Tensor, new: int) -> torch.Tensor:
        """Positions of the last `new` tokens of the sequence: (B, new), or (3, B, new) for M-RoPE."""
        text = (seq_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new:]
        if not self.mrope:
            return text
        tail = seq_ids[:, -new:]
        if (
            self.deltas is None
            or new == seq_ids.shape[1]
            or bool((_token_types(self.model, tail) != TEXT).any())
        ):
            positions, self.deltas = multimodal_position_ids(self.model, seq_ids, seq_mask, **self.inputs)
            return positions[:, :, -new:]
        return (text + self.deltas).unsqueeze(0).expand(3, -1, -1)
