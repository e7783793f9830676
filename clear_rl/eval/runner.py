"""The MMD-Bench evaluation loop: each model on each benchmark at each degradation level.

The files come from `files.plan_files`: the clean files and any degraded ones given, the copies
in a folder given (`clear-rl degrade` outputs or the released MMD-Bench files, read only), and
copies made with a fixed seed into `<out>/degraded/` for what is missing. Each model is asked with
the system prompt it was trained with (`models.chat`) unless one is given. Rows are answered in
batches with interleaved generation (greedy text, ODE restoration), scored with the benchmark's
rules under the chosen protocol (`scoring.py`; MM-Vet graded by the judge), and reported with
`report.write_report`. Predictions are appended to `<out>/predictions/<model>/<dataset>.jsonl` as
each batch finishes, so `resume` continues an interrupted run where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from clear_rl.choices import DEGRADED_VIEWS, MODEL_READBACK, READBACK_CHOICES, RESTORE_POLICIES
from clear_rl.data.prompts import format_question, is_missing, row_options
from clear_rl.errors import ClearRLError, DataError
from clear_rl.eval.files import BenchmarkFiles, plan_files
from clear_rl.eval.gallery import save_example, slug
from clear_rl.eval.quality import measure_restorations
from clear_rl.eval.reference import CleanReference, row_corruptions
from clear_rl.eval.report import write_report
from clear_rl.eval.scoring import LEVELS, check_protocol, parse_dataset_name
from clear_rl.io.benchmark_tsv import read_benchmark_tsv
from clear_rl.io.images import decode_image, pil_to_tensor
from clear_rl.io.tsv import resolve_image_cells
from clear_rl.models import registry
from clear_rl.models.bagel.presets import READBACK_DESCRIPTIONS, TAG_DESCRIPTIONS
from clear_rl.models.chat import OWN_PROMPT, ChatSettings, resolve_chat
from clear_rl.models.tokens import SYSTEM_PROMPT
from clear_rl.rewards import answer_grades
from clear_rl.rollout.answering import answer_batch, vae_view_groups, vae_view_pixels
from clear_rl.rollout.interleaved import InterleavedGenerationConfig
from clear_rl.rollout.restoration import RestorationGuidance, RestorationSampling

logger = logging.getLogger(__name__)
# MODEL_READBACK: the model's own, its preset's for a BAGEL-family model (clear-release: reencode-vae), else bridge
READBACKS = READBACK_CHOICES
MODEL_GUIDANCE = "model"
DEFAULT_MAX_NEW_TOKENS = 256  # EvalConfig.restoration_guidance: the model's preset's


@dataclass
class EvalConfig:
    """How to evaluate: levels, restore policies, readbacks, batching, budgets, seed, gallery.

    `restore` and `readback` take one value or several (a list, or comma-separated text); every
    model is evaluated under each combination side by side (`never` needs no readback), and each
    combination's report rows are labelled `<model> [<policy>, <readback>]` where it varies.
    """

    levels: Sequence[str] = LEVELS
    restore: str | Sequence[str] = "model"  # model | always | never | oracle
    batch_size: int = 8
    # Tokens a row writes at most; None: the model's own budget (a model whose tags are text: the
    # release's, max_turns turns of turn_tokens each and their <|im_end|>; otherwise 256).
    max_new_tokens: int | None = None
    restoration_steps: int | None = None  # denoising steps of a restoration; None: the model's
    seed: int = 0
    # OWN_PROMPT: each model's own (the one it was trained with, see models.chat); a text, or None
    # for none, asks every model with that instead.
    system_prompt: str | None = OWN_PROMPT
    protocol: str = "paper"  # paper | vlmevalkit (see scoring.py)
    judge: bool = False
    resume: bool = False
    readback: str | Sequence[str] = MODEL_READBACK  # model | bridge | reencode | reencode-vae
    degraded_view: str = "keep"  # keep | drop: the degraded image's ViT tokens after restoring
    gallery: int = 2  # rows per corruption in each run's gallery (0: none)
    quality: bool = True  # PSNR / latent cosine of restorations against the clean rows
    # Extra per-row measures of a restoration: fn(row, decoded, degraded) -> {column: value}, with
    # the row's TSV cells and both images (3, S, S) in [-1, 1]; the values land in the predictions.
    restoration_metrics: Sequence[Callable[[dict, torch.Tensor, torch.Tensor], dict]] = ()
    num_inference_steps: int | None = None  # deprecated: the old name of `restoration_steps`
    # Restoration CFG, used where the backbone offers the unconditional contexts (BAGEL): "model"
    # (default) takes the model's inference preset's (CLEAR's eval for BAGEL folders); None: off.
    restoration_guidance: RestorationGuidance | None | str = "model"

    def __post_init__(self) -> None:
        self.protocol = check_protocol(self.protocol)
        if self.num_inference_steps is not None:
            warnings.warn(
                "EvalConfig(num_inference_steps=...) is deprecated and will be removed in the next "
                "release: use restoration_steps",
                FutureWarning,
                stacklevel=3,
            )
            if self.restoration_steps is None:
                self.restoration_steps = self.num_inference_steps


def choices(value: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """`"never,always"` or `["never", "always"]` -> the list, checked against `allowed`."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = list(dict.fromkeys(str(v).strip().lower() for v in items if str(v).strip()))
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ClearRLError(f"{what} must be among {', '.join(allowed)}, got {value!r}")
    return items


