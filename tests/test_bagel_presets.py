"""BAGEL inference presets against the release: the image transforms' official arithmetic on a table of
sizes, the two image views, the CFG contexts token by token, and the step convention.

The references here are transcriptions of the official code, kept apart from clear-rl's own: Bagel's
`MaxLongEdgeMinShortEdgeResize` (data/transforms.py; L48-84 of the verbatim copy in
haoxiangzhao12138/CLEAR VLMEvalKit/vlmeval/vlm/bagel/data/transforms.py @a65d61f) and the sampling
schedule of `Bagel.generate_image` (ByteDance-Seed/Bagel modeling/bagel/bagel.py L693-696).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from clear_rl.choices import PRESETS as PRESET_NAMES
from clear_rl.errors import ClearRLError
from clear_rl.models.bagel import build_tiny_bagel, build_tiny_tokenizer, load_bagel_unified
from clear_rl.models.bagel.backbone import PRESET_TAGS
from clear_rl.models.bagel.config import BagelConfig
from clear_rl.models.bagel.guidance import RowPrompt, TurnIds, cfg_contexts
from clear_rl.models.bagel.modeling import LatentSegment, TextSegment, VitSegment
from clear_rl.models.bagel.presets import (
    BAGEL_UPSTREAM,
    CLEAR_RELEASE,
    PRESETS,
    ImageTransformSpec,
    get_preset,
    timesteps_to_steps,
)
from clear_rl.models.bagel.processing import BagelProcessor
from clear_rl.rollout.interleaved import InterleavedGenerationConfig
from clear_rl.rollout.restoration import RestorationGuidance, RestorationSampling


# -- the official arithmetic, transcribed -------------------------------------------------------------
class OfficialResize:
    """Bagel's MaxLongEdgeMinShortEdgeResize, its size arithmetic line for line (img_num=1)."""

    def __init__(self, max_size, min_size, stride, max_pixels=14 * 14 * 9 * 1024):
        self.max_size, self.min_size, self.stride, self.max_pixels = max_size, min_size, stride, max_pixels

    def _make_divisible(self, value, stride):
        return max(stride, int(round(value / stride) * stride))

    def _apply_scale(self, width, height, scale):
        new_width = round(width * scale)
        new_height = round(height * scale)
        new_width = self._make_divisible(new_width, self.stride)
        new_height = self._make_divisible(new_height, self.stride)
        return new_width, new_height

    def size(self, width, height):
        scale = min(self.max_size / max(width, height), 1.0)
        scale = max(scale, self.min_size / min(width, height))
        new_width, new_height = self._apply_scale(width, height, scale)
        if new_width * new_height > self.max_pixels / 1:
            scale = self.max_pixels / 1 / (new_width * new_height)
            new_width, new_height = self._apply_scale(new_width, new_height, scale)
        if max(new_width, new_height) > self.max_size:
            scale = self.max_size / max(new_width, new_height)
            new_width, new_height = self._apply_scale(new_width, new_height, scale)
        return new_width, new_height


def _size_table() -> list[tuple[int, int]]:
    """260 (width, height) pairs: common photo and benchmark sizes, tiny and huge images, extreme
    aspect ratios, and log-uniform draws (seeded)."""
    common = [(224, 224), (336, 336), (448, 448), (512, 512), (640, 480), (800, 600), (1024, 768),
              (1280, 720), (1920, 1080), (3840, 2160), (645, 1205), (1205, 645), (980, 980), (518, 518),
              (1024, 1024), (2048, 2048), (4000, 3000), (6000, 4000), (300, 4000), (4000, 300)]  # fmt: skip
    small = [(w, h) for w in (1, 7, 14, 15, 28, 50, 99) for h in (1, 13, 32, 100)]
    extreme = [(30, 3000), (3000, 30), (100, 10000), (10000, 100), (17, 911), (911, 17)]
    rng = random.Random(0)
    drawn = [(int(10 ** rng.uniform(1.2, 3.8)), int(10 ** rng.uniform(1.2, 3.8))) for _ in range(206)]
    return common + small + extreme + drawn


