"""The MMD-Bench evaluation loop: each model on each benchmark at each degradation level.

Degraded copies are the ones `clear-rl degrade` writes (`<name>_MMD_<level>.tsv`), made on the
fly with a fixed seed into `<out>/degraded/` unless given. Rows are answered in batches with
interleaved generation (greedy text, ODE restoration), scored with the benchmark's own rules
(`scoring.py`), and reported with `report.write_report`. Predictions are appended to
`<out>/predictions/<model>/<dataset>.jsonl` as each batch finishes, so `resume` continues an
interrupted run where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from clear_rl.data.collate import encode_prompts
from clear_rl.data.prompts import format_question, is_missing, row_options
from clear_rl.data.tsv import decode_row_image, read_tsv, resolve_image_cells
from clear_rl.errors import DataError
from clear_rl.eval.report import write_report
from clear_rl.eval.scoring import LEVELS
from clear_rl.generation import InterleavedGenerationConfig, RestorePolicy, generate_interleaved
from clear_rl.models.processing import vae_pixel_values
from clear_rl.models.tokens import SYSTEM_PROMPT
from clear_rl.reward_helpers import answer_scores

logger = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("index", "image", "question", "answer")


@dataclass
class EvalConfig:
    """How to evaluate: levels, restore policy, batching, budgets, seed."""

    levels: Sequence[str] = LEVELS
    restore: RestorePolicy = "model"
    batch_size: int = 8
    max_new_tokens: int = 256
    num_inference_steps: int | None = None
    seed: int = 0
    system_prompt: str | None = SYSTEM_PROMPT
    judge: bool = False
    resume: bool = False


def level_files(tsv: Path, levels: Sequence[str], cache_dir: Path, seed: int, reuse: bool) -> dict[str, Path]:
    """The file of each level: the clean TSV itself, else its MMD-Bench copy, made unless `reuse`
    finds it in `cache_dir` already."""
    files = {"clean": tsv} if "clean" in levels else {}
    degraded = [level for level in levels if level != "clean"]
    if degraded:
        wanted = {level: cache_dir / f"{tsv.stem}_MMD_{level}.tsv" for level in degraded}
        missing = [level for level, path in wanted.items() if not (reuse and path.exists())]
        if missing:
            from clear_rl.degrade.benchmark import DegradeOptions, degrade_tsv

            degrade_tsv(tsv, cache_dir, DegradeOptions(levels=missing, seed=seed, progress=False))
        files.update(wanted)
    return files


def _prompt_question(row: dict) -> str:
    question = str(row["question"])
    if not is_missing(row.get("hint")):  # MMBench's context, as VLMEvalKit prepends it
        question = f"Hint: {row['hint']}\n{question}"
    return format_question(question, row_options(row))


def _done_rows(path: Path) -> dict[str, dict]:
    """Rows already answered in an earlier run (a torn last line from a crash is ignored)."""
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[str(record["index"])] = record
    return done


@torch.no_grad()
def answer_file(
    model, processor, tsv: Path, predictions: Path, config: EvalConfig, progress: tqdm | None = None
) -> pd.DataFrame:
    """Answer every row of one TSV; returns its rows (image column dropped) with predictions."""
    frame = read_tsv(tsv, required=REQUIRED_COLUMNS)
    cells = resolve_image_cells(frame)
    rows = frame.drop(columns=["image"]).to_dict("records")
    done = _done_rows(predictions) if config.resume else {}
    if not config.resume:
        predictions.unlink(missing_ok=True)
    predictions.parent.mkdir(parents=True, exist_ok=True)
    todo = [i for i, row in enumerate(rows) if str(row["index"]) not in done]
    generation = InterleavedGenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=False,
        restore=config.restore,
        sampler="ode",
        num_inference_steps=config.num_inference_steps,
    )
    generator = torch.Generator(device=model.device).manual_seed(config.seed)
    size = model.config.vae_image_size
    tokenizer = processor.tokenizer
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start : start + config.batch_size]
        images = [decode_row_image(cells[i], rows[i]["index"], tsv) for i in chunk]
        questions = [_prompt_question(rows[i]) for i in chunk]
        batch = encode_prompts(processor, images, questions, config.system_prompt).to(model.device)
        began = time.perf_counter()
        out = generate_interleaved(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            generation,
            vae_pixel_values=vae_pixel_values(images, size).to(model.device),
            generator=generator,
            **{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")},
        )
        latency = (time.perf_counter() - began) / len(chunk)
        texts_out = tokenizer.batch_decode(
            [ids[mask.bool()] for ids, mask in zip(out.completion_ids, out.completion_mask)],
            skip_special_tokens=True,
        )
        columns = {key: [rows[i].get(key) for i in chunk] for key in rows[chunk[0]]}
        hits = answer_scores(texts_out, columns["answer"], columns, judge=config.judge)
        with predictions.open("a", encoding="utf-8") as handle:
            for j, i in enumerate(chunk):
                record = {
                    "index": str(rows[i]["index"]),
                    "prediction": texts_out[j],
                    "hit": hits[j],
                    "restored": bool(out.restored[j]),
                    "latency_s": latency,
                    "num_tokens": int(out.text_mask[j].sum()),
                }
                done[record["index"]] = record
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        if progress is not None:
            progress.update(len(chunk))
    results = pd.DataFrame(rows)
    answers = pd.DataFrame([done[str(row["index"])] for row in rows]).drop(columns=["index"])
    return pd.concat([results.reset_index(drop=True), answers.reset_index(drop=True)], axis=1)


def evaluate(
    models: dict[str, tuple],
    benchmarks: Sequence[str | Path],
    out_dir: str | Path,
    config: EvalConfig,
    degraded_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Evaluate `{name: (model, processor)}` on every benchmark and level; write the report."""
    out = Path(out_dir)
    cache = Path(degraded_dir) if degraded_dir else out / "degraded"
    sources = [Path(b) for b in benchmarks]
    num_rows = {}
    for source in sources:
        if not source.is_file():
            raise DataError(f"benchmark file not found: {source}")
        # Fail on a bad file before any model runs; every degraded copy keeps all of its rows.
        num_rows[source] = len(read_tsv(source, required=REQUIRED_COLUMNS))
    # Copies in a folder the user names (`clear-rl degrade` outputs, or the released files) are read.
    reuse = config.resume or degraded_dir is not None
    files = {source: level_files(source, config.levels, cache, config.seed, reuse) for source in sources}
    total = sum(num_rows[source] * len(per_level) for source, per_level in files.items()) * len(models)
    results: dict[str, dict[str, pd.DataFrame]] = {}
    with tqdm(total=total, desc="eval", unit="q") as progress:
        for name, (model, processor) in models.items():
            model.eval()
            results[name] = {}
            for per_level in files.values():
                for path in per_level.values():
                    dataset = path.stem  # <name> or <name>_MMD_<level>
                    predictions = out / "predictions" / name / f"{dataset}.jsonl"
                    progress.set_postfix_str(f"{name} {dataset}")
                    results[name][dataset] = answer_file(
                        model, processor, path, predictions, config, progress
                    )
    return write_report(results, out, title="MMD-Bench evaluation")