@dataclass(frozen=True)
class Run:
    """One way of evaluating one model; `label` names its report rows and predictions folder."""

    model: str
    restore: str
    readback: str  # "" for `never`, which reads nothing back
    label: str


def plan_runs(names: Sequence[str], config: EvalConfig) -> list[Run]:
    """Every (model, restore policy, readback) to evaluate, labelled so the report tells them apart.

    A label shows the policy unless the only one is `model`, and the readback when several are
    compared or the only one is neither the model's own nor the bridge; one plain run keeps the
    model's name.
    """
    restores = choices(config.restore, RESTORE_POLICIES, "restore")
    readbacks = choices(config.readback, READBACKS, "readback")
    choices(config.degraded_view, DEGRADED_VIEWS, "degraded_view")
    show_restore = restores != ["model"]
    show_readback = readbacks not in ([MODEL_READBACK], ["bridge"])
    runs = []
    for name in names:
        for restore in restores:
            for readback in readbacks if restore != "never" else [""]:
                parts = ([restore] if show_restore else []) + (
                    [readback] if show_readback and readback else []
                )
                label = f"{name} [{', '.join(parts)}]" if parts else name
                runs.append(Run(name, restore, readback, label))
    return runs


def _prompt_question(row: dict) -> str:
    question = str(row["question"])
    if not is_missing(row.get("hint")):  # MMBench's context, as VLMEvalKit prepends it
        question = f"Hint: {row['hint']}\n{question}"
    return format_question(question, row_options(row))


def _done_rows(path: Path) -> dict[str, dict]:
    """Rows already answered and scored in an earlier run (a torn last line from a crash, and a
    row that had no score, are answered again)."""
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("hit") is None:  # never scored (its answer cell was empty): answer it again
                continue
            done[str(record["index"])] = record
    return done


def _generation_config(config: EvalConfig, run: Run, model=None) -> InterleavedGenerationConfig:
    """Greedy text, ODE restoration, under the run's policy, readback and degraded view; guided as
    the model's preset says unless `config` gives its own guidance."""
    return InterleavedGenerationConfig(
        max_new_tokens=token_budget(config, model),
        do_sample=False,
        restore=run.restore,
        readback=readback_of(run, model),
        degraded_view=config.degraded_view,
        restoration=RestorationSampling(
            steps=config.restoration_steps, sampler="ode", guidance=restoration_guidance(config, model)
        ),
    )


def token_budget(config: EvalConfig, model) -> int:
    """`config.max_new_tokens`, or the model's own budget where it is None (see EvalConfig)."""
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    rules = getattr(model, "turn_rules", None)
    return DEFAULT_MAX_NEW_TOKENS if rules is None else rules.max_turns * (rules.turn_tokens + 1)


def readback_of(run: Run, model) -> str:
    """The run's readback, `model` meaning the model's own (its preset's; the bridge without one)."""
    if run.readback != MODEL_READBACK and run.readback:
        return run.readback
    preset = getattr(model, "preset", None)
    return preset.readback if preset is not None and run.readback else "bridge"


