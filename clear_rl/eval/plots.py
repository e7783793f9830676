"""The report's figures (PNG, matplotlib's Agg canvas, so no display is needed).

- `plot_trigger_latency`: the paper's Figure 6 with the benefit beside the cost: restoration
  trigger rate (bars, only for runs that ever restore) and latency (lines, axis from 0) per level,
  and under it the accuracy per level of every run.
- `plot_corruption_drop`: per model, a heat map of corruption x level: the accuracy drop from
  clean (points), from `corruption_report.corruption_drop`.
- `plot_restoration`: per corruption, the accuracy gain of restoring (always - never, points) and
  the PSNR gain of the restoration over the degraded input (dB), bars grouped by level; one panel
  per model with a gain, then one per run with measured restorations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clear_rl.eval.scoring import LEVELS
from clear_rl.eval.tables import LEVEL_TITLES
from clear_rl.io.atomic import atomic_path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def trigger_latency_figure(levels: pd.DataFrame):
    """Two panels from `report.per_level`'s frame (model, level, trigger_rate, latency_s, accuracy)."""
    shown = [lv for lv in LEVELS if lv in set(levels["level"])]
    models = list(dict.fromkeys(levels["model"]))
    restoring = [m for m in models if levels.loc[levels["model"] == m, "trigger_rate"].fillna(0).max() > 0]
    figure = _figure(6.4, 6.4)
    rate_axis, accuracy_axis = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    time_axis = rate_axis.twinx()
    width = 0.8 / max(len(restoring), 1)
    for i, model in enumerate(models):
        mine = levels[levels["model"] == model].set_index("level").reindex(shown)
        color = f"C{i % 10}"
        if model in restoring:
            slot = restoring.index(model)
            positions = [x + (slot - (len(restoring) - 1) / 2) * width for x in range(len(shown))]
            rate_axis.bar(
                positions, mine["trigger_rate"].fillna(0), width, color=color, alpha=0.6,
                label=f"{model} trigger rate",
            )  # fmt: skip
        time_axis.plot(
            range(len(shown)), mine["latency_s"], marker="o", color=color, label=f"{model} latency"
        )
        if "accuracy" in mine:
            accuracy_axis.plot(range(len(shown)), mine["accuracy"], marker="s", color=color, label=model)
    accuracy_axis.set_xticks(range(len(shown)), [LEVEL_TITLES[lv] for lv in shown])
    accuracy_axis.set_xlabel("Degradation level")
    accuracy_axis.set_ylabel("Accuracy (%)")
    accuracy_axis.grid(alpha=0.3)
    if "accuracy" in levels:
        top = float(levels["accuracy"].fillna(0).max())
        accuracy_axis.set_ylim(bottom=0, top=min(105.0, max(1.0, top * 1.1)))
    rate_axis.set_ylabel("Restoration trigger rate (%)")
    time_axis.set_ylabel("Inference time (s / sample)")
    rate_axis.set_ylim(bottom=0, top=max(1.0, float(levels["trigger_rate"].fillna(0).max()) * 1.1))
    time_axis.set_ylim(bottom=0, top=max(float(levels["latency_s"].fillna(0).max()) * 1.15, 1e-3))
    handles = rate_axis.get_legend_handles_labels()[0] + time_axis.get_legend_handles_labels()[0]
    rate_axis.legend(
        handles, [h.get_label() for h in handles], loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
        fontsize="small", frameon=False,
    )  # fmt: skip
    return figure


def plot_trigger_latency(levels: pd.DataFrame, path: str | Path) -> Path:
    """Write `trigger_latency_figure(levels)` as a PNG."""
    return _save(trigger_latency_figure(levels), path)


def _grouped_bars(axis, table: pd.DataFrame, value: str, ylabel: str, title: str) -> None:
    corruptions = sorted(c for c in set(table["corruption"]) if c != "all")
    corruptions += ["all"] if "all" in set(table["corruption"]) else []
    shown = [lv for lv in LEVELS if lv in set(table["level"])]
    width = 0.8 / max(len(shown), 1)
    for i, level in enumerate(shown):
        at = table[table["level"] == level].set_index("corruption").reindex(corruptions)
        positions = [x + (i - (len(shown) - 1) / 2) * width for x in range(len(corruptions))]
        axis.bar(
            positions, at[value].fillna(0), width, color=f"C{LEVELS.index(level)}", label=LEVEL_TITLES[level]
        )
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(corruptions)), corruptions, rotation=45, ha="right", fontsize="small")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize="medium")
    axis.legend(fontsize="small", frameon=False)


def restoration_figure(quality: pd.DataFrame, gain: pd.DataFrame):
    """One panel per (model, readback) of `gain` (accuracy gain), then one per run of `quality`
    (PSNR gain); None when both tables are empty."""
    gain_runs = list(dict.fromkeys(zip(gain["model"], gain["readback"])))
    quality_runs = list(dict.fromkeys(quality["model"]))
    panels = len(gain_runs) + len(quality_runs)
    if panels == 0:
        return None
    figure = _figure(7.0, 3.4 * panels)
    axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
    for axis, (model, readback) in zip(axes, gain_runs):
        mine = gain[(gain["model"] == model) & (gain["readback"] == readback)]
        _grouped_bars(axis, mine, "gain", "Accuracy gain (points)", f"{model} [{readback}]: always - never")
    for axis, run in zip(axes[len(gain_runs) :], quality_runs):
        mine = quality[quality["model"] == run]
        _grouped_bars(axis, mine, "psnr_gain", "PSNR gain (dB)", f"{run}: restored - degraded PSNR")
    figure.tight_layout()
    return figure


def plot_restoration(quality: pd.DataFrame, gain: pd.DataFrame, path: str | Path) -> Path | None:
    """Write `restoration_figure` as a PNG; None (nothing written) when there is nothing to plot."""
    figure = restoration_figure(quality, gain)
    return None if figure is None else _save(figure, path)


def corruption_drop_figure(drops: pd.DataFrame):
    """One heat map per model: rows = corruptions, columns = levels, cells = drop from clean."""
    models = list(dict.fromkeys(drops["model"]))
    corruptions = list(dict.fromkeys(drops["corruption"]))
    shown = [lv for lv in LEVELS if lv in set(drops["level"])]
    figure = _figure(2.4 + (0.9 + 1.1 * len(shown)) * len(models), 1.0 + 0.32 * len(corruptions))
    axes = figure.subplots(1, len(models), squeeze=False, sharey=True)[0]
    limit = max(1.0, float(drops["drop"].abs().max()))
    for axis, model in zip(axes, models):
        grid = drops[drops["model"] == model].pivot(index="corruption", columns="level", values="drop")
        grid = grid.reindex(index=corruptions, columns=shown)
        image = axis.imshow(grid.values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        for (row, column), value in np.ndenumerate(grid.values):
            if not np.isnan(value):
                shade = "white" if abs(value) > 0.6 * limit else "black"
                axis.text(
                    column, row, f"{value:.1f}", ha="center", va="center", fontsize="x-small", color=shade
                )
        axis.set_xticks(range(len(shown)), [LEVEL_TITLES[lv] for lv in shown])
        axis.set_title(model, fontsize="medium")
    axes[0].set_yticks(range(len(corruptions)), corruptions, fontsize="small")
    figure.colorbar(image, ax=list(axes), label="Accuracy drop from clean (points)")
    return figure


def plot_corruption_drop(drops: pd.DataFrame, path: str | Path) -> Path:
    """Write `corruption_drop_figure(drops)` as a PNG."""
    return _save(corruption_drop_figure(drops), path)
