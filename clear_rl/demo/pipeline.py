"""`make demo`: the whole CLEAR pipeline on a tiny model and ShapesVQA, made locally, on a CPU.

1. ShapesVQA: a synthetic VQA set whose fine details strong degradation destroys.
2. Stage 0 (demo only): the random tiny model becomes a competent small base: the VAE learns to
   reconstruct, the VLM to answer on clean and mildly degraded images, the bridge is aligned to
   the VLM's own vision tokens (`recipes/demo/align.yaml`, the stage any VLM + VAE pair runs
   before stage 1), the restoration head learns to restore degraded latents.
3. `clear-rl prepare` labels the corruption-aware data by probing the base model.
4. Stages 1-3 from `recipes/demo/*.yaml`, through the same path `clear-rl train` runs.
5. `clear-rl eval` on the held-out split at clean / low / mid / high for Base, CLEAR-SFT and
   CLEAR-RL, and the paper's tables and targets.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from clear_rl.data.prepare import prepare_dataset
from clear_rl.data.samples import PrepareConfig, ProbeSettings, template_corpus
from clear_rl.degrade import LEVELS, choose_corruptions, corrupt_images
from clear_rl.demo.bridge_align import align_bridge, cache_targets
from clear_rl.demo.colour_check import colour_check
from clear_rl.demo.head import cache_contexts, train_head
from clear_rl.demo.shapes_vqa import (
    ShapesVQAConfig,
    ShapesVQAFiles,
    build_shapes_vqa,
    generate_shapes_vqa,
    shapes_vqa_corpus,
)
from clear_rl.demo.steps import StepLedger, fingerprint
from clear_rl.demo.summary import write_summary
from clear_rl.demo.vae import train_vae
from clear_rl.demo.vision import warm_up_vision
from clear_rl.eval.gallery import slug
from clear_rl.eval.runner import EvalConfig, evaluate
from clear_rl.eval.scoring import LEVELS as ALL_LEVELS  # clean, low, mid, high
from clear_rl.io.atomic import write_text
from clear_rl.labelling import Prober
from clear_rl.models import TinyModelConfig, build_tiny_model
from clear_rl.models.io import load_unified, save_unified
from clear_rl.models.processing import vae_pixel_values
from clear_rl.recipe import load_recipe, stage_module
from clear_rl.trainers.progress import StageProgressCallback

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Sizes of the demo run; `smoke()` gives the seconds-long version CI runs."""

    out_dir: str = "demo_out"
    recipes_dir: str = "recipes/demo"
    seed: int = 0
    image_size: int = 64
    # The demo's task: a tiny ViT trained for minutes on a CPU learns colours reliably, not yet
    # shapes or printed digits (ShapesVQA has those for larger models).
    question_types: tuple[str, ...] = ("color",)
    num_train: int = 2000
    num_test: int = 300
    vae_images: int = 1024
    vae_steps: int = 300
    vision_steps: int = 300
    # The bridge aligns on cached targets (demo/bridge_align.py): steps of 32 images.
    align_steps: int = 900
    # The restoration head trains on cached contexts (demo/head.py): steps of `head_batch_size` rows.
    head_steps: int = 1000
    head_batch_size: int = 32
    head_learning_rate: float = 1e-3
    # Stage counts override the recipes' max_steps when set (None: the recipe's own).
    steps: dict[str, int | None] = field(
        default_factory=lambda: {
            "base": None,
            "sft": None,
            "bridge": None,
            "grpo": None,
        }
    )
    # How the corruption-aware data is labelled: by probing the base model (the paper) or by rule.
    label: str = "probe"
    # Targets open with the same quality check whatever the label, the decision being the token
    # after it (data/samples.py's build_target), so `--restore never` is a fair direct baseline.
    quality_check: str = "describe"
    eval_levels: tuple[str, ...] = ALL_LEVELS
    eval_batch_size: int = 32
    max_new_tokens: int = 64
    # The head's flow starts around the degraded latent: at this budget it keeps colours better
    # than a flow from pure noise (docs/demo.md).
    model: dict = field(
        default_factory=lambda: {"head_layers": 4, "num_inference_steps": 8, "flow_source": "degraded"}
    )

    @classmethod
    def smoke(cls, out_dir: str = "demo_smoke_out") -> DemoConfig:
        """A few steps per stage: checks that every stage hands a loadable model to the next."""
        return cls(
            out_dir=out_dir,
            num_train=48,
            num_test=8,
            vae_images=32,
            vae_steps=3,
            vision_steps=3,
            align_steps=2,
            head_steps=2,
            steps={"base": 2, "sft": 2, "bridge": 2, "grpo": 2},
            label="rule",  # an untrained base answers nothing right: probe labels would all be equal
            eval_levels=("clean", "high"),
            eval_batch_size=8,
            max_new_tokens=16,
            model={"head_layers": 1, "num_inference_steps": 2, "flow_source": "degraded"},
        )


