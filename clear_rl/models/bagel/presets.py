"""Inference presets for BAGEL-family folders: everything around the model that decides what it sees.

A BAGEL checkpoint answers what its inference code gives it: the sizes of its two image views, the
contexts and scales of its restoration's classifier-free guidance, and the count of denoising steps.
A `BagelPreset` holds one such set of values, each taken from the code that defines it (the source
is named beside each value, as repository, file and line at the commit read):

- `clear-release` (the default for BAGEL and CLEAR folders): CLEAR's own evaluation
  (haoxiangzhao12138/CLEAR, `VLMEvalKit/vlmeval/vlm/bagel/`), what the paper's tables were made with;
- `bagel-upstream`: ByteDance's defaults (ByteDance-Seed/Bagel `app.py`, `inferencer.py`).

Steps: BAGEL's `num_timesteps=N` samples `linspace(1, 0, N)`, which is N - 1 Euler steps (Bagel
`modeling/bagel/bagel.py` L693-696, `generate_image`). clear-rl counts steps: `steps=N` and
`restoration_steps: N` are N Euler steps (N network evaluations) for every backbone, so a preset keeps
the release's `num_timesteps` and gives `steps = num_timesteps - 1`.

The release's numbers are for BAGEL-7B-MoT's geometry (14 px ViT patches, 70 a side; 16 px latent
tokens, 64 a side). `fitted` keeps them on that geometry and clamps them to what a smaller model holds
(the tests' tiny BAGEL), so a preset runs on any official-layout folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from PIL import Image

from clear_rl.errors import ClearRLError
from clear_rl.io.images import pil_to_tensor

# BAGEL's ImageTransform default pixel cap (Bagel data/transforms.py, ImageTransform.__init__).
MAX_PIXELS = 14 * 14 * 9 * 1024
CfgContexts = Literal["drop-thought", "drop-tag", "upstream"]
CFG_CONTEXTS: tuple[str, ...] = ("drop-thought", "drop-tag", "upstream")


@dataclass(frozen=True)
class ImageTransformSpec:
    """BAGEL's `ImageTransform(max_image_size, min_image_size, image_stride, max_pixels)`: the resize
    of `MaxLongEdgeMinShortEdgeResize`, bicubic, then [-1, 1].

    The size arithmetic is the official one, rounding and all (Bagel `data/transforms.py`
    `MaxLongEdgeMinShortEdgeResize._make_divisible`, `_apply_scale`, `forward`: L48-84 of the verbatim
    copy CLEAR's eval imports, haoxiangzhao12138/CLEAR `VLMEvalKit/vlmeval/vlm/bagel/data/transforms.py`
    @a65d61f): each side is rounded twice with Python's half-to-even `round` (to a pixel, then to a
    stride multiple), the pixel cap scales each side by the *area* ratio, and the long-edge clamp
    rounds rather than floors. Written here rather than imported: the official module needs
    flash-attn-era dependencies and a GPU stack clear-rl does not.
    """

    max_size: int
    min_size: int
    stride: int
    max_pixels: int = MAX_PIXELS

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of (width, height) after the resize."""
        scale = min(self.max_size / max(width, height), 1.0)
        scale = max(scale, self.min_size / min(width, height))
        new_w, new_h = self._scaled(width, height, scale)
        if new_w * new_h > self.max_pixels:
            # As released: the area ratio, not its square root, scales each side.
            new_w, new_h = self._scaled(new_w, new_h, self.max_pixels / (new_w * new_h))
        if max(new_w, new_h) > self.max_size:
            new_w, new_h = self._scaled(new_w, new_h, self.max_size / max(new_w, new_h))
        return new_w, new_h

    def _scaled(self, width: int, height: int, scale: float) -> tuple[int, int]:
        return self._multiple(round(width * scale)), self._multiple(round(height * scale))

    def _multiple(self, value: int) -> int:
        return max(self.stride, int(round(value / self.stride) * self.stride))

    def resize(self, image: Image.Image) -> Image.Image:
        """The RGB image at `size` (bicubic, as torchvision resizes a PIL image)."""
        image = image.convert("RGB")
        size = self.size(*image.size)
        return image.resize(size, Image.Resampling.BICUBIC) if size != image.size else image

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> (3, H, W) in [-1, 1] (ToTensor, then Normalize(0.5, 0.5))."""
        return pil_to_tensor(self.resize(image)).mul(2.0).sub(1.0)

    def fitted(self, stride: int, largest: int) -> ImageTransformSpec:
        """This transform on a model with `stride`-pixel patches and room for `largest` pixels a side:
        itself where it fits (BAGEL-7B-MoT), else clamped to the model (sides and pixel cap)."""
        if stride == self.stride and self.max_size <= largest:
            return self
        max_size = max(stride, min(self.max_size, largest) // stride * stride)
        return ImageTransformSpec(
            max_size=max_size,
            min_size=min(self.min_size, max(stride, max_size // 2)),
            stride=stride,
            max_pixels=min(self.max_pixels, max_size * max_size),
        )

    def describe(self) -> str:
        return (
            f"ImageTransform({self.max_size}, {self.min_size}, {self.stride}, max_pixels={self.max_pixels})"
        )


@dataclass(frozen=True)
class PresetGuidance:
    """The restoration's CFG as a preset sets it: the fields of `clear_rl.restoration.RestorationGuidance`
    (which lives a layer above the models and is built from these)."""

    cfg_text: float
    cfg_img: float
    renorm: str
    renorm_min: float
    interval: tuple[float, float]
    contexts: CfgContexts


@dataclass(frozen=True)
class BagelPreset:
    """One named set of inference values for a BAGEL-family model (see the module docstring)."""

    name: str
    summary: str
    vit: ImageTransformSpec  # the understanding view (ViT)
    vae: ImageTransformSpec  # the generation view (VAE latent), aspect ratio kept
    # Both official inferencers resize an input with the VAE transform first and give the ViT
    # transform that resized image, so the ViT view is vit(vae(image)).
    vit_from_vae_view: bool
    guidance: PresetGuidance
    timesteps: int  # the release's `num_timesteps` of an evaluation's (ODE) restoration
    shift: float  # timestep shift of the sampling schedule
    greedy: bool  # text decoding: greedy (do_sample=False)
    # The release's RL rollouts, as its GRPO script sets them (None: the source sets none).
    rollout_sde_timesteps: int | None = None
    rollout_ode_timesteps: int | None = None

    @property
    def steps(self) -> int:
        """Euler steps of an evaluation's restoration: `timesteps` - 1 (see the module docstring)."""
        return timesteps_to_steps(self.timesteps)

    def fitted(self, config) -> BagelPreset:
        """This preset's views on a model of `config`'s geometry (a `BagelConfig`): the release's
        values on BAGEL-7B-MoT's, clamped to a smaller model's patch and position tables."""
        vit_patch = config.vit_json["patch_size"]
        vit = self.vit.fitted(vit_patch, vit_patch * config.vit_max_num_patch_per_side)
        token = config.latent_downsample
        vae = self.vae.fitted(token, token * config.max_latent_size)
        return replace(self, vit=vit, vae=vae)

    def rows(self) -> list[tuple[str, str]]:
        """(setting, value) of every value, for reports and docs."""
        g = self.guidance
        rollout = [
            ("RL rollout SDE", f"num_timesteps {self.rollout_sde_timesteps} = "
             f"{timesteps_to_steps(self.rollout_sde_timesteps)} steps"),
        ] if self.rollout_sde_timesteps else []  # fmt: skip
        if self.rollout_ode_timesteps:
            rollout.append(
                ("RL rollout ODE", f"num_timesteps {self.rollout_ode_timesteps} = "
                 f"{timesteps_to_steps(self.rollout_ode_timesteps)} steps")
            )  # fmt: skip
        return [
            ("ViT view", self.vit.describe() + (" of the VAE view" if self.vit_from_vae_view else "")),
            ("VAE view", self.vae.describe() + ", aspect ratio kept"),
            ("CFG text / image scale", f"{g.cfg_text} / {g.cfg_img}"),
            ("CFG renorm", f"{g.renorm} (min {g.renorm_min})"),
            ("CFG interval", f"t in ({g.interval[0]}, {g.interval[1]}]"),
            ("CFG contexts", g.contexts),
            ("restoration steps", f"{self.steps} Euler steps (num_timesteps {self.timesteps})"),
            ("timestep shift", f"{self.shift}"),
            ("text decoding", "greedy" if self.greedy else "sampled"),
            *rollout,
        ]


