"""Inference presets for BAGEL-family folders: everything around the model that decides what it sees.

A BAGEL checkpoint answers what its inference code gives it: the sizes of its two image views, the
contexts and scales of its restoration's classifier-free guidance, and the count of denoising steps.
A `BagelPreset` holds one such set of values, each taken from the code that defines it (the source
is named beside each value, as repository, file and line at the commit read):

- `clear-release` (the default for BAGEL and CLEAR folders): CLEAR's own evaluation
  (haoxiangzhao12138/CLEAR, `VLMEvalKit/vlmeval/vlm/bagel/`), what the paper's tables were made with;
- `bagel-upstream`: ByteDance's defaults (ByteDance-Seed/Bagel `app.py`, `inferencer.py`).

Beyond the views, CFG and steps, a preset fixes the protocol around the model: how its tags are
written (`tags`: plain text as the release writes them, or clear-rl's single tokens), the turn loop
of a restoration request (`max_turns`, `turn_tokens`), the system prompt of a folder that records none,
how a restoration enters the context (`readback`) and how the VAE posterior is read (`vae_posterior`).
A folder trained by clear-rl records its own tags (models/chat.py `saved_tags`), which win.

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

from clear_rl.choices import CfgContexts, Readback, Tags
from clear_rl.errors import ClearRLError
from clear_rl.io.images import pil_to_tensor

# BAGEL's ImageTransform default pixel cap (Bagel data/transforms.py, ImageTransform.__init__).
MAX_PIXELS = 14 * 14 * 9 * 1024
VaePosterior = Literal["sample", "mode"]

# CLEAR's INTERLEAVE_REASON_SYSTEM_PROMPT (haoxiangzhao12138/CLEAR prompts.py @14edc90 L7-39), character
# for character, its closing newline included: what the release's inferencer writes as the first text
# turn (`interleave_reason_tool_condition`: update_context_text(INTERLEAVE_REASON_SYSTEM_PROMPT, ...)).
RELEASE_SYSTEM_PROMPT = """You are a specialized multimodal assistant. Your purpose is to solve visual question \
answering tasks by thinking step-by-step and utilizing an image restoration tool when necessary.

# Skills

You can trigger image restoration by generating the following special token sequence:
<image_restore>

This tool performs enhancement operations (e.g., deblurring, denoising) on the input image to reveal details \
that are currently obscured.

# Instruction

1. **Reasoning (`<think>`):** In each turn, you must start with a <think> tag. Inside, conduct a step-by-step \
reasoning process:
   - **Analyze Image Quality:** Identify degradations (blur, noise, low resolution, etc.).
   - **Assess Sufficiency:** Determine if the current image quality allows you to answer the question confidently.

2. **Tool Usage:**
   - If the degradation prevents you from seeing critical details required for the answer, you MUST trigger \
the restoration tool by outputting: <image_restore>.
   - If the answer is visible despite the degradation, do NOT use the tool.

3. **Answering (`<answer>`):**
   - After reasoning (and potential restoration), provide your final response in the <answer> tag.
   - The answer should be natural, concise, and direct.

4. **Format:** Keep your output compact. Avoid unnecessary newlines between tags.

The structure of your response should follow these patterns:

**Scenario 1: Restoration Needed**
<think>The image is heavily blurred, making the text unreadable. I need to restore it to extract the \
information.</think> <image_restore> <think>The restored image is clear. The text says "EXIT".</think>\
<answer>The text on the sign is "EXIT".</answer>

**Scenario 2: Direct Answer**
<think>Although there is some noise, the red car is clearly visible in the foreground.</think><answer>The car is \
red.</answer>
"""


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
    """The restoration's CFG as a preset sets it: the fields of `clear_rl.rollout.restoration.RestorationGuidance`
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
    # -- the protocol around the model ------------------------------------------------------------
    # "text": <think>, <answer>, <image_restore> are plain text (several tokens each) and a finished turn
    # holding the text <image_restore> asks for a restoration; "tokens": clear-rl's single tokens.
    tags: Tags
    max_turns: int  # text turns a row may write (tags "text"); a restoration may follow each but the last
    turn_tokens: int  # model-written tokens a turn holds at most; a longer turn is closed there
    system_prompt: str | None  # the prompt of a folder that records none (None: clear-rl's default)
    readback: Readback  # how a restoration enters the context (clear_rl.models.readback.READBACKS)
    vae_posterior: VaePosterior  # encoding an image: a (seeded) sample of the VAE posterior, or its mode
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
            ("protocol tags", TAG_DESCRIPTIONS[self.tags]),
            ("turns", f"at most {self.max_turns}, {self.turn_tokens} tokens each (tags text)"),
            (
                "system prompt",
                "CLEAR's INTERLEAVE_REASON_SYSTEM_PROMPT" if self.system_prompt else "clear-rl's default",
            ),
            ("readback", READBACK_DESCRIPTIONS[self.readback]),
            ("VAE posterior", VAE_POSTERIOR_DESCRIPTIONS[self.vae_posterior]),
            *rollout,
        ]


TAG_DESCRIPTIONS = {
    "text": "text: <think>, <answer>, <image_restore> as plain text; a finished turn holding <image_restore> restores",
    "tokens": "tokens: clear-rl's single tokens; the token <image_restore> restores",
}
READBACK_DESCRIPTIONS = {
    "bridge": "bridge: the restored latent as a latent block",
    "reencode": "reencode: decoded to 8-bit pixels, a ViT block",
    "reencode-vae": "reencode-vae: decoded to 8-bit pixels, encoded by the VAE, a latent block",
}
VAE_POSTERIOR_DESCRIPTIONS = {"sample": "sampled (seeded)", "mode": "its mode"}


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
    # data/data_utils.py add_special_tokens adds only <|im_start|>-style markers; prompts.py writes the tags
    # in its text, and inferencer.py interleave_reason_tool_condition finds them with re.search on each turn
    tags="text",
    max_turns=3,  # bagel_inference.py L117: max_inter_num=3 (the loop's `inter_num >= max_inter_num`)
    # bagel_inference.py L118: max_think_token_n=4096, the max_length of generate_text, which counts the
    # turn's <|im_start|> (modeling/bagel/bagel.py generate_text appends its start token first): 4095
    turn_tokens=4095,
    system_prompt=RELEASE_SYSTEM_PROMPT,  # inferencer.py interleave_reason_tool_condition
    # config/per_degradation_eval.json @31fff3a L10-11 (and each <benchmark>_per_degradation.json):
    # output_need_vae true, output_need_vit false: inferencer.decode_image's 8-bit image, resized by the
    # VAE transform and encoded again (update_context_image(vae=True, vit=False)). BagelInference's own
    # default (bagel_inference.py L133-134, output_need_vit=True) is `reencode`.
    readback="reencode-vae",
    # modeling/autoencoder.py DiagonalGaussian(sample=True): every VAE encode draws from the posterior
    vae_posterior="sample",
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
    # ByteDance's inferencer has no restoration loop (interleave_inference writes one turn, then an image):
    # a restoration request is read as CLEAR's loop reads it, the only one a BAGEL checkpoint learned
    tags="text",
    max_turns=3,
    turn_tokens=999,  # inferencer.py interleave_inference max_think_token_n=1000, its start token counted
    system_prompt=None,  # interleave_inference: no system prompt unless think=True (VLM_THINK_SYSTEM_PROMPT)
    readback="reencode",  # update_context_image(vae=True, vit=True) of inputs; CLEAR's default ViT readback
    vae_posterior="sample",  # modeling/autoencoder.py DiagonalGaussian(sample=True)
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