class _Paths:
    def __init__(self, root: Path):
        self.root = root
        self.shapes = root / "data" / "shapes"
        self.base_vlm = root / "data" / "base_vlm"
        self.base_restore = root / "data" / "base_restore"
        self.prepared = root / "data" / "prepared"
        self.restoring = root / "data" / "restoring"
        self.models = root / "models"
        self.eval = root / "eval"

    def model(self, name: str) -> Path:
        return self.models / name


def shapes_config(config: DemoConfig) -> ShapesVQAConfig:
    """ShapesVQA as the demo uses it: one object per image, short answers."""
    return ShapesVQAConfig(
        image_size=config.image_size,
        question_types=config.question_types,
        multiple_choice_fraction=0.0,
        min_shapes=1,
        max_shapes=1,
    )


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _vae_images(config: DemoConfig) -> torch.Tensor:
    """Clean and degraded ShapesVQA images in [-1, 1]: what the VAE will have to encode."""
    records = generate_shapes_vqa(
        config.vae_images, seed=config.seed + 1, config=ShapesVQAConfig(config.image_size)
    )
    images = [r["image"] for r in records]
    seeds = [config.seed * 100_003 + i for i in range(len(images))]
    levels = [None, *LEVELS.values()]
    degraded = corrupt_images(
        images, choose_corruptions(seeds), [levels[i % 4] for i in range(len(images))], seeds
    )
    return vae_pixel_values(images + degraded, config.image_size)


def build_base_init(config: DemoConfig, paths: _Paths) -> Path:
    """The tiny model with a tokenizer for ShapesVQA and the protocol, a warmed-up ViT and a trained VAE."""
    tiny = TinyModelConfig(image_size=config.image_size, **config.model)
    shapes = shapes_config(config)
    model, processor = build_tiny_model(
        tiny, corpus=shapes_vqa_corpus(shapes) + template_corpus(), seed=config.seed
    )
    records = generate_shapes_vqa(config.num_train, seed=config.seed + 3, config=shapes)
    warm_up_vision(model, processor, records, shapes, steps=config.vision_steps, seed=config.seed)
    train_vae(model, _vae_images(config), steps=config.vae_steps, seed=config.seed)
    folder = paths.model("init")
    save_unified(model, processor, folder)
    return folder


def prepare_base_data(config: DemoConfig, source: Path, paths: _Paths) -> None:
    """Stage 0's data: direct answers on clean and mild images (the VLM), restorations at every
    level (the head)."""
    check = config.quality_check
    direct = PrepareConfig(
        seed=config.seed, levels=("clean", "low"), restore_levels=(), splits=("train",), quality_check=check
    )
    prepare_dataset(source, paths.base_vlm, direct)
    levels = ("low", "mid", "high")
    restore = PrepareConfig(
        seed=config.seed + 1, levels=levels, restore_levels=levels, splits=("train",), quality_check=check
    )
    prepare_dataset(source, paths.base_restore, restore)


def build_base(config: DemoConfig, paths: _Paths, source: Path) -> None:
    """Base: the model with its head trained and its bridge aligned to its own vision path
    (demo/bridge_align.py), on the training images."""
    import datasets

    model, processor = load_unified(paths.model("head"))
    images = datasets.load_from_disk(str(source))["train"]["image"]
    latents, targets = cache_targets(model, processor, images)
    align_bridge(model, latents, targets, config.align_steps, seed=config.seed)
    save_unified(model, processor, paths.model("base"))