def timesteps_to_steps(num_timesteps: int) -> int:
    """BAGEL's `num_timesteps=N` (`linspace(1, 0, N)`) as clear-rl's step count: N - 1 Euler steps."""
    if num_timesteps < 2:
        raise ClearRLError(
            f"num_timesteps must be >= 2 (linspace(1, 0, N) has N - 1 steps), got {num_timesteps}"
        )
    return num_timesteps - 1


# CLEAR's evaluation (haoxiangzhao12138/CLEAR, VLMEvalKit/vlmeval/vlm/bagel/, read at 0047030; the
# inferencer at its stored version): BagelInference(...) and InterleaveInferencer.interleave_reason_tool_condition.
CLEAR_RELEASE = BagelPreset(
    name="clear-release",
    summary="CLEAR's own evaluation (VLMEvalKit BagelInference, reasoning_mode interleave)",
    # bagel_inference.py L188: self.vit_transform = ImageTransform(518, 224, 14) (also demo.py L88-89;
    # its GRPO training, train/grpo/interleave_grpo.py main(), uses the same)
    vit=ImageTransformSpec(518, 224, 14),
    # bagel_inference.py L187: self.vae_transform = ImageTransform(1024, 512, 16)
    vae=ImageTransformSpec(1024, 512, 16),
    # inferencer.py interleave_reason_tool_condition: input_term = self.vae_transform.resize_transform(
    # ...), then update_context_image(input_term, ...) gives it to vit_transform
    vit_from_vae_view=True,
    guidance=PresetGuidance(
        cfg_text=3.0,  # bagel_inference.py L125: cfg_text_scale=3.0
        cfg_img=1.5,  # bagel_inference.py L126: cfg_img_scale=1.5
        renorm="text_channel",  # bagel_inference.py L131: cfg_renorm_type="text_channel"
        renorm_min=0.0,  # bagel_inference.py L130: cfg_renorm_min=0.0
        interval=(0.4, 1.0),  # bagel_inference.py L127: cfg_interval=[0.4, 1.0]
        # inferencer.py interleave_reason_tool_condition (~L639): consider_think=True, which the eval
        # never overrides; L718-726: only `not consider_think` re-adds the thought, so the
        # text-unconditional context is the prefix before the thought turn
        contexts="drop-thought",
    ),
    timesteps=50,  # bagel_inference.py L129: num_timesteps=50
    shift=3.0,  # bagel_inference.py L128: timestep_shift=3.0
    greedy=True,  # bagel_inference.py L123: do_sample=False
    # scripts/train_reason_interleave_grpo.sh @411d6bd L63: --num_timesteps_train 20 (the SDE
    # trajectory's), L41: --num_timesteps 30 (the rollout inferencer's ODE count)
    rollout_sde_timesteps=20,
    rollout_ode_timesteps=30,
)

