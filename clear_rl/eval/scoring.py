"""Benchmark scores, each benchmark by its protocol: the paper's (CLEAR's copy of VLMEvalKit,
default) or upstream VLMEvalKit's.

Input: one benchmark file's results as a DataFrame with the TSV's columns (`index`, `answer`,
options, `category`, `l2-category`, `source`, `g_index`, ...) plus `prediction`, `hit` (0/1 or a
score in [0, 1]), and optionally `restored`, `latency_s`, `num_tokens`, `graded_by`.
- MMBench (both protocols): circular evaluation. Rows sharing a `g_index` (the file's column
  when it has one, else `index % 1e6`) are rotations of one question; a question counts only
  when every rotation is right.
- MMVP: `paper` = question accuracy (CLEAR's copy scores it as a plain multiple-choice set, which
  is how the paper's numbers come out of 300 questions); `vlmevalkit` = pairs: rows sorted by
  index form pairs (1st, 2nd), (3rd, 4th), ..., each pair's two rows must share their question
  or image, and a pair counts only when both are right (question accuracy beside it).
- CV-Bench (2D): `paper` = plain accuracy over its questions (per source beside it);
  `vlmevalkit` = accuracy per `source` (ADE20K, COCO), then the mean over sources.
- MM-Vet: the mean of a judge's score in [0, 1] per answer, per capability too. Only a judge
  scores it: unless every row's `graded_by` is `judge`, MM-Vet is reported as not scored.
- MMStar, RealWorldQA, R-Bench-Dis and any other name: plain accuracy, per category too.
Scores are percentages, as in the paper's tables. The benchmark and MMD-Bench level come from the
dataset name: `MMBench_DEV_EN_V11`, `MMBench_DEV_EN_V11_MMD_high`, `MMStar_LOW_LEVEL_MID`, ...
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clear_rl.choices import LEVELS, SCORING_PROTOCOLS
from clear_rl.data.prompts import is_missing, row_options
from clear_rl.degrade import CORRUPTIONS as CORRUPTION_REGISTRY
from clear_rl.errors import DataError
from clear_rl.eval.extract import score_answer

CIRCULAR_STRIDE = 1_000_000
MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
# paper: CLEAR's copy of VLMEvalKit, which made the paper's tables; vlmevalkit: upstream's rules.
PROTOCOLS = SCORING_PROTOCOLS
PROTOCOL_SUMMARIES = {
    "paper": "CLEAR's copy of VLMEvalKit, as in the paper's tables: MMBench circular, MMVP and "
    "CV-Bench as question accuracy, MM-Vet judge-graded, the rest plain accuracy.",
    "vlmevalkit": "upstream VLMEvalKit's rules: MMBench circular, MMVP by image pairs, CV-Bench "
    "as the mean over its sources, MM-Vet judge-graded, the rest plain accuracy.",
}


@dataclass(frozen=True)
class Benchmark:
    """A known benchmark: its column title in reports and how each protocol scores it."""

    title: str
    rule: str  # upstream VLMEvalKit's: circular | pairs | source_mean | mean_score | accuracy
    key: str  # its name lower-cased without punctuation, matched as a prefix
    native_degraded: bool = False  # shipped degraded (R-Bench-Dis): reported with the High level
    paper_rule: str | None = None  # where CLEAR's copy differs (None: the same as `rule`)

    def rule_of(self, protocol: str) -> str:
        return (self.paper_rule or self.rule) if protocol == "paper" else self.rule


BENCHMARKS = (
    Benchmark("MMBench", "circular", "mmbench"),
    Benchmark("MM-Vet", "mean_score", "mmvet"),
    Benchmark("MMVP", "pairs", "mmvp", paper_rule="accuracy"),
    Benchmark("CV-Bench-3D", "accuracy", "cvbench3d"),
    Benchmark("CV-Bench", "source_mean", "cvbench", paper_rule="accuracy"),
    Benchmark("MMStar", "accuracy", "mmstar"),
    Benchmark("RealWorldQA", "accuracy", "realworldqa"),
    Benchmark("R-Bench-Dis", "accuracy", "rbenchdis", native_degraded=True),
)
PAPER_ORDER = ("MMBench", "MM-Vet", "MMVP", "CV-Bench", "MMStar", "RealWorldQA", "R-Bench-Dis")

# MMD-Bench's 16 corruptions (MMD_BENCH_SPEC.md); CLEAR's per-corruption files `<Base>_<name>` are High.
CORRUPTIONS = tuple(CORRUPTION_REGISTRY)
_NAMES = "|".join(CORRUPTIONS)
_CORRUPTION_SUFFIX = re.compile(
    rf"^(?P<base>.+?)(?:_MMD)?_(?P<corruption>{_NAMES})(?:_(?P<mmd>low|mid|high))?$", re.I
)  # CLEAR's per-corruption set (`MMStar_graffiti`, High) and `clear-rl degrade --mode full` files
_LEVEL_SUFFIX = re.compile(
    r"^(?P<base>.+?)(?:_MMD_(?P<mmd>low|mid|high)|_LOW_LEVEL_(?P<release>low|mid|high)|_(?P<plain>clean|low|mid|high))$",
    re.I,
)


@dataclass(frozen=True)
class DatasetName:
    """What a benchmark file's name says: which benchmark, which MMD-Bench level."""

    dataset: str
    base: str
    benchmark: str
    rule: str
    level: str
    native_degraded: bool = False
    corruption: str = ""  # set for CLEAR's per-corruption files, "" for the mixed MMD-Bench levels