def inference_settings(model, config: EvalConfig, run: Run) -> dict:
    """A BAGEL-family model's preset and the values in force in `run` under `config` (the preset's, or
    the flags and the folder's records that replaced them), for the report; {} for a model without
    presets."""
    preset = getattr(model, "preset", None)
    if preset is None:
        return {}
    values = dict(preset.rows())
    readback = readback_of(run, model) if run.readback else None  # `never` reads nothing back
    values.update(protocol_values(model, preset, chat_for(config, model), readback))
    guidance = restoration_guidance(config, model)
    own = RestorationGuidance.from_preset(preset.guidance)
    if guidance is None:
        values["CFG text / image scale"] = "off (--no-cfg)"
    elif guidance != own:
        values["CFG text / image scale"] = f"{guidance.cfg_text} / {guidance.cfg_img}"
        values["CFG renorm"] = f"{guidance.renorm} (min {guidance.renorm_min})"
        values["CFG interval"] = f"t in ({guidance.interval[0]}, {guidance.interval[1]}]"
        values["CFG contexts"] = guidance.contexts
    own = config.max_new_tokens is None  # the model's own budget, not a flag's
    values["token budget"] = f"{token_budget(config, model)} tokens a completion" + (
        "" if own else " (given)"
    )
    steps = config.restoration_steps
    if steps is not None and steps != preset.steps:
        values["restoration steps"] = f"{steps} Euler steps (given; the preset's: {preset.steps})"
    changed = sorted(
        k for k, v in values.items() if v != dict(preset.rows()).get(k) and not (k == "token budget" and own)
    )
    return {"preset": preset.name, "preset_summary": preset.summary, "inference": values, "changed": changed}


def protocol_values(model, preset, chat: ChatSettings, readback: str | None) -> dict[str, str]:
    """The report's protocol rows where the run differs from the preset: the tags the folder records,
    the system prompt it was asked with, the readback a flag chose (`never` reads nothing back)."""
    values = {}
    if model.tags != preset.tags:
        values["protocol tags"] = f"{TAG_DESCRIPTIONS[model.tags]} ({model.tags_source})"
    if chat.system_prompt != (preset.system_prompt or SYSTEM_PROMPT):
        values["system prompt"] = f"from {chat.source}" if chat.system_prompt else f"none ({chat.source})"
    if readback is not None and readback != preset.readback:
        values["readback"] = READBACK_DESCRIPTIONS[readback]
    return values


def restoration_guidance(config: EvalConfig, model) -> RestorationGuidance | None:
    """`config.restoration_guidance`, where "model" means the model's preset's (BAGEL), else CLEAR's
    evaluation values (which a backbone without guidance contexts ignores)."""
    if config.restoration_guidance != MODEL_GUIDANCE:
        return config.restoration_guidance
    preset = getattr(model, "preset", None)
    return RestorationGuidance.from_preset(preset.guidance) if preset is not None else RestorationGuidance()


def _default_run(config: EvalConfig) -> Run:
    restores, readbacks = (
        choices(config.restore, RESTORE_POLICIES, "restore"),
        choices(config.readback, READBACKS, "readback"),
    )
    if len(restores) > 1 or len(readbacks) > 1:
        raise ClearRLError("answer_file evaluates one policy and readback; pass run= (see plan_runs)")
    return Run("model", restores[0], readbacks[0] if restores[0] != "never" else "", "model")


class _Gallery:
    """Saves the images of the first few rows per corruption (restored and not, separately)."""

    def __init__(self, folder: Path | None, per_corruption: int, done: dict[str, dict], corruption_of: dict):
        self.folder, self.limit = folder, per_corruption if folder is not None else 0
        self.counts: dict[tuple[str, bool], int] = {}
        for index, record in done.items():
            if record.get("gallery"):
                key = (corruption_of[index], bool(record.get("restored")))
                self.counts[key] = self.counts.get(key, 0) + 1

    def wants(self, corruption: str, restored: bool) -> bool:
        return self.counts.get((corruption, restored), 0) < self.limit

    def save(self, index, corruption, restored, degraded, clean, decoded, size) -> str:
        key = (corruption, restored)
        self.counts[key] = self.counts.get(key, 0) + 1
        stem = save_example(self.folder, index, degraded, clean, decoded, size)
        return stem.relative_to(self.folder.parents[2]).as_posix()  # relative to the output folder


