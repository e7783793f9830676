"""ShapesVQA: deterministic, balanced, right answers, readable files, and fine details that
strong degradation destroys while coarse ones survive."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clear_rl.demo.shapes_vqa.generate import (
    CHOICE_LETTERS,
    TSV_COLUMNS,
    ShapesVQAConfig,
    answer_classes,
    build_shapes_vqa,
    generate_shapes_vqa,
    main,
    shapes_vqa_corpus,
    shapes_vqa_vocabulary,
)
from clear_rl.demo.shapes_vqa.glyphs import GLYPH_HEIGHT, GLYPH_WIDTH, GLYPHS, glyph_mask
from clear_rl.demo.shapes_vqa.scene import (
    COLORS,
    Background,
    Scene,
    ShapeObject,
    SymbolMark,
    nearest_color_name,
    render_scenes,
    shape_coverage,
)
from clear_rl.errors import ClearRLError
from clear_rl.io.images import decode_image, pil_to_tensor
from clear_rl.io.tsv import read_tsv


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate_shapes_vqa(400, seed=7)


def image_digest(image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of (B, 3, H, W), reflect padding (plain torch, for the test only)."""
    radius = max(1, int(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.pad(images, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def box_difference(pair: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    """Mean absolute difference of two images (a (2, 3, H, W) batch) inside box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return (pair[0] - pair[1])[:, y0:y1, x0:x1].abs().mean().item()


def plain_scene(objects: tuple[ShapeObject, ...], symbol: str, size: int = 64) -> Scene:
    background = Background((0.75, 0.75, 0.72), (0.68, 0.7, 0.74), 0.3, (0.0,) * 16, 0.0)
    return Scene(size, background, objects, SymbolMark(symbol, 47, 6, 2, 110))


def test_glyphs_are_5x7_and_distinct():
    assert all(g.shape == (GLYPH_HEIGHT, GLYPH_WIDTH) for g in GLYPHS.values())
    assert len({g.tobytes() for g in GLYPHS.values()}) == len(GLYPHS)
    assert glyph_mask("7", 2).shape == (14, 10)


def test_same_seed_same_records_and_longer_runs_extend_shorter_ones(records):
    again = generate_shapes_vqa(60, seed=7)
    for a, b in zip(records[:60], again):
        assert image_digest(a["image"]) == image_digest(b["image"])
        assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}
    other_seed = generate_shapes_vqa(60, seed=8)
    assert [image_digest(r["image"]) for r in other_seed] != [image_digest(r["image"]) for r in again]


def test_test_split_shares_no_image_with_train(records):
    test = generate_shapes_vqa(400, seed=7, split="test")
    assert not {image_digest(r["image"]) for r in records} & {image_digest(r["image"]) for r in test}
    assert {r["split"] for r in test} == {"test"}


def test_answers_and_option_letters_are_balanced(records):
    config = ShapesVQAConfig()
    by_category: dict[str, Counter] = defaultdict(Counter)
    letters = Counter()
    for record in records:
        by_category[record["category"]][json.loads(record["meta"])["answer_text"]] += 1
        if record["A"]:
            letters[record["answer"]] += 1
    assert set(by_category) == set(config.question_types)
    for category, counts in by_category.items():
        expected = answer_classes(config)[category]
        if category == "count":
            expected = tuple(str(n) for n in range(config.min_shapes, config.max_shapes + 1))
        # Every class dealt in shuffled rounds: counts differ by at most one, none missing.
        assert set(counts) == set(expected), category
        assert max(counts.values()) - min(counts.values()) <= 1, (category, counts)
    assert set(letters) == set(CHOICE_LETTERS)
    assert max(letters.values()) - min(letters.values()) <= 1
    multiple_choice = sum(letters.values()) / len(records)
    assert 0.4 < multiple_choice < 0.6  # the default multiple_choice_fraction is 0.5


def test_options_hold_the_answer_once_among_distinct_plausible_distractors(records):
    classes = answer_classes()
    for record in records:
        meta = json.loads(record["meta"])
        options = [record[c] for c in CHOICE_LETTERS]
        if meta["multiple_choice"]:
            assert len(set(options)) == 4 and set(options) <= set(classes[record["category"]])
            assert record[record["answer"]] == meta["answer_text"]
        else:
            assert options == ["", "", "", ""] and record["answer"] == meta["answer_text"]
        if meta["multiple_choice"] and record["category"] == "color":
            # Colours of the other shapes in the image are offered before unseen colours.
            shown = {o["color"] for o in meta["objects"]}
            assert len(shown & set(options)) == min(len(shown), 4)


def test_answer_is_right_for_the_drawn_scene(records):
    for record in records:
        meta, question = json.loads(record["meta"]), record["question"]
        objects, right = meta["objects"], meta["answer_text"]
        category = record["category"]
        if category == "count":
            assert int(right) == len(objects)
        elif category == "color":
            named = [o for o in objects if f" {o['shape']}?" in question]
            assert len(named) == 1 and named[0]["color"] == right
        elif category == "shape":
            named = [o for o in objects if f" {o['color']} object" in question]
            assert len(named) == 1 and named[0]["shape"] == right
        elif category == "position":
            first, second = re.match(r"Where is the (\w+ \w+) relative to the (\w+ \w+)\?", question).groups()
            subject = next(o for o in objects if f"{o['color']} {o['shape']}" == first)
            reference = next(o for o in objects if f"{o['color']} {o['shape']}" == second)
            dx = reference["center"][0] - subject["center"][0]
            dy = reference["center"][1] - subject["center"][1]
            relation = (
                ("left" if dx > 0 else "right") if abs(dx) > abs(dy) else ("above" if dy > 0 else "below")
            )
            assert relation == right and max(abs(dx), abs(dy)) > 2 * min(abs(dx), abs(dy))
        else:
            assert meta["symbol"]["char"] == right


def test_image_shows_what_the_metadata_says(records):
    """Each listed shape is drawn in its colour at its place, and the symbol's glyph is inked."""
    for record in records[:80]:
        meta, pixels = json.loads(record["meta"]), np.asarray(record["image"], dtype=np.float32)
        for obj in meta["objects"]:
            shape = ShapeObject(
                obj["shape"], obj["color"], tuple(obj["center"]), obj["radius"], tuple(obj["rgb"])
            )
            inside = shape_coverage(shape, 64) > 0.99
            assert inside.sum() >= 8
            assert nearest_color_name(pixels[inside].mean(0)) == obj["color"]
        x0, y0, x1, y1 = meta["symbol"]["box"]
        strokes = glyph_mask(meta["symbol"]["char"], 2)
        box = pixels[y0:y1, x0:x1]
        assert (box[strokes] == meta["symbol"]["ink"]).all()
        assert box[~strokes].mean(-1).min() > meta["symbol"]["ink"] + 25  # paper clearly lighter


def test_constructed_scene_puts_shapes_and_symbol_where_asked():
    red = ShapeObject("circle", "red", (12.0, 12.0), 8.0, (215, 35, 35))
    blue = ShapeObject("square", "blue", (40.0, 44.0), 8.0, (40, 80, 215))
    pixels = np.asarray(render_scenes([plain_scene((red, blue), "7")])[0])
    assert tuple(pixels[12, 12]) == (215, 35, 35) and tuple(pixels[44, 40]) == (40, 80, 215)
    assert (pixels[6 : 6 + 14, 47 : 47 + 10][glyph_mask("7", 2)] == 110).all()
    assert nearest_color_name(pixels[30, 30]) not in ("red", "blue")  # background stays pale


def test_symbol_is_destroyed_by_strong_blur_but_a_large_shape_keeps_its_colour():
    """What a restore-then-answer model can win: strong blur (sigma 2 px) wipes out most of
    what tells two symbols apart, mild blur keeps it, and a large shape's colour survives."""
    for color, (first, second) in zip(("red", "green", "blue", "purple"), ("38", "17", "56", "09")):
        shape = ShapeObject("square", color, (20.0, 40.0), 10.0, COLORS[color])
        images = render_scenes([plain_scene((shape,), first), plain_scene((shape,), second)])
        batch = torch.stack([pil_to_tensor(im) for im in images])
        box = SymbolMark(first, 47, 6, 2, 110).box()
        clean = box_difference(batch, box)
        assert box_difference(gaussian_blur(batch, 0.5), box) > 0.75 * clean
        strong = gaussian_blur(batch, 2.0)
        assert box_difference(strong, box) < 0.45 * clean
        inside = torch.from_numpy(shape_coverage(shape, 64) > 0.5)
        assert nearest_color_name((strong[0][:, inside].mean(1) * 255).tolist()) == color


def test_strong_noise_keeps_a_large_shape_colour_recoverable():
    generator = torch.Generator().manual_seed(0)
    for color in ("red", "green", "blue", "yellow", "purple", "orange"):
        shape = ShapeObject("circle", color, (20.0, 40.0), 9.0, COLORS[color])
        clean = pil_to_tensor(render_scenes([plain_scene((shape,), "4")])[0])
        # MMD-Bench's High gaussian_noise: sigma 67.5 grey levels.
        noisy = (clean + (67.5 / 255) * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
        inside = torch.from_numpy(shape_coverage(shape, 64) > 0.5)
        assert nearest_color_name((noisy[:, inside].mean(1) * 255).tolist()) == color


def test_sizes_scale_with_the_image_size():
    for size, glyph_height in ((32, 7), (128, 28)):
        config = ShapesVQAConfig(image_size=size)
        for record in generate_shapes_vqa(30, seed=1, config=config):
            assert record["image"].size == (size, size)
            x0, y0, x1, y1 = json.loads(record["meta"])["symbol"]["box"]
            assert y1 - y0 == glyph_height and 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


def test_vocabulary_covers_every_emitted_string(records):
    config = ShapesVQAConfig()
    vocabulary, corpus = set(shapes_vqa_vocabulary(config)), set(shapes_vqa_corpus(config))
    for record in records:
        texts = [record["question"], record["answer"], *(record[c] for c in CHOICE_LETTERS if record[c])]
        assert set(texts) <= corpus
        assert {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)} <= vocabulary
    assert len(vocabulary) < 60  # small and closed, for a tiny tokenizer


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"question_types": ("color", "texture")}, "question_types"),
        ({"symbols": "0123@"}, "symbols"),
        ({"max_shapes": 9}, "max_shapes"),
        ({"image_size": 16}, "image_size"),
        ({"symbol_height": 0.4}, "symbol_height"),
        ({"multiple_choice_fraction": 1.5}, "multiple_choice_fraction"),
        ({"question_weights": (1.0, 2.0)}, "question_weights"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ClearRLError, match=f"ShapesVQAConfig.{field}="):
        ShapesVQAConfig(**changes)


def test_question_mix_and_short_answers_follow_the_config():
    config = ShapesVQAConfig(question_types=["symbol", "count"], multiple_choice_fraction=0.0)
    made = generate_shapes_vqa(40, seed=2, config=config)
    assert {r["category"] for r in made} == {"symbol", "count"}
    assert all(r["A"] == "" and r["answer"] == json.loads(r["meta"])["answer_text"] for r in made)


def test_build_writes_a_loadable_dataset_and_round_tripping_tsvs(tmp_path):
    files = build_shapes_vqa(tmp_path / "shapes", num_train=24, num_test=12, seed=5)
    loaded = datasets.load_from_disk(str(files.dataset_dir))
    assert {split: len(loaded[split]) for split in loaded} == {"train": 24, "test": 12}
    assert isinstance(loaded["train"].features["image"], datasets.Image)
    expected = {"train": generate_shapes_vqa(24, 5), "test": generate_shapes_vqa(12, 5, split="test")}
    for split, made in expected.items():
        row = loaded[split][3]
        assert image_digest(row["image"].convert("RGB")) == image_digest(made[3]["image"])  # PNG: lossless
        assert row["question"] == made[3]["question"] and row["meta"] == made[3]["meta"]
        frame = read_tsv(files.tsv[split], required=TSV_COLUMNS)
        assert list(frame.columns) == list(TSV_COLUMNS) and len(frame) == len(made)
        for (_, cells), record in zip(frame.iterrows(), made):
            image = decode_image(cells["image"], f"{files.tsv[split]}: row index={cells['index']}")
            error = np.abs(np.asarray(image, dtype=float) - np.asarray(record["image"], dtype=float))
            # base64 JPEG at quality 95 with 4:2:0 chroma, as the MMD-Bench files hold: ~2 grey levels.
            assert error.mean() < 4.0
            assert all(cells[c] == str(record[c]) for c in TSV_COLUMNS if c != "image")
    manifest = json.loads(files.manifest.read_text())
    assert manifest["seed"] == 5 and manifest["config"]["image_size"] == 64
    assert ShapesVQAConfig(**manifest["config"]) == ShapesVQAConfig()


def test_command_line_builds_and_reports_bad_input(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--train", "6", "--test", "3", "--seed", "1"]) == 0
    assert len(read_tsv(tmp_path / "cli" / "ShapesVQA_test.tsv")) == 3
    assert main(["--out", str(tmp_path / "bad"), "--symbols", "01"]) == 2
    assert "ShapesVQAConfig.symbols" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