def check_protocol(protocol: str) -> str:
    """The protocol, lower-cased; a DataError lists the choices."""
    chosen = str(protocol).strip().lower()
    if chosen not in PROTOCOLS:
        raise DataError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return chosen


def parse_dataset_name(name: str, level: str | None = None, protocol: str = "paper") -> DatasetName:
    """`MMBench_DEV_EN_V11_MMD_high` -> MMBench, circular, high. Unknown names score as plain accuracy.

    Level suffixes: `_MMD_<level>`, the release's `_LOW_LEVEL_<LEVEL>`, or `_<level>`; none means
    clean. A corruption suffix (`MMStar_graffiti`, CLEAR's per-corruption set) means High.
    `level` overrides what the name says; `protocol` picks the rule (see the module docstring).
    """
    protocol = check_protocol(protocol)
    dataset = Path(str(name)).name.removesuffix(".tsv")
    match = _CORRUPTION_SUFFIX.match(dataset) or _LEVEL_SUFFIX.match(dataset)
    if match is None and re.search(r"_LOW_LEVEL_[A-Za-z]+$", dataset):  # e.g. a _LOW_LEVEL_MIXED config name
        raise DataError(f"{dataset}: the release's level files end in _LOW_LEVEL_LOW, _MID or _HIGH")
    groups = match.groupdict() if match else {}
    base = groups.get("base") or dataset
    corruption = (groups.get("corruption") or "").lower()
    named = next((groups[g].lower() for g in ("mmd", "release", "plain") if groups.get(g)), "clean")
    found = "high" if corruption and named == "clean" else named
    key = re.sub(r"[^a-z0-9]", "", base.lower())
    known = next((b for b in BENCHMARKS if key.startswith(b.key)), None)
    chosen = (level or ("high" if known and known.native_degraded else found)).lower()
    if chosen not in LEVELS:
        raise DataError(f"{dataset}: level must be one of {LEVELS}, got {chosen!r}")
    if known is None:
        return DatasetName(dataset, base, base, "accuracy", chosen, corruption=corruption)
    rule = known.rule_of(protocol)
    return DatasetName(dataset, base, known.title, rule, chosen, known.native_degraded, corruption)


@dataclass
class BenchmarkScore:
    """One benchmark file's result: the headline score and the cost of getting it."""

    dataset: str
    benchmark: str
    level: str
    rule: str
    score: float  # percent
    units: int  # what the score averages over: questions, circular groups, pairs, sources' rows
    rows: int  # inference samples (rotations included)
    trigger_rate: float  # percent of samples that emitted <image_restore>
    latency_s: float  # mean seconds per sample
    num_tokens: float  # mean generated tokens per sample
    corruption: str = ""  # per-corruption files only
    breakdown: dict[str, float] = field(default_factory=dict)  # percent per category / source / ...
    protocol: str = "paper"
    scored: bool = True  # False: `score` is NaN and `note` says why (MM-Vet without a judge)
    note: str = ""


class NotScored(DataError):
    """A benchmark file whose results its protocol cannot score (MM-Vet without judge grades)."""