def build_head(config: DemoConfig, paths: _Paths) -> None:
    """The base VLM with its restoration head trained (demo/head.py) on the restoring rows. The
    head's context ends at `<image_restore>`, before anything the bridge makes, so the head trains
    before the bridge is aligned and a change of alignment does not retrain it."""
    import datasets

    model, processor = load_unified(paths.model("base_vlm"))
    rows = datasets.load_from_disk(str(paths.base_restore))["train"]
    context, clean = cache_contexts(model, processor, rows, system_prompt(config))
    train_head(
        model, context, clean, config.head_steps, config.head_batch_size, config.head_learning_rate,
        seed=config.seed,
    )  # fmt: skip
    save_unified(model, processor, paths.model("head"))


def system_prompt(config: DemoConfig) -> str | None:
    """The system prompt the demo recipes train with; probing and evaluation use the same."""
    return load_recipe(Path(config.recipes_dir) / "sft.yaml").data.system_prompt


def prepare_training_data(config: DemoConfig, source: Path, paths: _Paths, base: Path) -> None:
    """Stages 1-3's data: each row degraded once, labelled restore where the base model fails."""
    if config.label == "probe":
        probe = ProbeSettings(
            model_path=str(base),
            batch_size=32,
            max_new_tokens=config.max_new_tokens,
            system_prompt=system_prompt(config),
        )
        labels, labeller = {"label": "probe", "probe": probe, "balance": True}, Prober(probe)
    else:
        labels, labeller = {"label": "rule", "restore_levels": ("mid", "high")}, None
    # Clean rows among the degraded ones keep the model's clean accuracy.
    prepared = PrepareConfig(
        seed=config.seed + 2, levels=ALL_LEVELS, quality_check=config.quality_check, **labels
    )
    prepare_dataset(source, paths.prepared, prepared, labeller)


def stage_overrides(
    config: DemoConfig, paths: _Paths, recipe: str, model_from: Path, data: Path, output: str
) -> list[str]:
    """The recipe overrides of one stage: this run's folders (and step count, if set)."""
    overrides = [
        f"model.path={model_from}",
        f"data.path={data}",
        f"training.output_dir={paths.model(output)}",
    ]
    if config.steps.get(recipe) is not None:
        overrides.append(f"training.max_steps={config.steps[recipe]}")
    return overrides


def prepare_restoring_data(config: DemoConfig, source: Path, paths: _Paths) -> None:
    """Stage 2's data: every row restores, at every level (clean included), so the model learns to
    read its own restorations beside the degraded view, where they help and where they do not."""
    levels = ALL_LEVELS
    restoring = PrepareConfig(
        seed=config.seed + 4, levels=levels, restore_levels=levels, splits=("train",),
        quality_check=config.quality_check,
    )  # fmt: skip
    prepare_dataset(source, paths.restoring, restoring)


def train_stage(config: DemoConfig, paths: _Paths, recipe: str, overrides: list[str]) -> None:
    """Run one recipe of recipes/demo with `overrides`, behind one progress bar labelled with the
    recipe's name."""
    # The demo rebuilds every step it runs, so a rerun into the same folder (or a step --reuse
    # cannot keep) starts that step's model over.
    loaded = load_recipe(Path(config.recipes_dir) / f"{recipe}.yaml", overrides, overwrite=True)
    stage_module(loaded.stage).train(loaded, callbacks=[StageProgressCallback(f"{recipe} ({loaded.stage})")])


def quiet_libraries() -> None:
    """The demo's console is its progress bars: the libraries' own bars and info logs go quiet."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # loading and writing weights
    logging.getLogger("clear_rl").setLevel(logging.WARNING)
    # Nothing a demo user can act on: TRL calls a deprecated transformers name, and a CPU has no
    # pinned memory for the dataloader to use.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings(
        "ignore", message=".*'pin_memory' argument is set as true.*", category=UserWarning
    )


class _Runner:
    """Runs the demo's steps in order: timed (wall and CPU seconds), skipped where `--reuse` finds
    them finished with the same fingerprint (steps.py)."""

    def __init__(self, root: Path, reuse: bool):
        self.ledger = StepLedger(root, reuse)
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.prints: dict[str, str] = {}
        self.reused: list[str] = []

    def step(self, key: str, label: str, settings, parents: tuple[str, ...], outputs, fn, *args):
        """Run `fn(*args)` as step `key` unless reusable; returns the step's fingerprint."""
        print_ = fingerprint(settings, [self.prints[p] for p in parents])
        self.prints[key] = print_
        _banner(label)
        began, cpu = time.perf_counter(), time.process_time()
        _, ran = self.ledger.run(key, print_, outputs, fn, *args)
        if not ran:
            self.reused.append(label)
            print(f"--- {label}: reused (finished earlier with the same settings)", flush=True)
            return print_
        self.timings[label] = time.perf_counter() - began
        self.cpu[label] = time.process_time() - cpu
        print(f"--- {label}: {self.timings[label]:.0f}s (CPU {self.cpu[label]:.0f}s)", flush=True)
        return print_