@torch.no_grad()
def answer_file(
    model,
    processor,
    tsv: Path,
    predictions: Path,
    config: EvalConfig,
    progress: tqdm | None = None,
    run: Run | None = None,
    clean: CleanReference | None = None,
    gallery_dir: Path | None = None,
) -> pd.DataFrame:
    """Answer every row of one TSV; returns its rows (image column dropped) with predictions.

    With `clean` (the rows' clean source), restoring rows get their restoration's PSNR and latent
    cosine against the clean image, the `oracle` policy gets the clean latents, and up to
    `config.gallery` rows per corruption get their images saved under `gallery_dir`
    (`<out>/restorations/<run>/<dataset>`; rows record the path relative to `<out>`).
    """
    run = run or _default_run(config)
    if run.restore == "oracle" and clean is None:
        raise ClearRLError(f"{tsv}: restore=oracle needs the clean source of the rows")
    chat = chat_for(config, model)
    frame = read_benchmark_tsv(tsv)
    cells = resolve_image_cells(frame)
    digests = [hashlib.sha1(cell.encode("utf-8")).hexdigest()[:16] for cell in cells]  # MMVP pair checks
    rows = frame.drop(columns=["image"]).to_dict("records")
    # MM-Vet is graded by the judge answer by answer, with its own prompt (scoring.py).
    mmvet = parse_dataset_name(tsv.stem).benchmark == "MM-Vet"
    keys = [str(row["index"]) for row in rows]
    corruptions = row_corruptions(tsv, keys)
    corruption_of = dict(zip(keys, corruptions))
    done = _done_rows(predictions) if config.resume else {}
    if not config.resume:
        predictions.unlink(missing_ok=True)
    predictions.parent.mkdir(parents=True, exist_ok=True)
    todo = [i for i, key in enumerate(keys) if key not in done]
    reused = len(keys) - len(todo)
    if reused:
        logger.info("%s: %d of %d rows answered by an earlier run, reused (--resume)", tsv, reused, len(keys))
        if progress is not None:
            progress.update(reused)
    is_clean_file = clean is not None and tsv.resolve() == clean.source.resolve()
    # A run that never restores has no restoration to show.
    shows = clean is not None and run.restore != "never"
    gallery = _Gallery(gallery_dir if shows else None, config.gallery, done, corruption_of)
    file = _FileRun(
        config, run, chat, rows, keys, corruptions, digests, mmvet, _generation_config(config, run, model),
        torch.Generator(device=model.device).manual_seed(config.seed), gallery, is_clean_file,
    )  # fmt: skip
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start : start + config.batch_size]
        images = [decode_image(cells[i], f"{tsv}: row index={keys[i]}", Path(tsv).parent) for i in chunk]
        clean_images = clean.images([keys[i] for i in chunk]) if clean is not None else None
        records: dict[int, dict] = {}
        # Rows are answered in groups of one VAE view size (BAGEL keeps each image's aspect ratio).
        for group in vae_view_groups(processor, images):
            part = _Part(
                [chunk[g] for g in group],
                [images[g] for g in group],
                [clean_images[g] for g in group] if clean_images else None,
            )
            records.update(_answer_part(model, processor, part, file))
        with predictions.open("a", encoding="utf-8") as handle:
            for i in chunk:
                done[records[i]["index"]] = records[i]
                handle.write(json.dumps(records[i], ensure_ascii=False) + "\n")
        if progress is not None:
            progress.update(len(chunk))
    answers = pd.DataFrame([done[key] for key in keys]).drop(columns=["index"])
    results = pd.DataFrame(rows).drop(columns=[c for c in answers.columns if c in rows[0]])
    return pd.concat([results.reset_index(drop=True), answers.reset_index(drop=True)], axis=1)


@dataclass
class _Part:
    """Rows of one chunk answered together: their row numbers, images and clean images."""

    rows: list[int]
    images: list
    clean_images: list | None


@dataclass
class _FileRun:
    """What answering one file's rows needs besides the rows' images."""

    config: EvalConfig
    run: Run
    chat: ChatSettings
    rows: list[dict]
    keys: list[str]
    corruptions: list[str]
    digests: list[str]
    mmvet: bool
    generation: InterleavedGenerationConfig
    generator: torch.Generator
    gallery: _Gallery
    is_clean_file: bool


