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
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from clear_rl.data.prepare import prepare_dataset
from clear_rl.data.samples import PrepareConfig, ProbeSettings, template_corpus
from clear_rl.degrade import LEVELS, choose_corruptions, corrupt_images
from clear_rl.demo.colour_check import colour_check
from clear_rl.demo.shapes_vqa import ShapesVQAConfig, build_shapes_vqa, generate_shapes_vqa, shapes_vqa_corpus
from clear_rl.demo.summary import write_summary
from clear_rl.demo.vae import train_vae
from clear_rl.demo.vision import warm_up_vision
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
    # Stage counts override the recipes' max_steps when set (None: the recipe's own).
    steps: dict[str, int | None] = field(
        default_factory=lambda: {
            "base": None,
            "align": None,
            "base_head": None,
            "sft": None,
            "bridge": None,
            "grpo": None,
        }
    )
    # How the corruption-aware data is labelled: by probing the base model (the paper) or by rule.
    label: str = "probe"
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
            steps={"base": 2, "align": 2, "base_head": 2, "sft": 2, "bridge": 2, "grpo": 2},
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
    direct = PrepareConfig(seed=config.seed, levels=("clean", "low"), restore_levels=(), splits=("train",))
    prepare_dataset(source, paths.base_vlm, direct)
    levels = ("low", "mid", "high")
    restore = PrepareConfig(seed=config.seed + 1, levels=levels, restore_levels=levels, splits=("train",))
    prepare_dataset(source, paths.base_restore, restore)


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
    prepared = PrepareConfig(seed=config.seed + 2, levels=ALL_LEVELS, **labels)
    prepare_dataset(source, paths.prepared, prepared, labeller)


def train_stage(
    config: DemoConfig, paths: _Paths, recipe: str, model_from: Path, data: Path, output: str
) -> Path:
    """Run one recipe of recipes/demo with this run's folders (and step count, if set), behind one
    progress bar labelled with the recipe's name."""
    out = paths.model(output)
    overrides = [f"model.path={model_from}", f"data.path={data}", f"training.output_dir={out}"]
    if config.steps.get(recipe) is not None:
        overrides.append(f"training.max_steps={config.steps[recipe]}")
    # The demo rebuilds every stage's input, so a second demo into the same folder starts over.
    loaded = load_recipe(Path(config.recipes_dir) / f"{recipe}.yaml", overrides, overwrite=True)
    stage_module(loaded.stage).train(loaded, callbacks=[StageProgressCallback(f"{recipe} ({loaded.stage})")])
    return out


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


def run_demo(config: DemoConfig) -> Path:
    """Run every step; returns the summary file. Each step's outputs land under `out_dir`."""
    quiet_libraries()
    paths = _Paths(Path(config.out_dir))
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, fn, *args):
        _banner(name)
        began = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - began
        print(f"--- {name}: {timings[name]:.0f}s", flush=True)
        return result

    shapes = shapes_config(config)
    files = timed(
        "data: ShapesVQA",
        build_shapes_vqa,
        paths.shapes,
        config.num_train,
        config.num_test,
        config.seed,
        shapes,
    )
    source = files.dataset_dir
    timed("stage 0: tiny model + VAE", build_base_init, config, paths)
    timed("stage 0: base data", prepare_base_data, config, source, paths)
    timed(
        "stage 0: base VLM",
        train_stage,
        config,
        paths,
        "base",
        paths.model("init"),
        paths.base_vlm,
        "base_vlm",
    )
    timed(
        "stage 0: bridge alignment",
        train_stage, config, paths, "align", paths.model("base_vlm"), source, "aligned",
    )  # fmt: skip
    base = timed(
        "stage 0: base restoration head",
        train_stage, config, paths, "base_head", paths.model("aligned"), paths.base_restore, "base",
    )  # fmt: skip
    timed("prepare: corruption-aware data", prepare_training_data, config, source, paths, base)
    sft = timed("stage 1: SFT", train_stage, config, paths, "sft", base, paths.prepared, "sft")
    bridge = timed("stage 2: bridge", train_stage, config, paths, "bridge", sft, paths.prepared, "bridge")
    rl = timed(
        "stage 3: Interleaved GRPO", train_stage, config, paths, "grpo", bridge, paths.prepared, "grpo"
    )
    # CLEAR-SFT: every supervised stage done (1 and 2), the model GRPO starts from.
    models = {
        name: load_unified(path) for name, path in (("Base", base), ("CLEAR-SFT", bridge), ("CLEAR-RL", rl))
    }
    eval_config = EvalConfig(
        system_prompt=system_prompt(config),
        levels=config.eval_levels,
        batch_size=config.eval_batch_size,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        restoration_metrics=[colour_check(config.image_size)],
    )
    test = [files.tsv["test"]]
    report = timed("eval: Base, CLEAR-SFT, CLEAR-RL", evaluate, models, test, paths.eval, eval_config)
    # What restoring gains, how good the restorations are, what the bridge loses of a clean image.
    analysis_config = replace(eval_config, restore="never,always,oracle")
    analysis = timed(
        "eval: CLEAR-SFT never / always / oracle",
        evaluate, {"CLEAR-SFT": models["CLEAR-SFT"]}, test, paths.eval / "restoration", analysis_config,
        paths.eval / "degraded",
    )  # fmt: skip
    timings["total"] = time.perf_counter() - started
    write_text(paths.root / "demo_config.json", json.dumps(asdict(config), indent=2))
    summary = write_summary(report, paths.root / "SUMMARY.md", timings, analysis)
    print(summary.read_text(encoding="utf-8"), flush=True)
    return summary
