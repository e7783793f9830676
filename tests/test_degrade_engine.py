"""The MMD-Bench engine's contract: seeding, batch independence, formats, registry, errors."""

from __future__ import annotations

import logging

import pytest
import torch
from degrade_images import natural_images
from PIL import Image

from clear_rl.degrade import (
    CATEGORIES,
    CORRUPTIONS,
    LEVELS,
    choose_corruptions,
    corrupt,
    corrupt_pil,
    corrupt_rows,
    resolve_intensity,
)
from clear_rl.errors import ClearRLError

NAMES = list(CORRUPTIONS)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return natural_images(3, 128, 144, seed=1)


def test_levels_and_intensity_resolution():
    assert LEVELS == {"low": 0.23, "mid": 0.45, "high": 0.9}
    assert resolve_intensity("high") == 0.9
    assert resolve_intensity("Mid") == 0.45
    assert resolve_intensity(0.3) == 0.3
    assert resolve_intensity("0.6") == 0.6
    with pytest.raises(ClearRLError, match="1.5"):
        resolve_intensity(1.5)
    with pytest.raises(ClearRLError, match="-0.1"):
        resolve_intensity(-0.1)
    with pytest.raises(ClearRLError, match="low, mid, high"):
        resolve_intensity("extreme")


def test_registry_order_categories_and_weights():
    assert NAMES[:5] == ["lens_blur", "lens_flare", "motion_blur", "dirty_lens", "hsv_saturation"]
    assert NAMES[-3:] == ["sharpness_change", "graffiti", "watermark_damage"]
    assert list(CATEGORIES) == ["capture", "transmission", "environment", "post_processing"]
    assert [len(v) for v in CATEGORIES.values()] == [5, 4, 4, 3]
    assert sum(c.weight for c in CORRUPTIONS.values()) == 400
    for names in CATEGORIES.values():
        assert sum(CORRUPTIONS[n].weight for n in names) == 100
    assert [CORRUPTIONS[n].weight for n in CATEGORIES["post_processing"]] == [33, 33, 34]


def test_choose_corruptions_is_deterministic_and_follows_the_weights():
    seeds = list(range(20000))
    chosen = choose_corruptions(seeds)
    assert chosen == choose_corruptions(seeds)
    for name, corruption in CORRUPTIONS.items():
        frequency = chosen.count(name) / len(seeds)
        assert abs(frequency - corruption.weight / 400) < 0.012, (name, frequency)
    per_category = {
        cat: sum(chosen.count(n) for n in names) / len(seeds) for cat, names in CATEGORIES.items()
    }
    assert all(abs(f - 0.25) < 0.015 for f in per_category.values()), per_category


@pytest.mark.parametrize("name", NAMES)
def test_format_seeding_and_batch_independence(images, name):
    seeds = [11, 12, 13]
    out = corrupt(images, name, "high", seeds)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    scaled = out * 255
    assert torch.allclose(scaled, scaled.round(), atol=1e-3), "outputs must be multiples of 1/255"
    assert torch.equal(out, corrupt(images, name, "high", seeds)), "same seeds, same output"
    for row in (0, 2):
        alone = corrupt(images[row : row + 1], name, "high", seeds[row])
        assert torch.equal(alone[0], out[row]), f"row {row} depends on the rest of the batch"
    if CORRUPTIONS[name].is_random(0.9):
        other = corrupt(images, name, "high", [21, 22, 23])
        assert not torch.equal(other, out), "different seeds should give different draws"


def test_deterministic_corruptions_ignore_the_seed(images):
    for name, corruption in CORRUPTIONS.items():
        if not corruption.is_random(0.45):
            assert torch.equal(corrupt(images, name, "mid", 1), corrupt(images, name, "mid", 2)), name


def test_uint8_and_single_image_and_pil_conveniences(images):
    as_uint8 = (images * 255).round().to(torch.uint8)
    out8 = corrupt(as_uint8, "gaussian_noise", "mid", [1, 2, 3])
    assert out8.dtype == torch.uint8
    assert torch.equal(
        out8, (corrupt(images, "gaussian_noise", "mid", [1, 2, 3]) * 255).round().to(torch.uint8)
    )
    single = corrupt(images[0], "scan_lines", "high")
    assert single.shape == images[0].shape
    pil = Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    out = corrupt_pil(pil, "dark_illumination", "high", seed=0)
    assert out.size == pil.size and out.mode == "RGB"


def test_corrupt_rows_matches_per_row_calls(images):
    names = ["graffiti", "lens_flare", "graffiti"]
    levels = ["high", "mid", "low"]
    seeds = [5, 6, 7]
    out = corrupt_rows(images, names, levels, seeds)
    for row in range(3):
        expected = corrupt(images[row : row + 1], names[row], levels[row], seeds[row])[0]
        assert torch.equal(out[row], expected)


def test_unknown_name_and_bad_arguments_are_clear_errors(images):
    with pytest.raises(ClearRLError, match="valid names: lens_blur, lens_flare"):
        corrupt(images, "fog", "high", 0)
    with pytest.raises(ClearRLError, match="1.2"):
        corrupt(images, "lens_blur", 1.2, 0)
    with pytest.raises(ClearRLError, match="2 seeds for a batch of 3"):
        corrupt(images, "lens_flare", "high", [1, 2])
    with pytest.raises(ClearRLError, match=r"\(B, 3, H, W\)"):
        corrupt(images[:, :2], "lens_flare", "high", 0)


def test_below_minimum_size_returns_the_input_unchanged_and_logs(caplog):
    small = natural_images(2, 20, 40, seed=3)
    with caplog.at_level(logging.WARNING, logger="clear_rl.degrade"):
        out = corrupt(small, "block_exchange", "high", [1, 2])  # needs 32 px sides at High
    assert torch.equal(out, small)
    assert "block_exchange" in caplog.text and "32x32" in caplog.text
    # ... but the same 20-px image is corrupted at Low (b = 11), as the release does.
    assert not torch.equal(corrupt(small, "block_exchange", "low", [1, 2]), small)
    narrow = natural_images(1, 60, 45, seed=3)
    assert torch.equal(corrupt(narrow, "watermark_damage", "mid", 1), narrow)