TABLE = _size_table()
TRANSFORMS = {
    "clear-release ViT": (518, 224, 14),
    "bagel-upstream ViT": (980, 224, 14),
    "VAE": (1024, 512, 16),
}


def test_the_size_table_holds_at_least_200_pairs():
    assert len(TABLE) >= 200 and len(set(TABLE)) >= 200


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_sizes_equal_the_official_arithmetic(name):
    spec, official = ImageTransformSpec(*TRANSFORMS[name]), OfficialResize(*TRANSFORMS[name])
    mismatches = [(w, h) for w, h in TABLE if spec.size(w, h) != official.size(w, h)]
    assert mismatches == []


def test_sizes_the_issue_names():
    # 645x1205: the official arithmetic gives 532x980 at BAGEL's 980 cap; CLEAR's eval caps at 518.
    assert ImageTransformSpec(980, 224, 14).size(645, 1205) == (532, 980)
    assert CLEAR_RELEASE.vit.size(645, 1205) == (280, 518)
    # Half-to-even rounding: 14 * 2.5 rounds to 28 (2 strides), not 42.
    assert ImageTransformSpec(980, 14, 14).size(35, 35) == (28, 28)


def test_the_vae_transform_is_idempotent_so_the_releases_second_pass_changes_nothing():
    """The release resizes with the VAE transform, then gives that image to the full transform
    again (prepare_vae_images): a no-op on every size here, so restorations have the input's size."""
    vae = CLEAR_RELEASE.vae
    assert all(
        vae.size(*vae.size(w, h)) == vae.size(w, h) for w in range(16, 4100, 37) for h in range(16, 4100, 41)
    )


# -- the views ----------------------------------------------------------------------------------------
def _image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bagel") / "tiny-bagel"
    build_tiny_bagel(path, seed=0)
    return path


def test_release_views_on_bagel_7b_geometry(tokenizer):
    """On BAGEL-7B-MoT's geometry the preset is the release's own: the VAE view keeps the aspect
    ratio at ImageTransform(1024, 512, 16), the ViT view is ImageTransform(518, 224, 14) of it."""
    preset = CLEAR_RELEASE.fitted(BagelConfig())
    assert preset == CLEAR_RELEASE
    processor = BagelProcessor(tokenizer, preset)
    image = _image(645, 1205)
    vae_w, vae_h = OfficialResize(1024, 512, 16).size(645, 1205)
    assert processor.vae_size(image) == (vae_h, vae_w) == (1024, 544)
    assert tuple(processor.vae_pixel_values([image]).shape) == (1, 3, vae_h, vae_w)
    vit_w, vit_h = OfficialResize(518, 224, 14).size(vae_w, vae_h)
    view = processor.vit_view(image)
    assert tuple(view.shape) == (3, vit_h, vit_w)
    # ...of the VAE-resized image (bicubic twice), as both official inferencers take it.
    twice = image.resize((vae_w, vae_h), Image.Resampling.BICUBIC).resize(
        (vit_w, vit_h), Image.Resampling.BICUBIC
    )
    expected = torch.from_numpy(np.array(twice)).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    torch.testing.assert_close(view, expected, atol=0, rtol=0)
    upstream = BagelProcessor(tokenizer, BAGEL_UPSTREAM)
    assert tuple(upstream.vit_view(image).shape[1:]) == OfficialResize(980, 224, 14).size(vae_w, vae_h)[::-1]


def test_a_batch_of_several_vae_view_sizes_is_refused_and_grouped(tokenizer):
    from clear_rl.rollout.answering import vae_view_groups

    processor = BagelProcessor(tokenizer, CLEAR_RELEASE)
    images = [_image(1280, 960), _image(480, 640), _image(2560, 1920)]  # 1024x768, 512x688, 1024x768
    with pytest.raises(ClearRLError, match="one VAE view size"):
        processor.vae_pixel_values(images)
    assert vae_view_groups(processor, images) == [[0, 2], [1]]
    square = BagelProcessor(tokenizer, CLEAR_RELEASE, vae_image_size=512, vae_views="square")
    assert tuple(square.vae_pixel_values(images).shape) == (3, 3, 512, 512)