# ByteDance's defaults (ByteDance-Seed/Bagel: app.py @a384f61, inferencer.py @5c4703e).
BAGEL_UPSTREAM = BagelPreset(
    name="bagel-upstream",
    summary="ByteDance's BAGEL defaults (app.py transforms, InterleaveInferencer.interleave_inference)",
    vit=ImageTransformSpec(980, 224, 14),  # app.py L72: vit_transform = ImageTransform(980, 224, 14)
    vae=ImageTransformSpec(1024, 512, 16),  # app.py L71: vae_transform = ImageTransform(1024, 512, 16)
    # inferencer.py L246-247: vae_transform.resize_transform(...) then update_context_image (ViT too)
    vit_from_vae_view=True,
    guidance=PresetGuidance(
        cfg_text=3.0,  # inferencer.py L215: cfg_text_scale=3.0
        cfg_img=1.5,  # inferencer.py L216: cfg_img_scale=1.5
        renorm="global",  # inferencer.py L221: cfg_renorm_type="global"
        renorm_min=0.0,  # inferencer.py L220: cfg_renorm_min=0.0
        interval=(0.4, 1.0),  # inferencer.py L217: cfg_interval=[0.4, 1.0]
        # inferencer.py L239-250: cfg_text_context is the context before the last input text (the
        # question; no model-written turn), cfg_img_context the input texts without the images
        contexts="upstream",
    ),
    timesteps=50,  # inferencer.py L219: num_timesteps=50
    shift=3.0,  # inferencer.py L218: timestep_shift=3.0
    greedy=True,  # inferencer.py L213: do_sample=False
)

PRESETS: dict[str, BagelPreset] = {p.name: p for p in (CLEAR_RELEASE, BAGEL_UPSTREAM)}
DEFAULT_PRESET = CLEAR_RELEASE.name


def get_preset(name: str | BagelPreset | None) -> BagelPreset:
    """The preset called `name` (None: the default, clear-release)."""
    if isinstance(name, BagelPreset):
        return name
    name = DEFAULT_PRESET if name is None else name
    if name not in PRESETS:
        raise ClearRLError(f"unknown BAGEL preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name]
