"""The two corruption backends agree: OpenCV (the released generator's calls, one image at a
time on the CPU) and torch (batched, any device) give the same corruption for the same seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from degrade_images import natural_images
from PIL import Image

from clear_rl.degrade import CORRUPTIONS, LEVELS, corrupt, corrupt_images, corrupt_pil
from clear_rl.degrade.engine import resolve_backend
from clear_rl.errors import ClearRLError

SEEDS = [11, 12, 13]
# Corruptions whose torch port draws and rasterises exactly what OpenCV does, so the two
# backends must agree to the last bit (the others differ by float rounding, libjpeg's integer
# DCT or mean shift's sampled window: within a level or two on a few pixels).
BIT_EXACT = {
    "block_exchange",
    "scan_lines",
    "dark_illumination",
    "gaussian_noise",
    "graffiti",
    "lens_flare",
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) * 255).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    # 160 px high: graffiti's text needs 117 px; natural-looking (gradients, edges, texture).
    return natural_images(3, 160, 224, seed=4)


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_backends_agree_per_type_and_level(scenes, name, level):
    fast = corrupt(scenes, name, level, SEEDS, backend="opencv")
    batched = corrupt(scenes, name, level, SEEDS, backend="torch")
    between = [psnr(a, b) for a, b in zip(fast, batched)]
    assert min(between) >= 40.0, f"{name}/{level}: PSNR between backends {between}"
    strength_fast = np.mean([psnr(out, clean) for out, clean in zip(fast, scenes)])
    strength_batched = np.mean([psnr(out, clean) for out, clean in zip(batched, scenes)])
    assert abs(strength_fast - strength_batched) <= 0.5, (name, level, strength_fast, strength_batched)
    if name in BIT_EXACT:
        assert torch.equal(fast, batched), name


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if CORRUPTIONS[n].is_random(0.9)])
def test_the_seed_sets_the_draws_in_both_backends(scenes, name):
    image = scenes[:1]
    for backend in ("opencv", "torch"):
        first = corrupt(image, name, "high", [5], backend=backend)
        assert torch.equal(first, corrupt(image, name, "high", [5], backend=backend)), (name, backend)
        assert not torch.equal(first, corrupt(image, name, "high", [6], backend=backend)), (name, backend)


def test_auto_is_opencv_on_the_cpu_and_torch_on_cuda():
    assert resolve_backend("auto", torch.device("cpu")) == "opencv"
    assert resolve_backend("auto", "cuda:0") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ClearRLError, match="unknown corruption backend 'numpy'"):
        resolve_backend("numpy")
    with pytest.raises(ClearRLError, match="unknown corruption backend"):
        corrupt(torch.zeros(1, 3, 64, 64), "lens_blur", "low", backend="cv2")


def test_uint8_float_and_pil_inputs_give_one_result(scenes):
    u8 = (scenes * 255).round().to(torch.uint8)
    out_float = corrupt(scenes, "lens_flare", "mid", SEEDS, backend="opencv")
    out_u8 = corrupt(u8, "lens_flare", "mid", SEEDS, backend="opencv")
    assert out_u8.dtype == torch.uint8 and torch.equal(out_u8.float() / 255, out_float)
    pils = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u8]
    for backend in ("opencv", "torch"):
        images = corrupt_images(pils, ["lens_flare"] * 3, "mid", SEEDS, backend=backend)
        for image, expected in zip(images, out_u8):
            assert np.array_equal(np.asarray(image), expected.permute(1, 2, 0).numpy()), backend
        one = corrupt_pil(pils[0], "lens_flare", "mid", SEEDS[0], backend=backend)
        assert np.array_equal(np.asarray(one), np.asarray(images[0]))


def test_clean_rows_and_small_images_stay_clean_in_the_opencv_backend(caplog):
    small = Image.fromarray(np.full((40, 40, 3), 90, np.uint8))
    big = Image.fromarray(np.full((80, 80, 3), 90, np.uint8))
    out = corrupt_images(
        [small, big, big], ["watermark_damage", None, "dark_illumination"], "high", [1, 2, 3]
    )
    assert np.array_equal(np.asarray(out[0]), np.asarray(small))  # below 50 px: clean, logged
    assert "needs images of at least 50x50 px" in caplog.text
    assert np.array_equal(np.asarray(out[1]), np.asarray(big))  # no corruption named: clean
    assert np.asarray(out[2]).max() == int(90 * (1 - 0.9**2))


def test_the_cli_offers_exactly_the_engine_backends():
    from clear_rl.commands import BACKENDS as CLI_BACKENDS
    from clear_rl.degrade.engine import BACKENDS

    assert CLI_BACKENDS == BACKENDS