def test_presets_are_fitted_to_a_smaller_model_and_named(folder):
    model, processor = load_bagel_unified(folder, device="cpu")
    assert model.preset.name == "clear-release" and processor.preset is model.preset
    assert (model.preset.vit.max_size, model.preset.vit.stride) == (32, 4)  # 8 patches of 4 px
    assert (model.preset.vae.max_size, model.preset.vae.stride) == (32, 4)  # 8 tokens of 4 px
    assert model.preset.guidance == CLEAR_RELEASE.guidance
    upstream, _ = load_bagel_unified(folder, device="cpu", preset="bagel-upstream")
    assert upstream.preset.guidance.contexts == "upstream" and upstream.preset.guidance.renorm == "global"
    with pytest.raises(ClearRLError, match="unknown BAGEL preset"):
        get_preset("clear-relase")
    assert tuple(PRESETS) == PRESET_NAMES  # the recipe and CLI names, kept without importing torch
    # the tags each preset writes, as BAGEL's registry declaration gives them without importing torch
    assert {name: preset.tags for name, preset in PRESETS.items()} == PRESET_TAGS


def test_restorations_take_each_images_vae_view(folder):
    from clear_rl.rollout.answering import answer_batch

    model, processor = load_bagel_unified(folder, device="cpu", tags="tokens")
    image = _image(40, 24)  # tiny VAE view: 32 x 20, latent 16 x 10 (5 x 8 tokens)
    cfg = InterleavedGenerationConfig(max_new_tokens=3, do_sample=False, restore="always",
                                      restoration=RestorationSampling(steps=2))  # fmt: skip
    out = answer_batch(model, processor, [image], ["What?"], cfg, generator=torch.Generator().manual_seed(0))
    assert tuple(out.vae_pixel_values.shape) == (1, 3, 20, 32)
    assert tuple(out.output.restored_latents.shape) == (1, 4, 10, 16)
    assert int(out.output.restored_mask.sum()) == 5 * 8  # the bridged block: one token per 2x2 patch
    assert model.latent_shape == (4, 16, 16)  # outside the answer, the square training view


# -- the CFG contexts -----------------------------------------------------------------------------------
IDS = TurnIds(im_start=100, im_end=101, image_restore=102)
SYSTEM, QUESTION, THOUGHT = [100, 5, 6, 101], [100, 7, 8, 101], [9, 10]


def _row() -> RowPrompt:
    blocks = [LatentSegment(torch.zeros(4, 2, 2)), VitSegment(torch.zeros(3, 4, 4))]
    return RowPrompt(torch.tensor(SYSTEM), blocks, torch.tensor([*QUESTION, 100]), [*THOUGHT, 102])


def _ids(segments) -> list:
    """Text segments as id lists, image blocks as their kind."""
    return [s.input_ids.tolist() if isinstance(s, TextSegment) else type(s).__name__ for s in segments]


@pytest.mark.parametrize(
    ("contexts", "text_uncond", "image_uncond"),
    [
        # CLEAR's eval (consider_think=True): the prefix before the thought turn; every text turn.
        ("drop-thought", [SYSTEM, "LatentSegment", "VitSegment", QUESTION],
         [[*SYSTEM, *QUESTION, 100, *THOUGHT, 102, 101]]),
        # consider_think=False: the thought turn with only the tag removed.
        ("drop-tag", [SYSTEM, "LatentSegment", "VitSegment", [*QUESTION, 100, *THOUGHT, 101]],
         [[*SYSTEM, *QUESTION, 100, *THOUGHT, 102, 101]]),
        # ByteDance's inferencer: before the last input text; the input texts; no model turn.
        ("upstream", [SYSTEM, "LatentSegment", "VitSegment"], [[*SYSTEM, *QUESTION]]),
    ],
)  # fmt: skip
def test_cfg_contexts_token_by_token(contexts, text_uncond, image_uncond):
    text, image = cfg_contexts(_row(), contexts, IDS)
    assert _ids(text) == text_uncond and _ids(image) == image_uncond