def _recipe_settings(config: DemoConfig, recipe: str, overrides: list[str]) -> dict:
    """What a training step depends on: its recipe's text and the overrides it runs with (folders
    relative to the run's, so a copied run folder is reused as well)."""
    text = (Path(config.recipes_dir) / f"{recipe}.yaml").read_text(encoding="utf-8")
    return {"recipe": text, "overrides": [o.replace(str(Path(config.out_dir)), "OUT") for o in overrides]}


def run_demo(config: DemoConfig, reuse: bool = False) -> Path:
    """Run every step; returns the summary file. Each step's outputs land under `out_dir`.

    With `reuse`, steps finished earlier in `out_dir` with the same settings (and the same
    settings upstream) are not run again (steps.py)."""
    quiet_libraries()
    paths = _Paths(Path(config.out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    runner = _Runner(paths.root, reuse)
    started, started_cpu = time.perf_counter(), time.process_time()
    shapes = shapes_config(config)
    files = ShapesVQAFiles.at(paths.shapes)
    data = {
        "seed": config.seed,
        "num_train": config.num_train,
        "num_test": config.num_test,
        "shapes": asdict(shapes),
    }
    runner.step(
        "data", "data: ShapesVQA", data, (), [files.dataset_dir, *files.tsv.values()],
        build_shapes_vqa, paths.shapes, config.num_train, config.num_test, config.seed, shapes,
    )  # fmt: skip
    source = files.dataset_dir
    init = {
        "model": config.model, "vision_steps": config.vision_steps, "vae_steps": config.vae_steps,
        "vae_images": config.vae_images, "image_size": config.image_size,
    }  # fmt: skip
    runner.step(
        "init",
        "stage 0: tiny model + VAE",
        init,
        ("data",),
        [paths.model("init")],
        build_base_init,
        config,
        paths,
    )
    runner.step(
        "base_data", "stage 0: base data", {"check": config.quality_check}, ("data",),
        [paths.base_vlm, paths.base_restore], prepare_base_data, config, source, paths,
    )  # fmt: skip
    overrides = stage_overrides(config, paths, "base", paths.model("init"), paths.base_vlm, "base_vlm")
    runner.step(
        "base_vlm", "stage 0: base VLM", _recipe_settings(config, "base", overrides), ("init", "base_data"),
        [paths.model("base_vlm")], train_stage, config, paths, "base", overrides,
    )  # fmt: skip
    # Probing answers directly, so the base VLM labels the rows as Base would: head and bridge
    # changes below do not relabel them.
    labelling = {
        "label": config.label,
        "check": config.quality_check,
        "max_new_tokens": config.max_new_tokens,
        "prompt": system_prompt(config),
    }
    runner.step(
        "prepared", "prepare: corruption-aware data", labelling, ("data", "base_vlm"), [paths.prepared],
        prepare_training_data, config, source, paths, paths.model("base_vlm"),
    )  # fmt: skip
    head = {"steps": config.head_steps, "batch": config.head_batch_size, "lr": config.head_learning_rate}
    runner.step(
        "head", "stage 0: restoration head", {**head, "prompt": system_prompt(config)}, ("base_vlm", "base_data"),
        [paths.model("head")], build_head, config, paths,
    )  # fmt: skip
    runner.step(
        "base", "stage 0: bridge alignment", {"steps": config.align_steps}, ("head", "data"),
        [paths.model("base")], build_base, config, paths, source,
    )  # fmt: skip
    runner.step(
        "restoring", "prepare: stage 2 data", {"check": config.quality_check}, ("data",), [paths.restoring],
        prepare_restoring_data, config, source, paths,
    )  # fmt: skip
    stages = [
        ("sft", "stage 1: SFT", "sft", "base", paths.prepared, ("base", "prepared")),
        ("bridge", "stage 2: bridge", "bridge", "sft", paths.restoring, ("sft", "restoring")),
        ("grpo", "stage 3: Interleaved GRPO", "grpo", "bridge", paths.prepared, ("bridge", "prepared")),
    ]
    for key, label, recipe, model_from, data_path, parents in stages:
        overrides = stage_overrides(config, paths, recipe, paths.model(model_from), data_path, key)
        runner.step(
            key, label, _recipe_settings(config, recipe, overrides), parents, [paths.model(key)],
            train_stage, config, paths, recipe, overrides,
        )  # fmt: skip
    # CLEAR-SFT: every supervised stage done (1 and 2), the model GRPO starts from.
    folders = {"Base": "base", "CLEAR-SFT": "bridge", "CLEAR-RL": "grpo"}
    eval_config = EvalConfig(
        system_prompt=system_prompt(config),
        levels=config.eval_levels,
        batch_size=config.eval_batch_size,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        restoration_metrics=[colour_check(config.image_size)],
        resume=True,  # each model's predictions are kept while its fingerprint holds (below)
    )
    test = [files.tsv["test"]]
    settings = {
        "levels": list(config.eval_levels),
        "max_new_tokens": config.max_new_tokens,
        "prompt": eval_config.system_prompt,
    }
    report = _evaluate(
        runner, "eval", "eval: Base, CLEAR-SFT, CLEAR-RL", folders, settings, test, paths.eval, eval_config
    )
    # What restoring gains, how good the restorations are, what the bridge loses of a perfect image.
    analysis = _evaluate(
        runner, "analysis", "eval: CLEAR-SFT never / always / oracle", {"CLEAR-SFT": "bridge"}, settings,
        test, paths.eval / "restoration", replace(eval_config, restore="never,always,oracle"), paths.eval / "degraded",
    )  # fmt: skip
    runner.timings["total"] = time.perf_counter() - started
    runner.cpu["total"] = time.process_time() - started_cpu
    write_text(paths.root / "demo_config.json", json.dumps(asdict(config), indent=2))
    summary = write_summary(
        report,
        paths.root / "SUMMARY.md",
        runner.timings,
        analysis,
        cpu_timings=runner.cpu,
        reused=runner.reused,
    )
    print(summary.read_text(encoding="utf-8"), flush=True)
    return summary


def _evaluate(
    runner: _Runner, key: str, label: str, folders: dict[str, str], settings: dict, test: list[Path],
    out: Path, config: EvalConfig, degraded_dir: Path | None = None,
) -> dict[str, Path]:  # fmt: skip
    """One evaluation of several models, each model's predictions kept from an earlier run only
    while the model's fingerprint (and the evaluation's settings) are unchanged."""
    paths = _Paths(runner.ledger.path.parent)
    stale = []
    for name, folder in folders.items():
        step = f"{key}:{name}"
        print_ = fingerprint({**settings, "restore": config.restore}, [runner.prints[folder]])
        runner.prints[step] = print_
        if not runner.ledger.finished(step, print_, [out / "predictions"]):
            stale.append(name)
            runner.ledger.forget(step)
            for predictions in (out / "predictions").glob("*"):
                if predictions.name == name or predictions.name.startswith(f"{slug(name)}_"):
                    shutil.rmtree(predictions)
    if not stale:
        runner.reused.append(label)
    _banner(label + ("" if stale else ": reusing every model's predictions"))
    began, cpu = time.perf_counter(), time.process_time()
    models = {name: load_unified(paths.model(folder)) for name, folder in folders.items()}
    report = evaluate(models, test, out, config, degraded_dir)
    if stale:
        runner.timings[label] = time.perf_counter() - began
        runner.cpu[label] = time.process_time() - cpu
        print(f"--- {label}: {runner.timings[label]:.0f}s (CPU {runner.cpu[label]:.0f}s)", flush=True)
    for name in folders:
        runner.ledger.record(f"{key}:{name}", runner.prints[f"{key}:{name}"])
    return report
