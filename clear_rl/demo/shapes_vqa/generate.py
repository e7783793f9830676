"""ShapesVQA: a seeded synthetic VQA set whose answers mild degradation keeps and strong destroys.

Each image is a pale textured background with a few coloured shapes and one small printed
symbol. Questions ask the colour or shape of an object, the number of shapes, where one shape
is relative to another, or which symbol is printed, as multiple choice (A-D) or short answer.
Large shapes' colours survive strong corruption; thin strokes (the symbol, the cross) do not,
which is what gives a restore-then-answer model something to win.

Every sample is drawn answer-first from its own generator, seeded by (seed, split, index):
answers are balanced by construction, the same seed gives the same set, a longer set starts
with the shorter one, and the test split never repeats the train split's draws.

    python -m clear_rl.demo.shapes_vqa --out data/shapes_vqa --train 2000 --test 500 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np

from clear_rl.demo.shapes_vqa.glyphs import AVAILABLE_SYMBOLS, GLYPH_HEIGHT, GLYPH_WIDTH
from clear_rl.demo.shapes_vqa.scene import (
    COLOR_JITTER,
    COLORS,
    GRID,
    SHAPES,
    TEXTURE_GRID,
    Background,
    Scene,
    ShapeObject,
    SymbolMark,
    cell_origin,
    cell_size,
    render_scenes,
)
from clear_rl.errors import ClearRLError

QUESTION_TYPES = ("color", "shape", "count", "position", "symbol")
RELATIONS = ("left", "right", "above", "below")
CHOICE_LETTERS = ("A", "B", "C", "D")
COLUMNS = ("index", "image", "question", "answer", *CHOICE_LETTERS, "category", "split", "meta")
TSV_COLUMNS = ("index", "image", "question", "answer", *CHOICE_LETTERS, "category", "meta")
# How the vocabulary splits text into words: runs of word characters, or one punctuation mark.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
BACKGROUND_LIGHTNESS = (0.62, 0.85)  # pale, so saturated shapes and dark ink stand out
_RENDER_CHUNK = 256  # scenes whose backgrounds are drawn in one batched pass


@dataclass(frozen=True)
class ShapesVQAConfig:
    """What ShapesVQA draws and asks. Sizes are fractions, so they scale with `image_size`."""

    image_size: int = 64
    question_types: tuple[str, ...] = QUESTION_TYPES
    question_weights: tuple[float, ...] | None = None  # relative mix; None = equal
    multiple_choice_fraction: float = 0.5
    symbols: str = "0123456789"
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES
    min_shapes: int = 1
    max_shapes: int = 4
    shape_radius: tuple[float, float] = (0.28, 0.46)  # of a grid cell (image_size / 3)
    symbol_height: float = 0.22  # of the image height; 64 px -> 14 px glyphs, 2 px strokes
    # How much darker than the background the symbol's ink is (range, in [0, 1] intensity).
    # Clear on a clean image; at MMD-Bench's High noise (sigma 0.26) a stroke pixel is no
    # longer told from the background, at Low (0.07) it still is.
    symbol_contrast: tuple[float, float] = (0.25, 0.45)

    def __post_init__(self) -> None:
        # Recipes and JSON give lists; keep the dataclass hashable and comparable.
        for name in (
            "question_types",
            "question_weights",
            "colors",
            "shapes",
            "shape_radius",
            "symbol_contrast",
        ):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.symbols, (list, tuple)):
            object.__setattr__(self, "symbols", "".join(self.symbols))
        _validate(self)

    @property
    def symbol_scale(self) -> int:
        """Pixels per glyph cell (the stroke width of a printed symbol)."""
        return max(1, round(self.symbol_height * self.image_size / GLYPH_HEIGHT))

    @property
    def count_choices(self) -> tuple[str, ...]:
        """Every count a count question can offer: the possible answers, padded to four options."""
        return tuple(str(n) for n in range(1, max(self.max_shapes, len(CHOICE_LETTERS)) + 1))


def _validate(config: ShapesVQAConfig) -> None:
    def bad(field: str, why: str) -> ClearRLError:
        return ClearRLError(f"ShapesVQAConfig.{field}={getattr(config, field)!r}: {why}")

    # A grid cell must hold a 7 px glyph with a 1 px margin on each side.
    smallest = GRID * (GLYPH_HEIGHT + 2)
    if not isinstance(config.image_size, int) or config.image_size < smallest:
        raise bad("image_size", f"must be an integer of at least {smallest} (pixels)")
    unknown = [t for t in config.question_types if t not in QUESTION_TYPES]
    if not config.question_types or unknown:
        raise bad("question_types", f"choose one or more of {', '.join(QUESTION_TYPES)}")
    if config.question_weights is not None and (
        len(config.question_weights) != len(config.question_types)
        or any(w < 0 for w in config.question_weights)
        or sum(config.question_weights) <= 0
    ):
        raise bad("question_weights", "give one non-negative weight per question type, not all zero")
    if not 0.0 <= config.multiple_choice_fraction <= 1.0:
        raise bad("multiple_choice_fraction", "must lie in [0, 1]")
    for field, chosen, known in (
        ("symbols", config.symbols, AVAILABLE_SYMBOLS),
        ("colors", config.colors, tuple(COLORS)),
        ("shapes", config.shapes, SHAPES),
    ):
        if any(c not in known for c in chosen) or len(set(chosen)) != len(chosen):
            raise bad(field, f"use distinct values from {', '.join(known)}")
        if len(chosen) < len(CHOICE_LETTERS):
            raise bad(field, f"needs at least {len(CHOICE_LETTERS)} values (one per option A-D)")
    # Every object gets its own colour, shape and grid cell (one cell is the symbol's), so a
    # colour or a shape names exactly one object.
    most = min(len(config.colors), len(config.shapes), GRID * GRID - 1)
    if not 1 <= config.min_shapes <= config.max_shapes <= most:
        raise bad("max_shapes", f"need 1 <= min_shapes <= max_shapes <= {most}")
    if "position" in config.question_types and config.max_shapes < 2:
        raise bad("max_shapes", "position questions need at least 2 shapes")
    low, high = config.shape_radius
    if not 0.1 <= low <= high <= 0.5:
        raise bad("shape_radius", "need 0.1 <= low <= high <= 0.5 (fractions of a grid cell)")
    low, high = config.symbol_contrast
    if not 0.05 <= low <= high <= 0.6:
        raise bad("symbol_contrast", f"need 0.05 <= low <= high <= 0.6 (backgrounds: {BACKGROUND_LIGHTNESS})")
    cell = cell_size(config.image_size)
    if GLYPH_HEIGHT * config.symbol_scale > cell - 2 or GLYPH_WIDTH * config.symbol_scale > cell - 2:
        raise bad("symbol_height", f"a symbol must fit in a grid cell of {cell:.1f} px")


def answer_classes(config: ShapesVQAConfig | None = None) -> dict[str, tuple[str, ...]]:
    """Every answer (or option text) each question type can have."""
    config = config or ShapesVQAConfig()
    return {
        "color": config.colors,
        "shape": config.shapes,
        "count": config.count_choices,
        "position": RELATIONS,
        "symbol": tuple(config.symbols),
    }


def _question(category: str, objects: Sequence[ShapeObject]) -> str:
    if category == "color":
        return f"What color is the {objects[0].shape}?"
    if category == "shape":
        return f"What shape is the {objects[0].color} object?"
    if category == "count":
        return "How many shapes are in the image?"
    if category == "position":
        first, second = objects[0], objects[1]
        return f"Where is the {first.color} {first.shape} relative to the {second.color} {second.shape}?"
    return "Which symbol is printed in the image?"


def shapes_vqa_corpus(config: ShapesVQAConfig | None = None) -> list[str]:
    """Every distinct question, answer and option string the generator can emit, and A-D.

    The demo's tokenizer is trained on this, so it covers the closed vocabulary completely.
    """
    config = config or ShapesVQAConfig()
    objects = [ShapeObject(s, c, (0, 0), 1, (0, 0, 0)) for c in config.colors for s in config.shapes]
    questions: set[str] = set()
    for category in config.question_types:
        if category == "position":
            pairs = permutations(objects, 2)
            distinct = (p for p in pairs if p[0].color != p[1].color and p[0].shape != p[1].shape)
            questions |= {_question(category, p) for p in distinct}
        else:
            questions |= {_question(category, [o]) for o in objects}
    classes = answer_classes(config)
    answers = {a for category in config.question_types for a in classes[category]}
    return sorted(questions) + sorted(answers) + list(CHOICE_LETTERS)


def shapes_vqa_vocabulary(config: ShapesVQAConfig | None = None) -> list[str]:
    """The sorted set of words (WORD_PATTERN tokens, lower and upper case kept) in the corpus."""
    return sorted({w for text in shapes_vqa_corpus(config) for w in WORD_PATTERN.findall(text)})


def _sample_background(rng: np.random.Generator) -> Background:
    lightness = rng.uniform(*BACKGROUND_LIGHTNESS)
    start = np.clip(lightness + rng.uniform(-0.05, 0.05, 3), 0, 1)
    end = np.clip(start + rng.uniform(-0.15, 0.15) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    return Background(
        start_rgb=tuple(float(v) for v in start),
        end_rgb=tuple(float(v) for v in end),
        angle=float(rng.uniform(0, 2 * np.pi)),
        texture=tuple(float(v) for v in rng.uniform(-1, 1, TEXTURE_GRID * TEXTURE_GRID)),
        texture_amplitude=float(rng.uniform(0.02, 0.06)),
    )


def _layout_cells(rng: np.random.Generator, count: int, relation: str | None) -> list[int]:
    """Grid cells for `count` objects then the symbol. With a relation, objects 0 and 1 share
    a row (left/right) or a column (above/below) so that one axis clearly dominates."""
    cells = GRID * GRID
    if relation is None:
        return [int(c) for c in rng.permutation(cells)[: count + 1]]
    line = int(rng.integers(GRID))
    low, high = sorted(int(p) for p in rng.choice(GRID, 2, replace=False))
    first, second = (low, high) if relation in ("left", "above") else (high, low)
    if relation in ("left", "right"):
        pair = [line * GRID + first, line * GRID + second]
    else:
        pair = [first * GRID + line, second * GRID + line]
    rest = [int(c) for c in rng.permutation(cells) if c not in pair]
    return pair + rest[: count - 1]


def _first_then_rest(rng: np.random.Generator, first: str | None, pool: Sequence[str]) -> list[str]:
    """A shuffled pool, with `first` (when given) moved to the front."""
    rest = [str(v) for v in rng.permutation(list(pool)) if v != first]
    return rest if first is None else [first, *rest]


def _sample_scene(rng: np.random.Generator, config: ShapesVQAConfig, count: int, target: dict) -> Scene:
    """A scene of `count` objects. `target` fixes what the answer needs: object 0's `color` or
    `shape`, the `relation` of object 0 to object 1, or the `symbol`."""
    size = config.image_size
    cell = cell_size(size)
    background = _sample_background(rng)
    colors = _first_then_rest(rng, target.get("color"), config.colors)[:count]
    shapes = _first_then_rest(rng, target.get("shape"), config.shapes)[:count]
    cells = _layout_cells(rng, count, target.get("relation"))
    objects = []
    for color, shape, where in zip(colors, shapes, cells):
        radius = rng.uniform(*config.shape_radius) * cell
        slack = max(0.0, cell / 2 - radius - 1)
        x0, y0 = cell_origin(where, size)
        cx, cy = x0 + cell / 2 + rng.uniform(-slack, slack), y0 + cell / 2 + rng.uniform(-slack, slack)
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
        rgb = tuple(int(v) for v in np.clip(np.asarray(COLORS[color]) + jitter, 0, 255))
        objects.append(ShapeObject(shape, color, (float(cx), float(cy)), float(radius), rgb))
    scale = config.symbol_scale
    x0, y0 = cell_origin(cells[-1], size)
    left = int(x0 + 1 + rng.uniform(0, cell - GLYPH_WIDTH * scale - 2))
    top = int(y0 + 1 + rng.uniform(0, cell - GLYPH_HEIGHT * scale - 2))
    char = target.get("symbol") or str(rng.choice(list(config.symbols)))
    paper = (np.mean(background.start_rgb) + np.mean(background.end_rgb)) / 2
    ink = max(0, round(255 * (paper - rng.uniform(*config.symbol_contrast))))
    symbol = SymbolMark(char, left, top, scale, ink)
    return Scene(size, background, tuple(objects), symbol)


def _distractors(rng: np.random.Generator, right: str, preferred: Sequence[str], pool: Sequence[str]):
    """Three wrong options: `preferred` ones first (what else is in the image), then the pool."""
    near = [p for p in rng.permutation(list(preferred)) if p != right]
    far = [p for p in rng.permutation(list(pool)) if p != right and p not in near]
    return [str(p) for p in (near + far)[: len(CHOICE_LETTERS) - 1]]


def _sample_example(
    rng: np.random.Generator, config: ShapesVQAConfig, category: str, right: str, slot: int | None
) -> tuple[Scene, dict]:
    """A scene whose answer to a `category` question is `right`; multiple choice with the right
    option at position `slot` when a slot is given, short answer otherwise."""
    fewest = max(config.min_shapes, 2) if category == "position" else config.min_shapes
    count = int(right) if category == "count" else int(rng.integers(fewest, config.max_shapes + 1))
    target_key = {"color": "color", "shape": "shape", "position": "relation", "symbol": "symbol"}
    target = {target_key[category]: right} if category in target_key else {}
    scene = _sample_scene(rng, config, count, target)
    preferred = {"color": [o.color for o in scene.objects], "shape": [o.shape for o in scene.objects]}
    example = {"question": _question(category, scene.objects), "category": category, "answer": right}
    options = dict.fromkeys(CHOICE_LETTERS, "")
    if slot is not None:
        wrong = _distractors(rng, right, preferred.get(category, []), answer_classes(config)[category])
        options = dict(zip(CHOICE_LETTERS, [*wrong[:slot], right, *wrong[slot:]]))
        example["answer"] = CHOICE_LETTERS[slot]
    example.update(options)
    meta = scene.to_meta()
    meta.update(answer_text=right, multiple_choice=slot is not None, subject=0)
    meta["reference"] = 1 if category == "position" else None
    example["meta"] = json.dumps(meta, sort_keys=True)
    return scene, example


class _ShuffledRounds:
    """Deals values in rounds, each round a seeded shuffle of all of them: after any number of
    draws no value has been dealt more than once more than another. This is what keeps the
    answer classes and the right option letters balanced in a small set, not only on average."""

    def __init__(self, values: Sequence, key: Sequence[int]) -> None:
        self.values, self.key = list(values), list(key)
        self.round: list = []
        self.rounds = 0

    def deal(self):
        if not self.round:
            self.round = list(np.random.default_rng([*self.key, self.rounds]).permutation(len(self.values)))
            self.rounds += 1
        return self.values[int(self.round.pop())]


def _correct_answers(config: ShapesVQAConfig, category: str) -> tuple[str, ...]:
    """The answers a category's questions actually get (count options also hold padding)."""
    if category == "count":
        return tuple(str(n) for n in range(config.min_shapes, config.max_shapes + 1))
    return answer_classes(config)[category]


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def generate_shapes_vqa(
    num_samples: int, seed: int = 0, config: ShapesVQAConfig | None = None, split: str = "train"
) -> list[dict]:
    """`num_samples` records {index, image (PIL), question, answer, A-D, category, split, meta}.

    Sample i is drawn from its own generator seeded by (seed, split, i), its answer and right
    option letter from balanced shuffled rounds: the same call gives the same records, a
    longer call starts with a shorter one's records, and another split name gives other draws.
    """
    config = config or ShapesVQAConfig()
    if num_samples < 0 or seed < 0:
        raise ClearRLError(f"num_samples and seed must be >= 0, got {num_samples} and {seed}")
    code = _split_code(split)
    weights = np.asarray(config.question_weights or [1.0] * len(config.question_types), dtype=float)
    answers = {
        category: _ShuffledRounds(_correct_answers(config, category), [seed, code, 1 + k])
        for k, category in enumerate(QUESTION_TYPES)
    }
    slots = _ShuffledRounds(range(len(CHOICE_LETTERS)), [seed, code, 0])
    records = []
    for start in range(0, num_samples, _RENDER_CHUNK):
        drawn = []
        for index in range(start, min(start + _RENDER_CHUNK, num_samples)):
            rng = np.random.default_rng([seed, code, index])
            category = config.question_types[int(rng.choice(len(weights), p=weights / weights.sum()))]
            slot = slots.deal() if rng.random() < config.multiple_choice_fraction else None
            scene, example = _sample_example(rng, config, category, answers[category].deal(), slot)
            drawn.append((index, scene, example))
        images = render_scenes([scene for _, scene, _ in drawn])
        for (index, _, example), image in zip(drawn, images):
            record = {"index": index, "image": image, **example, "split": split}
            records.append({column: record[column] for column in COLUMNS})
    return records