@pytest.mark.parametrize("contexts", ["drop-thought", "drop-tag", "upstream"])
def test_the_decoder_guides_with_the_contexts_it_is_given(folder, contexts):
    """A restoration of the tiny model: what the two unconditional prefills receive is the prompt's
    own ids, cut as `contexts` says."""
    from clear_rl.rollout.answering import answer_batch

    model, processor = load_bagel_unified(folder, device="cpu", tags="tokens")
    seen, prefill = [], model.bagel.prefill
    model.bagel.prefill = lambda samples, *a, **k: (seen.append(samples), prefill(samples, *a, **k))[1]
    guidance = RestorationGuidance(contexts=contexts)
    cfg = InterleavedGenerationConfig(max_new_tokens=2, do_sample=False, restore="always",
                                      restoration=RestorationSampling(steps=1, guidance=guidance))  # fmt: skip
    boost = torch.zeros(model.bagel.language_model.lm_head.out_features)
    boost[model.token_ids.image_restore] = 100.0  # the model writes the tag first
    model.bagel.language_model.lm_head.register_forward_hook(lambda m, a, out: out + boost)
    answered = answer_batch(
        model, processor, [_image(32, 32)], ["What?"], cfg, system_prompt="Look.",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    prompt = answered.prompt_ids[0][answered.prompt_mask[0].bool()].tolist()
    cut = prompt.index(model.config.image_token_id)
    before, question = prompt[:cut], prompt[cut + 1 : -1]  # the prompt ends with the answer turn's opener
    core = model.bagel.config
    tag, im_start, im_end = model.token_ids.image_restore, core.im_start_id, core.im_end_id
    expected = {
        "drop-thought": ([before, "LatentSegment", "VitSegment", question], [before + question + [im_start, tag, im_end]]),
        "drop-tag": ([before, "LatentSegment", "VitSegment", question + [im_start, im_end]],
                     [before + question + [im_start, tag, im_end]]),
        "upstream": ([before, "LatentSegment", "VitSegment"], [before + question]),
    }[contexts]  # fmt: skip
    text, image = seen[-2][0], seen[-1][0]  # the restoration's two unconditional prefills, row 0
    assert (_ids(text), _ids(image)) == expected


def test_guidance_contexts_are_checked():
    with pytest.raises(ValueError, match="contexts"):
        RestorationGuidance(contexts="drop-everything")
    assert RestorationGuidance.from_preset(CLEAR_RELEASE.guidance) == RestorationGuidance()


# -- steps ----------------------------------------------------------------------------------------------
def _bagel_schedule(num_timesteps: int, timestep_shift: float) -> torch.Tensor:
    """Bagel.generate_image's noise levels (bagel.py L693-696): linspace(1, 0, N), shifted."""
    timesteps = torch.linspace(1, 0, num_timesteps)
    return timestep_shift * timesteps / (1 + (timestep_shift - 1) * timesteps)


def test_steps_count_euler_steps_and_the_presets_translate_the_releases_timesteps(folder):
    assert timesteps_to_steps(50) == 49 and CLEAR_RELEASE.steps == 49 and BAGEL_UPSTREAM.steps == 49
    with pytest.raises(ClearRLError, match="num_timesteps"):
        timesteps_to_steps(1)
    model, _ = load_bagel_unified(folder, device="cpu")
    assert model.config.num_inference_steps == 49 and model.config.flow_shift == 3.0
    schedule = RestorationSampling().schedule(model)  # the model's default: the preset's 49 steps
    assert schedule.shape == (50,)
    # Equal to one float32 ulp (diffusers computes in float64 and casts; BAGEL in float32).
    torch.testing.assert_close(schedule, _bagel_schedule(50, 3.0), atol=1.2e-7, rtol=0)
    # 50 steps (clear-rl's old default) is one more step than the release samples.
    assert RestorationSampling(steps=50).schedule(model).shape == (51,)
    # The RL rollouts: the release's SDE num_timesteps 20 is 19 steps, its ODE 30 is 29.
    rows = dict(CLEAR_RELEASE.rows())
    assert "19 steps" in rows["RL rollout SDE"] and "29 steps" in rows["RL rollout ODE"]
