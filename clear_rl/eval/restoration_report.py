"""What restoring buys: restoration quality, the accuracy gain of restoring, readback and oracle.

Inputs are the report's two frames: the per-row predictions (`report.prediction_rows`, one row
per answered question with `model` = the run label, `dataset`, `level`, `index`, `hit`,
`restored`, `corruption` and, for restoring rows, `psnr_*` / `latent_cos_*`) and the per-file
scores (`report.score_results`). `runs` maps each run label to its model, restore policy and
readback (`{"CLEAR-SFT [always]": {"model": "CLEAR-SFT", "restore": "always", "readback": "bridge"}}`);
labels it lacks are taken as plain runs of a model of that name under the `model` policy.

- Quality: per run, level and corruption, the mean PSNR of the degraded input and of the decoded
  restoration against the clean image, their difference, and the latent cosines, over the rows
  that restored.
- Gain: for a model evaluated under both `never` and `always`, on the rows both answered (same
  file, same `index`): accuracy without and with restoring and the gain (always - never), in
  points of plain question accuracy (the benchmark rules such as MMBench's circular groups do
  not split by corruption), per level and corruption, plus an `all` row per level.
- Readback: accuracy (benchmark rules, mean over benchmarks) and latency per readback.
- Oracle (bridge fidelity): the `oracle` run's accuracy beside the model's clean accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from clear_rl.eval.scoring import LEVELS
from clear_rl.eval.tables import LEVEL_TITLES, cell, markdown_table

Runs = Mapping[str, Mapping[str, str]]
ALL = "all"
QUALITY_COLUMNS = ["psnr_degraded", "psnr_restored", "latent_cos_degraded", "latent_cos_restored"]


def run_columns(frame: pd.DataFrame, runs: Runs | None) -> pd.DataFrame:
    """`frame` with `base_model`, `restore` and `readback` columns from its `model` (run label)."""
    runs = runs or {}
    info = [runs.get(label, {}) for label in frame["model"]]
    return frame.assign(
        base_model=[i.get("model", label) for i, label in zip(info, frame["model"])],
        restore=[i.get("restore", "model") for i in info],
        readback=[i.get("readback", "bridge") for i in info],
    )


def _order(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs in first-seen order, levels in LEVELS order, corruptions alphabetically with `all` last."""
    rank = {m: i for i, m in enumerate(dict.fromkeys(frame[keys[0]]))}
    ordering = pd.DataFrame(
        {
            "m": frame[keys[0]].map(rank),
            "l": frame["level"].map(LEVELS.index),
            "all": frame["corruption"] == ALL,
            "c": frame["corruption"],
        }
    )
    return frame.loc[ordering.sort_values(["m", "l", "all", "c"]).index].reset_index(drop=True)


def _with_all(frame: pd.DataFrame, keys: list[str], aggregate) -> pd.DataFrame:
    """`aggregate` per (keys, corruption), and per keys over every corruption (`all`) where there
    are several (a clean file's single `none` would only repeat itself)."""
    per = aggregate(frame.groupby([*keys, "corruption"], sort=False)).reset_index()
    several = frame.groupby(keys, sort=False)["corruption"].transform("nunique") > 1
    if not several.any():
        return per
    pooled = aggregate(frame[several].groupby(keys, sort=False)).reset_index().assign(corruption=ALL)
    return pd.concat([per, pooled], ignore_index=True)