# --- writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesVQAFiles:
    """Where `build_shapes_vqa` wrote things."""

    root: Path
    dataset_dir: Path  # datasets.DatasetDict (train, test) saved with save_to_disk
    tsv: dict[str, Path]  # split -> VLMEvalKit TSV
    manifest: Path  # seed, sizes and config used, as JSON

    @classmethod
    def at(cls, root: str | Path, splits: Sequence[str] = ("train", "test")) -> ShapesVQAFiles:
        """Where `build_shapes_vqa(root, ...)` writes its outputs (whether or not it has yet)."""
        root = Path(root)
        return cls(
            root=root,
            dataset_dir=root / "dataset",
            tsv={split: root / f"ShapesVQA_{split}.tsv" for split in splits},
            manifest=root / "shapes_vqa.json",
        )


def records_to_dataset(records: Sequence[dict]):
    """A `datasets.Dataset` with the Image feature for the image column (PNG, lossless)."""
    import datasets

    from clear_rl.io.images import png_bytes

    string = datasets.Value("string")
    features = datasets.Features(
        {
            "index": datasets.Value("int64"),
            "image": datasets.Image(),
            **{c: string for c in COLUMNS if c not in ("index", "image")},
        }
    )
    columns = {c: [r[c] for r in records] for c in COLUMNS}
    columns["image"] = [{"bytes": png_bytes(image), "path": None} for image in columns["image"]]
    return datasets.Dataset.from_dict(columns, features=features)


