"""The demo's closing tables and its targets, each measured on every run (SUMMARY.md + SUMMARY.json).

Two evaluations feed it: the main one (Base, CLEAR-SFT, CLEAR-RL, each deciding for itself) and
the restoration analysis of CLEAR-SFT under `--restore never,always,oracle` (what restoring
gains, per corruption too, how good the restorations are, what the bridge loses of a perfect
image). `measure` reads them into `Measures`, the numbers every target is judged on; a run over
several seeds (seeds.py) averages the seeds' `Measures` and judges the same targets on the mean.
A target that cannot be computed (a smoke run without some level) is reported as not measured,
never as met.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from clear_rl.eval.scoring import LEVELS
from clear_rl.eval.tables import markdown_table
from clear_rl.io.atomic import write_text
from clear_rl.machine import describe_machine

MODELS = ("Base", "CLEAR-SFT", "CLEAR-RL")
ANALYSED = "CLEAR-SFT"  # the model whose never / always / oracle runs the analysis holds
NEVER, ALWAYS, ORACLE = (f"{ANALYSED} [{p}]" for p in ("never", "always", "oracle"))
DROP_RATIO = 0.73  # the paper: CLEAR-RL's clean-to-hard drop is 27% smaller than its backbone's
HIGH_MARGIN = 3.0  # CLEAR-RL at High beats Base by at least this many points
KEEP_BASE_POINTS = 2.0
FIDELITY_POINTS = 3.0
GAIN_POINTS = 5.0
CLEAN_TRIGGER_MAX = 10.0
SPEARMAN_MIN = 0.5
# Per-corruption columns at High: CLEAR-SFT never / always / gain, CLEAR-RL's trigger rate (%).
CORRUPTION_COLUMNS = ("rows", "never", "always", "gain", "trigger")
QUALITY_KEYS = ("psnr_restored", "psnr_degraded", "colour_restored", "colour_degraded")


@dataclass
class Target:
    claim: str
    met: bool | None  # None: not measured in this run
    measured: str
    diagnostic: bool = False  # a property of a stage, not one of the demo's claims about CLEAR


@dataclass
class Measures:
    """Every number the targets read, from one run (or the mean over seeds)."""

    accuracy: pd.DataFrame  # model (with the analysis runs) x level, %
    trigger: pd.DataFrame  # model x level, % of rows restored
    gain: pd.DataFrame  # level x (never, always, gain): CLEAR-SFT's pooled restoration gain, %
    per_corruption: pd.DataFrame  # corruption x CORRUPTION_COLUMNS, at High
    quality: dict[str, float]  # CLEAR-SFT [always] at High: QUALITY_KEYS (dB, % colour right)

    def to_json(self) -> dict:
        return {
            "accuracy": json.loads(self.accuracy.to_json(orient="index")),
            "trigger_rate": json.loads(self.trigger.to_json(orient="index")),
            "restoration_gain": json.loads(self.gain.to_json(orient="index")),
            "per_corruption_high": json.loads(self.per_corruption.to_json(orient="index")),
            "restoration_quality_high": self.quality,
        }

    @classmethod
    def from_json(cls, record: dict) -> Measures:
        def frame(key: str) -> pd.DataFrame:
            return pd.DataFrame.from_dict(record.get(key) or {}, orient="index").astype(float)

        return cls(
            accuracy=frame("accuracy"),
            trigger=frame("trigger_rate"),
            gain=frame("restoration_gain"),
            per_corruption=frame("per_corruption_high"),
            quality={k: float(v) for k, v in (record.get("restoration_quality_high") or {}).items()},
        )

    def get(self, table: str, row: str, column: str) -> float:
        frame = getattr(self, table)
        return float(frame.loc[row, column]) if row in frame.index and column in frame.columns else math.nan

    def drop(self, model: str) -> float:
        """Clean - High accuracy (the paper's Drop, Hard = High)."""
        return self.get("accuracy", model, "clean") - self.get("accuracy", model, "high")


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN where either side is constant.
    (pandas' own `method="spearman"` needs scipy, which clear-rl does not depend on.)"""
    paired = pd.concat([a, b], axis=1).dropna()
    if len(paired) < 3 or paired.iloc[:, 0].nunique() < 2 or paired.iloc[:, 1].nunique() < 2:
        return math.nan
    ranks = paired.rank()
    return float(ranks.iloc[:, 0].corr(ranks.iloc[:, 1]))


# -- reading one run -----------------------------------------------------------------------------
def _scores(path: Path | None) -> pd.DataFrame:
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=["model", "level", "score", "trigger_rate", "corruption"])
    scores = pd.read_csv(path)
    scores["corruption"] = scores["corruption"].fillna("")  # "" marks the mixed-level files
    return scores[scores["corruption"] == ""]


def _pivot(scores: pd.DataFrame, values: str, order: Sequence[str] | None = None) -> pd.DataFrame:
    table = scores.pivot_table(index="model", columns="level", values=values, aggfunc="mean")
    table = table[[lv for lv in LEVELS if lv in table.columns]]
    if order is not None:
        table = table.reindex([m for m in order if m in table.index])
    table.columns.name = table.index.name = None
    return table


def _csv(path: Path | None) -> pd.DataFrame:
    return pd.read_csv(path) if path is not None and Path(path).exists() else pd.DataFrame()


def _per_corruption(gain: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """At High: CLEAR-SFT's gain per corruption beside CLEAR-RL's trigger rate per corruption."""
    if gain.empty:
        return pd.DataFrame(columns=CORRUPTION_COLUMNS)
    high = gain[(gain["level"] == "high") & ~gain["corruption"].isin(["all", "none"])]
    table = high.set_index("corruption")[["rows", "never", "always", "gain"]].astype(float)
    rl = rows[(rows.get("model") == "CLEAR-RL") & (rows.get("level") == "high")] if len(rows) else rows
    trigger = rl.groupby("corruption")["restored"].mean() * 100 if len(rl) else pd.Series(dtype=float)
    table["trigger"] = trigger.reindex(table.index)
    table.index.name = None
    return table.sort_values("gain", ascending=False)


def _quality(rows: pd.DataFrame) -> dict[str, float]:
    if rows.empty or "colour_restored" not in rows.columns:
        return {}
    high = rows[(rows["model"] == ALWAYS) & (rows["level"] == "high") & rows["psnr_restored"].notna()]
    if high.empty:
        return {}
    return {
        "psnr_restored": float(high["psnr_restored"].mean()),
        "psnr_degraded": float(high["psnr_degraded"].mean()),
        "colour_restored": 100 * float(high["colour_restored"].mean()),
        "colour_degraded": 100 * float(high["colour_degraded"].mean()),
    }


def measure(report: dict[str, Path], analysis: dict[str, Path] | None = None) -> Measures:
    """The numbers of one run, from its evaluation reports (`evaluate`'s returned paths)."""
    analysis = analysis or {}
    main, extra = _scores(report.get("scores.csv")), _scores(analysis.get("scores.csv"))
    rows = pd.concat([_csv(report.get("predictions.csv")), _csv(analysis.get("predictions.csv"))])
    accuracy = pd.concat([_pivot(main, "score", MODELS), _pivot(extra, "score")]) if len(extra) else None
    gain = _csv(analysis.get("restoration_gain.csv"))
    pooled = pd.DataFrame(columns=["never", "always", "gain"])
    if not gain.empty:
        pooled = gain[gain["corruption"].isin(["all", "none"])].set_index("level")[
            ["never", "always", "gain"]
        ]
        pooled.index.name = None
    return Measures(
        accuracy=accuracy if accuracy is not None else _pivot(main, "score", MODELS),
        trigger=_pivot(main, "trigger_rate", MODELS),
        gain=pooled.astype(float),
        per_corruption=_per_corruption(gain, rows),
        quality=_quality(rows),
    )


# -- the targets ---------------------------------------------------------------------------------
def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def _check(claim: str, values: list[float], passes, measured: str, diagnostic: bool = False) -> Target:
    if not values or any(math.isnan(v) for v in values):
        return Target(claim, None, "not measured in this run", diagnostic)
    return Target(claim, bool(passes(*values)), measured, diagnostic)


def targets(m: Measures, seeds: Sequence[Measures] = ()) -> list[Target]:
    """Every target of the demo on `m` (one run, or the mean over `seeds`, each seed's sign checked)."""
    base_clean, rl_clean = m.get("accuracy", "Base", "clean"), m.get("accuracy", "CLEAR-RL", "clean")
    base_high, rl_high = m.get("accuracy", "Base", "high"), m.get("accuracy", "CLEAR-RL", "high")
    out = [
        _check(
            "CLEAR-RL clean accuracy >= Base clean - 1 point",
            [rl_clean, base_clean],
            lambda r, b: r >= b - 1,
            f"{_pct(rl_clean)} vs {_pct(base_clean)}",
        )  # fmt: skip
    ]
    margins = [s.get("accuracy", "CLEAR-RL", "high") - s.get("accuracy", "Base", "high") for s in seeds]
    each = f"; per seed {', '.join(f'{x:+.1f}' for x in margins)}" if seeds else ""
    out.append(
        _check(
            f"CLEAR-RL High >= Base High + {HIGH_MARGIN:g}"
            + (", and above Base High on every seed" if seeds else ""),
            [rl_high, base_high, *margins],
            lambda r, b, *per: r >= b + HIGH_MARGIN and all(x > 0 for x in per),
            f"{_pct(rl_high)} vs {_pct(base_high)} ({rl_high - base_high:+.1f}){each}",
        )  # fmt: skip
    )
    drops = [m.drop("CLEAR-RL"), m.drop("Base")]
    out.append(
        _check(
            f"Drop(CLEAR-RL) <= {DROP_RATIO} x Drop(Base) (the paper's 27% smaller)",
            drops,
            lambda r, b: r <= DROP_RATIO * b,
            f"{drops[0]:.1f} vs {DROP_RATIO} x {drops[1]:.1f} = {DROP_RATIO * drops[1]:.1f}",
        )  # fmt: skip
    )
    rates = [m.get("trigger", "CLEAR-RL", lv) for lv in LEVELS]
    out.append(
        _check(
            f"CLEAR-RL trigger rate: clean <= {CLEAN_TRIGGER_MAX:g}% and low < mid < high",
            rates,
            lambda c, lo, mi, hi: c <= CLEAN_TRIGGER_MAX and lo < mi < hi,
            " / ".join(f"{lv} {_pct(r)}%" for lv, r in zip(LEVELS, rates)),
        )  # fmt: skip
    )
    never, always = m.get("gain", "high", "never"), m.get("gain", "high", "always")
    out.append(
        _check(
            f"Restoration gain at High: {ANALYSED} restoring every row beats none by >= {GAIN_POINTS:g} points",
            [never, always],
            lambda n, a: a - n >= GAIN_POINTS,
            f"{_pct(always)} vs {_pct(never)} ({always - never:+.1f})",
        )  # fmt: skip
    )
    table = m.per_corruption
    measured_both = {"gain", "trigger"} <= set(table.columns) and table[
        ["gain", "trigger"]
    ].notna().any().all()
    rho = spearman(table["gain"], table["trigger"]) if measured_both else math.nan
    measured = f"Spearman {rho:.2f} over {len(table)} corruptions"
    if math.isnan(rho) and measured_both:
        measured = "undefined: CLEAR-RL's trigger rate (or the gain) is the same on every corruption"
    out.append(
        Target(
            f"Adaptive: Spearman(per-corruption gain of {ANALYSED}, CLEAR-RL's per-corruption trigger rate) "
            f">= {SPEARMAN_MIN:g} at High",
            (not math.isnan(rho) and rho >= SPEARMAN_MIN) if measured_both else None,
            measured if measured_both else "not measured in this run",
        )
    )
    return out + diagnostics(m)


def diagnostics(m: Measures) -> list[Target]:
    """What each stage should deliver: the restorations, stage 1's direct answers, the bridge."""
    q = m.quality
    quality = _check(
        f"{ALWAYS} at High: restorations closer to the clean image than the degraded input (PSNR and colour)",
        [q.get(k, math.nan) for k in QUALITY_KEYS],
        lambda pr, pd_, cr, cd: pr > pd_ and cr > cd,
        f"PSNR {q.get('psnr_restored', math.nan):.2f} vs {q.get('psnr_degraded', math.nan):.2f} dB; object "
        f"colour right {_pct(q.get('colour_restored', math.nan))}% vs {_pct(q.get('colour_degraded', math.nan))}%",
        diagnostic=True,
    )
    levels = [lv for lv in LEVELS if lv in m.accuracy.columns]
    gaps = [m.get("accuracy", NEVER, lv) - m.get("accuracy", "Base", lv) for lv in levels]
    keeps = _check(
        f"Stage 1 keeps what the base knows: {NEVER} within {KEEP_BASE_POINTS:g} points of Base at every level",
        gaps, lambda *g: all(x >= -KEEP_BASE_POINTS for x in g),
        ", ".join(f"{lv} {g:+.1f}" for lv, g in zip(levels, gaps)), diagnostic=True,
    )  # fmt: skip
    clean, fidelity = m.get("accuracy", NEVER, "clean"), m.get("accuracy", ORACLE, "clean")
    bridge = _check(
        f"Bridge fidelity: the bridged clean latent ({ORACLE}) within {FIDELITY_POINTS:g} points of the clean image",
        [clean, fidelity], lambda c, f: f >= c - FIDELITY_POINTS, f"{_pct(fidelity)} vs {_pct(clean)}",
        diagnostic=True,
    )  # fmt: skip
    return [quality, keeps, bridge]


# -- writing -------------------------------------------------------------------------------------
def markdown(frame: pd.DataFrame, index_name: str = "model", cell=_pct) -> str:
    rows = [[name, *(cell(v) for v in values)] for name, values in zip(frame.index, frame.values)]
    return markdown_table([index_name, *map(str, frame.columns)], rows).rstrip("\n")


def robustness_frame(m: Measures) -> pd.DataFrame:
    models = [x for x in MODELS if x in m.accuracy.index]
    return pd.DataFrame(
        {
            "clean": [m.get("accuracy", x, "clean") for x in models],
            "hard": [m.get("accuracy", x, "high") for x in models],
            "drop": [m.drop(x) for x in models],
        },
        index=models,
    )


def target_lines(checks: Sequence[Target]) -> list[str]:
    lines = []
    for target in checks:
        state = {True: "met", False: "MISSED", None: "not measured"}[target.met]
        lines.append(
            f"- [{state}] {'(diagnostic) ' if target.diagnostic else ''}{target.claim}: {target.measured}"
        )
    return lines


def tables_of(m: Measures) -> dict[str, pd.DataFrame]:
    """The SUMMARY's tables of one run, by name."""
    return {
        "accuracy": m.accuracy,
        "robustness": robustness_frame(m),
        "trigger": m.trigger,
        "gain": m.gain,
        "per_corruption": m.per_corruption,
    }


def tables_lines(tables: dict[str, pd.DataFrame], cell=_pct) -> list[str]:
    """The SUMMARY's tables (`tables_of`: one run's, or text cells over seeds with `cell=str`)."""
    lines = [
        "## Accuracy (%) per degradation level",
        "(`[never]`, `[always]`: CLEAR-SFT forced to answer directly / to restore first; `[oracle]`: the slot",
        "holds the bridged latent of the clean image and the image's own tokens are hidden)",
        markdown(tables["accuracy"], cell=cell),
        "",
        "## Robustness (Clean, Hard = High, Drop = Clean - Hard)",
        markdown(tables["robustness"], cell=cell),
        "",
        "## Restoration trigger rate (%) per level",
        markdown(tables["trigger"], cell=cell),
        "",
    ]
    if not tables["gain"].empty:
        lines += [
            f"## Restoration gain of {ANALYSED} (accuracy %, same rows)",
            markdown(tables["gain"], "level", cell),
            "",
        ]
    if not tables["per_corruption"].empty:
        lines += [
            f"## Per corruption at High: {ANALYSED}'s restoration gain beside CLEAR-RL's trigger rate (%)",
            markdown(tables["per_corruption"], "corruption", cell),
            "",
        ]
    return lines


def write_summary(
    report: dict[str, Path],
    path: Path,
    timings: dict[str, float],
    analysis: dict[str, Path] | None = None,
    cpu_timings: dict[str, float] | None = None,
    reused: Sequence[str] = (),
) -> Path:
    """SUMMARY.md and SUMMARY.json beside it: tables, every target (met / MISSED), timings."""
    m = measure(report, analysis)
    checks = targets(m)
    cpu_timings = cpu_timings or {}
    lines = ["# CLEAR demo: tiny unified model on ShapesVQA (CPU)", "", *tables_lines(tables_of(m))]
    lines += ["## Targets, measured on this run", *target_lines(checks)]
    lines += ["", "## Time per step (wall / CPU seconds)"]
    lines += [f"- {name}: {s:.0f} / {cpu_timings.get(name, math.nan):.0f}" for name, s in timings.items()]
    lines += [f"- {name}: reused from an earlier run" for name in reused]
    lines += ["", f"Machine: {describe_machine()}"]
    lines += ["", f"Full reports: {report['report.md']}" + (f", {analysis['report.md']}" if analysis else "")]
    write_text(path, "\n".join(lines) + "\n")
    record = {
        **m.to_json(),
        "robustness": json.loads(robustness_frame(m).to_json(orient="index")),
        "targets": [asdict(t) for t in checks],
        "timings_s": timings,
        "cpu_s": cpu_timings,
        "reused": list(reused),
        "machine": describe_machine(),
    }
    write_text(path.with_suffix(".json"), json.dumps(record, indent=2))
    return path