def restoration_quality(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run, level and corruption: restored rows, mean PSNRs (dB), PSNR gain and latent cosines."""
    columns = ["model", "level", "corruption", "restored_rows", *QUALITY_COLUMNS, "psnr_gain"]
    if rows.empty or "psnr_restored" not in rows.columns:
        return pd.DataFrame(columns=columns)
    measured = rows[rows["psnr_restored"].notna()].copy()
    if measured.empty:
        return pd.DataFrame(columns=columns)
    measured = measured.reindex(columns=list(dict.fromkeys([*measured.columns, *QUALITY_COLUMNS])))
    measured[QUALITY_COLUMNS] = measured[QUALITY_COLUMNS].astype(float)
    measured["corruption"] = measured["corruption"].fillna("unknown").astype(str)

    def aggregate(groups):
        means = groups[QUALITY_COLUMNS].mean()
        return means.assign(restored_rows=groups.size())

    table = _with_all(measured, ["model", "level"], aggregate)
    table["psnr_gain"] = table["psnr_restored"] - table["psnr_degraded"]
    return _order(table[columns], ["model"])


def restoration_gain(rows: pd.DataFrame, runs: Runs | None = None) -> pd.DataFrame:
    """Per model (and readback of its `always` run), level and corruption: accuracy (%) with
    restoring never / always on the rows both runs answered, and the gain always - never."""
    columns = ["model", "readback", "level", "corruption", "rows", "never", "always", "gain"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = run_columns(rows, runs)
    keys = ["dataset", "index"]
    tables = []
    for model in dict.fromkeys(rows["base_model"]):
        mine = rows[rows["base_model"] == model]
        never = mine[mine["restore"] == "never"]
        if never.empty:
            continue
        for label in dict.fromkeys(mine.loc[mine["restore"] == "always", "model"]):
            always = mine[mine["model"] == label]
            paired = never[[*keys, "level", "corruption", "hit"]].merge(
                always[[*keys, "hit"]], on=keys, suffixes=("_never", "_always")
            )
            if paired.empty:
                continue
            paired["corruption"] = paired["corruption"].fillna("unknown").astype(str)
            paired[["hit_never", "hit_always"]] = paired[["hit_never", "hit_always"]].astype(float) * 100.0

            def aggregate(groups):
                means = groups[["hit_never", "hit_always"]].mean()
                return means.rename(columns={"hit_never": "never", "hit_always": "always"}).assign(
                    rows=groups.size()
                )

            table = _with_all(paired, ["level"], aggregate)
            table["gain"] = table["always"] - table["never"]
            tables.append(table.assign(model=model, readback=always["readback"].iloc[0]))
    if not tables:
        return pd.DataFrame(columns=columns)
    gain = pd.concat(tables, ignore_index=True)
    gain["_run"] = gain["model"] + "\0" + gain["readback"]
    return _order(gain, ["_run"])[columns]


def mixed_levels(scores: pd.DataFrame) -> pd.DataFrame:
    """The MMD-Bench level files' scores (CLEAR's per-corruption files left out)."""
    return scores[scores["corruption"].fillna("") == ""]


def _level_means(scores: pd.DataFrame) -> pd.DataFrame:
    """Per run and level: benchmark-rule accuracy and latency, means over benchmarks."""
    mixed = mixed_levels(scores)
    return mixed.groupby(["model", "level"], sort=False)[["score", "latency_s"]].mean().reset_index()


def readback_comparison(scores: pd.DataFrame, runs: Runs | None = None) -> pd.DataFrame:
    """Per model and restore policy evaluated with several readbacks: accuracy and latency per
    level and readback."""
    columns = ["model", "restore", "level", "readback", "accuracy", "latency_s"]
    means = run_columns(_level_means(scores), runs)
    several = means.groupby(["base_model", "restore"])["readback"].transform("nunique") > 1
    table = means[several].rename(columns={"score": "accuracy"})
    if table.empty:
        return pd.DataFrame(columns=columns)
    table = table.assign(model=table["base_model"], _l=table["level"].map(LEVELS.index))
    return table.sort_values(["model", "restore", "_l", "readback"], kind="stable")[columns].reset_index(
        drop=True
    )


def bridge_fidelity(scores: pd.DataFrame, runs: Runs | None = None) -> pd.DataFrame:
    """Per model with an `oracle` run: its accuracy per level beside the model's clean accuracy
    (its `never` run on clean images, else its plain run, else any non-oracle run), over the
    benchmarks both have; `gap` = oracle - clean (how much the bridge loses of a perfect image)."""
    columns = ["model", "readback", "level", "benchmarks", "clean", "oracle", "gap"]
    mixed = run_columns(mixed_levels(scores), runs)
    rows = []
    for model in dict.fromkeys(mixed.loc[mixed["restore"] == "oracle", "base_model"]):
        mine = mixed[mixed["base_model"] == model]
        clean = mine[(mine["level"] == "clean") & (mine["restore"] != "oracle")]
        for policy in ("never", "model"):
            if (clean["restore"] == policy).any():
                clean = clean[clean["restore"] == policy]
                break
        if clean.empty:
            continue
        clean = clean[clean["model"] == clean["model"].iloc[0]].set_index("benchmark")["score"]
        for label in dict.fromkeys(mine.loc[mine["restore"] == "oracle", "model"]):
            oracle = mine[mine["model"] == label]
            for level in [lv for lv in LEVELS if lv in set(oracle["level"])]:
                at = oracle[oracle["level"] == level].set_index("benchmark")["score"]
                paired = [b for b in at.index if b in clean.index]
                if not paired:
                    continue
                clean_mean, oracle_mean = float(clean[paired].mean()), float(at[paired].mean())
                rows.append(
                    [model, oracle["readback"].iloc[0], level, paired, clean_mean, oracle_mean,
                     oracle_mean - clean_mean]
                )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def restoration_sections(scores: pd.DataFrame, rows: pd.DataFrame, runs: Runs | None = None) -> list[str]:
    """The report's Markdown sections on restoration (those with something to show)."""
    parts = []
    quality = restoration_quality(rows)
    if not quality.empty:
        table = [
            [r.model, LEVEL_TITLES[r.level], r.corruption, r.restored_rows, cell(r.psnr_degraded),
             cell(r.psnr_restored), cell(r.psnr_gain), cell(r.latent_cos_degraded, 3), cell(r.latent_cos_restored, 3)]
            for r in quality.itertuples()
        ]  # fmt: skip
        header = ["Run", "Level", "Corruption", "Restored rows", "PSNR degraded", "PSNR restored",
                  "PSNR gain", "Latent cos degraded", "Latent cos restored"]  # fmt: skip
        parts.append(
            "## Restoration quality (vs the clean image; PSNR in dB)\n\n" + markdown_table(header, table)
        )
    gain = restoration_gain(rows, runs)
    if not gain.empty:
        table = [
            [r.model, r.readback, LEVEL_TITLES[r.level], r.corruption, r.rows, cell(r.never), cell(r.always),
             cell(r.gain)]
            for r in gain.itertuples()
        ]  # fmt: skip
        header = [
            "Model",
            "Readback",
            "Level",
            "Corruption",
            "Rows",
            "Never restore",
            "Always restore",
            "Gain",
        ]
        parts.append(
            "## Restoration gain (accuracy %, always - never, same rows)\n\n" + markdown_table(header, table)
        )
    readback = readback_comparison(scores, runs)
    if not readback.empty:
        table = [
            [r.model, r.restore, LEVEL_TITLES[r.level], r.readback, cell(r.accuracy), cell(r.latency_s, 3)]
            for r in readback.itertuples()
        ]
        header = ["Model", "Restore", "Level", "Readback", "Accuracy", "Latency (s/sample)"]
        parts.append("## Readback: latent bridge vs decode + re-encode\n\n" + markdown_table(header, table))
    fidelity = bridge_fidelity(scores, runs)
    if not fidelity.empty:
        table = [
            [r.model, r.readback, LEVEL_TITLES[r.level], cell(r.clean), cell(r.oracle), cell(r.gap)]
            for r in fidelity.itertuples()
        ]
        header = ["Model", "Readback", "Level", "Clean accuracy", "Oracle accuracy", "Oracle - Clean"]
        parts.append(
            "## Bridge fidelity (oracle: the clean image's latent in the slot, its ViT tokens hidden)\n\n"
            + markdown_table(header, table)
        )
    return parts