def _answer_part(model, processor, part: _Part, file: _FileRun) -> dict[int, dict]:
    """Answer, score and measure rows that share one VAE view; their prediction records by row."""
    config, rows, keys, corruptions = file.config, file.rows, file.keys, file.corruptions
    clean_pixels = None
    if part.clean_images:
        clean_pixels = _clean_view(model, processor, part.images, part.clean_images).to(model.device)
    oracle = None
    if file.run.restore == "oracle":  # the clean latents are given, not the model's work: not timed
        oracle = model.encode_latents(clean_pixels).float()
    answered = answer_batch(
        model,
        processor,
        part.images,
        [_prompt_question(rows[i]) for i in part.rows],
        file.generation,
        system_prompt=file.chat.system_prompt,
        generator=file.generator,
        oracle_latents=oracle,
        chat_template_kwargs=file.chat.chat_template_kwargs,
    )
    out, texts_out, pixels = answered.output, answered.texts, answered.vae_pixel_values
    latency = answered.seconds / len(part.rows)
    columns = {key: [rows[i].get(key) for i in part.rows] for key in rows[part.rows[0]]}
    grades = answer_grades(
        texts_out, columns["answer"], columns, judge=config.judge,
        judge_every=file.mmvet, judge_style="mmvet" if file.mmvet else "default",
    )  # fmt: skip
    restored = out.restored.bool().cpu()
    quality, where = None, {}
    if clean_pixels is not None and config.quality and bool(restored.any()):
        picked = restored.nonzero().squeeze(1)
        degraded_latents = out.degraded_latents[picked] if out.degraded_latents is not None else None
        quality = measure_restorations(
            model,
            out.restored_latents[picked.to(out.restored_latents.device)],
            pixels[picked.to(pixels.device)],
            clean_pixels[picked.to(clean_pixels.device)],
            degraded_latents=degraded_latents,
            clean_latents=oracle[picked] if oracle is not None else None,
            compare_degraded=not file.is_clean_file,
        )
        where = {int(j): k for k, j in enumerate(picked.tolist())}
    view = (int(pixels.shape[-1]), int(pixels.shape[-2]))  # (width, height) of the gallery's images
    records = {}
    for j, i in enumerate(part.rows):
        record = {
            "index": keys[i],
            "prediction": texts_out[j],
            "hit": grades.scores[j],
            "graded_by": grades.graded_by[j],
            "restored": bool(restored[j]),
            "latency_s": latency,
            "num_tokens": int(out.text_mask[j].sum()),
            "corruption": corruptions[i],
            "image_digest": file.digests[i],
        }
        if j in where:
            record.update(quality.record(where[j]))
            for metric in config.restoration_metrics:
                record.update(metric(rows[i], quality.decoded[where[j]], pixels[j].cpu()))
        if file.gallery.wants(corruptions[i], record["restored"]):
            decoded = quality.decoded[where[j]] if j in where else None
            record["gallery"] = file.gallery.save(
                keys[i],
                corruptions[i],
                record["restored"],
                part.images[j],
                part.clean_images[j],
                decoded,
                view,
            )
        records[i] = record
    return records


def _clean_view(model, processor, images, clean_images) -> torch.Tensor:
    """The clean images' VAE view at the degraded images' view size (their sizes match in MMD-Bench;
    a clean image of another size is resized to it, so PSNR compares like with like)."""
    degraded = vae_view_pixels(model, processor, images)
    try:
        clean = vae_view_pixels(model, processor, clean_images)
    except ClearRLError:  # clean images of several view sizes: resized to the degraded view below
        clean = None
    if clean is None or clean.shape != degraded.shape:
        height, width = degraded.shape[-2:]
        resized = [im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC) for im in clean_images]
        clean = torch.stack([pil_to_tensor(im) for im in resized]).mul_(2.0).sub_(1.0)
    return clean


def chat_for(config: EvalConfig, model) -> ChatSettings:
    """The system prompt and chat settings `model` is asked with under `config`."""
    return resolve_chat(config.system_prompt, model, "EvalConfig.system_prompt (--system-prompt)")


def _files_of(run: Run, group: BenchmarkFiles, clean: CleanReference | None) -> list[Path]:
    """The files a run answers: all of them, except for `oracle`, which hides the image and
    fills the slot with the clean latent, so every level would give the same answers: it answers
    the clean file (else the first level's) once, and nothing where there is no clean image."""
    if run.restore != "oracle":
        return group.all_files()
    if clean is None:
        return []
    return [group.levels.get("clean", next(iter(group.all_files())))]