def records_to_tsv_frame(records: Sequence[dict]):
    """A VLMEvalKit-style frame: text cells, base64 JPEG images (what the benchmark files hold)."""
    import pandas as pd

    from clear_rl.io.images import encode_base64_image

    rows = [
        {c: (encode_base64_image(r[c]) if c == "image" else str(r[c])) for c in TSV_COLUMNS} for r in records
    ]
    return pd.DataFrame(rows, columns=list(TSV_COLUMNS))


def build_shapes_vqa(
    out_dir: str | Path,
    num_train: int = 2000,
    num_test: int = 500,
    seed: int = 0,
    config: ShapesVQAConfig | None = None,
) -> ShapesVQAFiles:
    """Generate both splits and write them as a datasets folder and one TSV per split.

    Each output is written under a temporary name and renamed when complete, so an
    interrupted run never leaves a half-written file under a final name.
    """
    import datasets

    from clear_rl.io.atomic import atomic_path, write_text
    from clear_rl.io.tsv import write_tsv

    config = config or ShapesVQAConfig()
    root = Path(out_dir)
    splits = {"train": generate_shapes_vqa(num_train, seed, config, "train")}
    splits["test"] = generate_shapes_vqa(num_test, seed, config, "test")
    files = ShapesVQAFiles.at(root, list(splits))
    dataset = datasets.DatasetDict({split: records_to_dataset(records) for split, records in splits.items()})
    with atomic_path(files.dataset_dir, is_dir=True) as tmp:
        dataset.save_to_disk(str(tmp))
    for split, records in splits.items():
        write_tsv(records_to_tsv_frame(records), files.tsv[split])
    manifest = {
        "name": "ShapesVQA",
        "seed": seed,
        "num_train": num_train,
        "num_test": num_test,
        "config": dataclasses.asdict(config),
        "dataset_dir": files.dataset_dir.name,
        "tsv": {split: path.name for split, path in files.tsv.items()},
    }
    write_text(files.manifest, json.dumps(manifest, indent=2) + "\n")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clear_rl.demo.shapes_vqa",
        description="Generate ShapesVQA (a datasets folder and VLMEvalKit TSVs) into --out.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=2000, help="train samples (default 2000)")
    parser.add_argument("--test", type=int, default=500, help="test samples (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=ShapesVQAConfig.image_size)
    parser.add_argument("--mc-fraction", type=float, default=ShapesVQAConfig.multiple_choice_fraction)
    parser.add_argument("--symbols", default=ShapesVQAConfig.symbols, help=f"from {AVAILABLE_SYMBOLS}")
    parser.add_argument("--question-types", default=",".join(QUESTION_TYPES), help="comma-separated")
    args = parser.parse_args(argv)
    try:
        config = ShapesVQAConfig(
            image_size=args.image_size,
            question_types=tuple(t.strip() for t in args.question_types.split(",") if t.strip()),
            multiple_choice_fraction=args.mc_fraction,
            symbols=args.symbols,
        )
        files = build_shapes_vqa(args.out, args.train, args.test, args.seed, config)
    except ClearRLError as exc:
        print(f"shapes_vqa: error: {exc}", file=sys.stderr)
        return 2
    print(f"ShapesVQA: {args.train} train + {args.test} test samples, seed {args.seed}")
    print(f"  datasets folder: {files.dataset_dir}")
    for split, path in files.tsv.items():
        print(f"  {split} TSV: {path}")
    return 0