def _numeric(frame: pd.DataFrame, column: str, dataset: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = frame.loc[bad].iloc[0]
        raise DataError(
            f"{dataset}: column {column!r} at index={row.get('index')} is {row[column]!r}, not a number"
        )
    return values


def _integer_index(frame: pd.DataFrame, dataset: str, column: str = "index") -> pd.Series:
    index = _numeric(frame, column, dataset)
    bad = index.isna() | (index != index.round())
    if bad.any():
        row = frame.loc[bad].iloc[0]
        raise DataError(
            f"{dataset}: this benchmark needs integer `{column}` values, got {str(row[column])!r} "
            f"at index={row['index']}"
        )
    return index.astype("int64")


def as_bool(values: pd.Series) -> pd.Series:
    """`restored` as booleans, whether it holds bools, 0/1 or the text a CSV round trip leaves."""
    if values.dtype == bool:
        return values
    text = values.astype(str).str.strip().str.lower()
    return text.isin(("true", "1", "1.0", "yes"))


def _group_means(frame: pd.DataFrame, column: str, values: pd.Series) -> dict[str, float]:
    if column not in frame.columns:
        return {}
    labels = frame[column].astype(str)
    return {str(k): 100.0 * float(v) for k, v in values.groupby(labels.values).mean().sort_index().items()}


def _circular(frame: pd.DataFrame, hits: pd.Series, dataset: str) -> tuple[float, int, dict[str, float]]:
    index = _integer_index(frame, dataset)
    # The file's own groups where it has them (VLMEvalKit's `g_index`), else the index convention.
    has_groups = "g_index" in frame.columns
    group = _integer_index(frame, dataset, "g_index") if has_groups else index % CIRCULAR_STRIDE
    right = (hits > 0.5).groupby(group.values).all().astype(float)
    # Category labels come from each question's main row (its index is the group's), else its first rotation.
    main = frame.assign(_group=group.values, _rotation=(index != group).values, _index=index.values)
    main = main.sort_values(["_group", "_rotation", "_index"]).drop_duplicates("_group").set_index("_group")
    questions = main.loc[right.index]
    breakdown = {}
    for column in ("l2-category", "category"):
        breakdown.update(_group_means(questions, column, pd.Series(right.values, index=questions.index)))
    return 100.0 * float(right.mean()), len(right), breakdown


# Columns that say which image a row shows: the TSV's own, or the digest the runner keeps of it.
IMAGE_COLUMNS = ("image_digest", "image", "image_path")


def _pairs(frame: pd.DataFrame, hits: pd.Series, dataset: str) -> tuple[float, int, dict[str, float]]:
    """VLMEvalKit's MMVP: rows sorted by index pair up by position; a pair counts when both are right."""
    order = _integer_index(frame, dataset).sort_values(kind="stable").index
    if len(order) % 2:
        raise DataError(f"{dataset}: MMVP pairs need an even number of rows, got {len(order)}")
    first, second = order[0::2], order[1::2]
    shared = pd.Series(False, index=range(len(first)))
    for column in ("question", *IMAGE_COLUMNS):
        if column in frame.columns:
            values = frame[column].astype(str)
            shared |= values.loc[first].values == values.loc[second].values
    checked = any(c in frame.columns for c in ("question", *IMAGE_COLUMNS))
    if checked and not shared.all():
        k = int((~shared).idxmax())
        a, b = frame.loc[first[k], "index"], frame.loc[second[k], "index"]
        raise DataError(
            f"{dataset}: rows index={a} and index={b} form MMVP pair {k + 1} (rows sorted by index, "
            "taken two by two) but share neither their question nor their image"
        )
    right = (hits.loc[first].values > 0.5) & (hits.loc[second].values > 0.5)
    return 100.0 * float(right.mean()), len(right), {"question_accuracy": 100.0 * float((hits > 0.5).mean())}


def _source_mean(frame: pd.DataFrame, hits: pd.Series, dataset: str) -> tuple[float, int, dict[str, float]]:
    if "source" not in frame.columns:
        raise DataError(
            f"{dataset}: CV-Bench scoring averages per `source`, but the file has no `source` column"
        )
    per_source = _group_means(frame, "source", hits)
    return float(np.mean(list(per_source.values()))), len(frame), per_source


def _mean_score(frame: pd.DataFrame, hits: pd.Series, dataset: str) -> tuple[float, int, dict[str, float]]:
    graded = (
        frame["graded_by"].astype(str) if "graded_by" in frame.columns else pd.Series("", index=frame.index)
    )
    ungraded = int((graded != "judge").sum())
    if ungraded:
        raise NotScored(
            f"MM-Vet is scored by an LLM judge (run with --judge); {ungraded} of {len(frame)} answers "
            "have no judge grade"
        )
    breakdown = {}
    if "category" in frame.columns:
        categories = frame["category"].astype(str)  # e.g. "rec,ocr,spat": a row counts for each
        for capability in MMVET_CAPABILITIES:
            has = categories.str.contains(rf"(?:^|,)\s*{capability}\s*(?:,|$)")
            if has.any():
                breakdown[capability] = 100.0 * float(hits[has].mean())
    return 100.0 * float(hits.mean()), len(frame), breakdown


def _accuracy(frame: pd.DataFrame, hits: pd.Series, dataset: str) -> tuple[float, int, dict[str, float]]:
    breakdown = {}
    for column in ("l2-category", "category", "source"):  # `source`: CV-Bench's ADE20K / COCO
        breakdown.update(_group_means(frame, column, hits))
    return 100.0 * float(hits.mean()), len(frame), breakdown


RULES = {
    "circular": _circular,
    "pairs": _pairs,
    "source_mean": _source_mean,
    "mean_score": _mean_score,
    "accuracy": _accuracy,
}


def _mean_or_nan(frame: pd.DataFrame, column: str, dataset: str) -> float:
    if column not in frame.columns:
        return math.nan
    return float(_numeric(frame, column, dataset).mean())


def score_benchmark(
    frame: pd.DataFrame, name: str, level: str | None = None, protocol: str = "paper"
) -> BenchmarkScore:
    """Score one benchmark file's results by its benchmark's rule under `protocol` (see the
    module docstring). What the protocol cannot score (MM-Vet without judge grades) comes back
    with `scored=False`, a NaN score and the reason in `note`."""
    parsed = parse_dataset_name(name, level, protocol)
    missing = [c for c in ("index", "hit") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{parsed.dataset}: results lack column(s) {missing}; they have {list(frame.columns)}"
        )
    if frame.empty:
        raise DataError(f"{parsed.dataset}: no result rows to score")
    frame = frame.reset_index(drop=True)
    hits = _numeric(frame, "hit", parsed.dataset)
    outside = hits.isna() | (hits < 0) | (hits > 1)
    if outside.any():
        first = outside.idxmax()
        raise DataError(
            f"{parsed.dataset}: `hit` at index={frame.loc[first, 'index']} is {hits[first]:g}; it must be in [0, 1]"
        )
    scored, note = True, ""
    try:
        score, units, breakdown = RULES[parsed.rule](frame, hits, parsed.dataset)
    except NotScored as why:
        scored, note, score, units, breakdown = False, str(why), math.nan, len(frame), {}
    trigger = 100.0 * float(as_bool(frame["restored"]).mean()) if "restored" in frame.columns else math.nan
    return BenchmarkScore(
        dataset=parsed.dataset,
        benchmark=parsed.benchmark,
        level=parsed.level,
        rule=parsed.rule,
        score=score,
        units=units,
        rows=len(frame),
        trigger_rate=trigger,
        latency_s=_mean_or_nan(frame, "latency_s", parsed.dataset),
        num_tokens=_mean_or_nan(frame, "num_tokens", parsed.dataset),
        corruption=parsed.corruption,
        breakdown=breakdown,
        protocol=check_protocol(protocol),
        scored=scored,
        note=note,
    )


def compute_hits(frame: pd.DataFrame, dataset: str = "results") -> pd.Series:
    """Rule-based `hit` per row from `prediction`, `answer` and the option columns A..Z."""
    missing = [c for c in ("prediction", "answer") if c not in frame.columns]
    if missing:
        raise DataError(f"{dataset}: cannot score without column(s) {missing}")
    hits = []
    for _, row in frame.iterrows():
        if is_missing(row["answer"]):
            raise DataError(f"{dataset}: row index={row.get('index')} has no reference answer")
        answer = str(row["answer"])
        prediction = row["prediction"] if isinstance(row["prediction"], str) else ""
        hits.append(score_answer(prediction, answer, row_options(row)))
    return pd.Series(hits, index=frame.index, name="hit", dtype=float)