def _check_readbacks(models: dict[str, tuple], runs: list[Run]) -> None:
    """Each run's readback is one its model's backbone offers (its registry declaration)."""
    for run in runs:
        if run.readback in ("", MODEL_READBACK):
            continue
        spec = registry.spec_of(registry.unified_core(models[run.model][0]))
        if run.readback not in spec.readbacks:
            raise ClearRLError(
                f"readback {run.readback!r}: {run.model} (a {spec.name} model) reads restorations back "
                f"through {list(spec.readbacks)} only"
            )


def evaluate(
    models: dict[str, tuple],
    benchmarks: Sequence[str | Path],
    out_dir: str | Path,
    config: EvalConfig,
    degraded_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Evaluate `{name: (model, processor)}` on every benchmark file and level under every run of
    `plan_runs` (`oracle` runs on the clean level only, see `_files_of`); write the report.

    `benchmarks` are clean files (their levels are found or made, see `files.plan_files`) and
    degraded files answered as they are (the released `_LOW_LEVEL_<LEVEL>` and per-corruption
    files, R-Bench-Dis); `degraded_dir` is a folder of degraded copies to read. Everything is
    written under `out_dir`; the inputs are only read."""
    out = Path(out_dir)
    sources = list(dict.fromkeys(Path(b) for b in benchmarks))
    runs = plan_runs(list(models), config)
    _check_readbacks(models, runs)
    for source in sources:
        if not source.is_file():
            raise DataError(f"benchmark file not found: {source}")
    groups = plan_files(
        sources, list(config.levels), out / "degraded", config.seed,
        Path(degraded_dir) if degraded_dir else None, reuse_cache=config.resume,
    )  # fmt: skip
    if not groups:
        raise DataError(f"nothing to evaluate at levels {list(config.levels)} in {[str(s) for s in sources]}")
    references: dict[str, CleanReference | None] = {}
    num_rows: dict[Path, int] = {}
    for group in groups:
        frames = {path: group.frames.get(path) for path in group.all_files()}
        frames = {path: read_benchmark_tsv(path) if f is None else f for path, f in frames.items()}
        num_rows.update({path: len(frame) for path, frame in frames.items()})  # bad files fail here
        # The clean file measures restorations even where its level is not answered; a benchmark
        # shipped degraded (R-Bench-Dis) has no clean version to measure against.
        native = parse_dataset_name(group.base).native_degraded
        reference = None
        if group.clean is not None and not native:
            frame = frames.get(group.clean)
            reference = CleanReference(
                group.clean,
                frame if frame is not None else group.frames[group.clean],
            )
        references[group.base] = reference
    total = sum(
        num_rows[path] for run in runs for g in groups for path in _files_of(run, g, references[g.base])
    )
    results: dict[str, dict[str, pd.DataFrame]] = {}
    per_model = Counter(run.model for run in runs)
    with tqdm(total=total, desc="eval", unit="q") as progress:
        for run in runs:
            model, processor = models[run.model]
            model.eval()
            # A model's only run keeps the folder named after the model (what `resume` looks for).
            folder = run.model if per_model[run.model] == 1 else slug(run.label)
            results[run.label] = {}
            for group in groups:
                for path in _files_of(run, group, references[group.base]):
                    dataset = path.stem  # <name>, <name>_MMD_<level>, <name>_LOW_LEVEL_<LEVEL>, ...
                    predictions = out / "predictions" / folder / f"{dataset}.jsonl"
                    progress.set_postfix_str(f"{run.label} {dataset}")
                    results[run.label][dataset] = answer_file(
                        model, processor, path, predictions, config, progress, run=run,
                        clean=references[group.base], gallery_dir=out / "restorations" / folder / dataset,
                    )  # fmt: skip
    meta = {}
    for run in runs:
        chat = chat_for(config, models[run.model][0])
        readback = readback_of(run, models[run.model][0]) if run.readback else ""
        meta[run.label] = {
            "model": run.model, "restore": run.restore, "readback": readback,
            "system_prompt": chat.system_prompt, "prompt_source": chat.source,
            "chat_template_kwargs": chat.chat_template_kwargs,
        }  # fmt: skip
        meta[run.label].update(inference_settings(models[run.model][0], config, run))
    return write_report(
        results,
        out,
        title="MMD-Bench evaluation",
        runs=meta,
        gallery=config.gallery,
        protocol=config.protocol,
    )
