"""A restoration gallery: degraded | decoded restoration | clean, for a few rows per corruption.

During evaluation the runner saves the three images of a few rows per benchmark file and
corruption as PNGs under `<out>/restorations/<run>/<dataset>/` (never beside the inputs) and
records the path stem in the row's `gallery` field; the report draws one figure per run from
those rows, restored rows first and harder levels first, each row captioned with the question,
the reference and the model's answer, whether it was right and whether it restored.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from clear_rl.eval.extract import extract_answer_block
from clear_rl.eval.scoring import LEVELS, as_bool
from clear_rl.io.atomic import atomic_path
from clear_rl.io.images import tensor_to_pil

PANELS = ("degraded", "restored", "clean")


def slug(label: str) -> str:
    """A run label as a file name: `CLEAR-SFT [always]` -> `CLEAR-SFT_always`."""
    return re.sub(r"[^\w.-]+", "_", label).strip("_") or "run"


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_example(
    folder: Path,
    index: str,
    degraded: Image.Image,
    clean: Image.Image,
    restored: torch.Tensor | None,
    size: int | tuple[int, int],
) -> Path:
    """Write `<index>_{degraded,restored,clean}.png` (restored only if given, (3, H, W) in [-1, 1];
    the other two at `size`, a side or (width, height)); returns the common path stem."""
    stem = folder / slug(str(index))
    width, height = (size, size) if isinstance(size, int) else size
    for name, image in (("degraded", degraded), ("clean", clean)):
        _save_png(
            image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), Path(f"{stem}_{name}.png")
        )
    if restored is not None:
        _save_png(tensor_to_pil(restored.float().add(1.0).div(2.0)), Path(f"{stem}_restored.png"))
    return stem


def select_examples(rows: pd.DataFrame, per_corruption: int) -> pd.DataFrame:
    """Up to `per_corruption` rows with saved images per corruption: restored first, then harder
    levels, then file order."""
    if "gallery" not in rows.columns or per_corruption <= 0:
        return rows.iloc[0:0]
    chosen = rows[rows["gallery"].notna() & (rows["gallery"].astype(str) != "")].copy()
    if chosen.empty:
        return chosen
    chosen["_restored"] = as_bool(chosen["restored"]) if "restored" in chosen else False
    chosen["_level"] = chosen["level"].map(LEVELS.index) if "level" in chosen else 0
    chosen["_order"] = range(len(chosen))
    corruption = (
        chosen["corruption"].astype(str) if "corruption" in chosen else pd.Series("", index=chosen.index)
    )
    chosen["_corruption"] = corruption
    chosen = chosen.sort_values(
        ["_corruption", "_restored", "_level", "_order"], ascending=[True, False, False, True]
    )
    chosen = chosen.groupby("_corruption", sort=True).head(per_corruption)
    return chosen.drop(columns=["_restored", "_level", "_order", "_corruption"])


def _printable(text: str) -> str:
    """`text` with control characters (a model may write any byte) shown as U+FFFD, which the
    figure's font has, instead of a missing glyph."""
    return "".join(c if c.isprintable() or c.isspace() else "\N{REPLACEMENT CHARACTER}" for c in text)


def _caption(row: pd.Series, width: int = 90) -> str:
    question = " ".join(_printable(str(row.get("question", ""))).split())
    prediction = _printable(str(row.get("prediction", "")))
    answer = extract_answer_block(prediction) or prediction
    restored = bool(as_bool(pd.Series([row.get("restored", False)])).iloc[0])
    hit = float(row.get("hit", 0.0))
    lines = [
        f"[{row.get('level', '?')} · {row.get('corruption', '?')}] Q: {textwrap.shorten(question, width)}",
        f"reference: {row.get('answer', '')} · model: {textwrap.shorten(' '.join(answer.split()), 40)} · "
        f"{'right' if hit > 0.5 else 'wrong'} · {'chose to restore' if restored else 'did not restore'}",
    ]
    return "\n".join(lines)


def _panel_image(stem: Path, panel: str) -> np.ndarray | None:
    path = Path(f"{stem}_{panel}.png")
    if not path.is_file():
        return None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def gallery_figure(examples: pd.DataFrame, out_dir: Path, title: str = ""):
    """One row of three panels (degraded | restoration | clean) per example, captioned."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(examples)
    figure = Figure(figsize=(7.5, 3.1 * n + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    # A strip on top for the title, so it never overlaps the first example.
    header, *rows = figure.subfigures(n + 1, 1, squeeze=False, height_ratios=[0.4] + [3.1] * n)[:, 0]
    for subfigure, (_, row) in zip(rows, examples.iterrows()):
        stem = out_dir / str(row["gallery"])
        axes = subfigure.subplots(1, len(PANELS))
        for axis, panel in zip(axes, PANELS):
            image = _panel_image(stem, panel)
            if image is None:
                axis.text(0.5, 0.5, "no restoration", ha="center", va="center", transform=axis.transAxes)
                axis.set_box_aspect(1)
            else:
                axis.imshow(image)
            label = panel
            if panel == "restored" and pd.notna(row.get("psnr_restored")):
                label = f"restored ({row['psnr_restored']:.1f} dB)"
            elif panel == "degraded" and pd.notna(row.get("psnr_degraded")):
                label = f"degraded ({row['psnr_degraded']:.1f} dB)"
            axis.set_title(label, fontsize="small")
            axis.set_xticks([])
            axis.set_yticks([])
        subfigure.suptitle(_caption(row), fontsize="x-small", y=0.02, va="bottom")
    if title:
        header.suptitle(title, y=0.5, va="center")
    return figure


def write_galleries(rows: pd.DataFrame, out_dir: Path, per_corruption: int) -> dict[str, Path]:
    """`gallery_<run>.png` for every run (the `model` column) with saved examples, one restored at least."""
    written: dict[str, Path] = {}
    if rows.empty or "gallery" not in rows.columns:
        return written
    for label in dict.fromkeys(rows["model"]):
        examples = select_examples(rows[rows["model"] == label], per_corruption)
        if examples.empty or not as_bool(examples["restored"]).any():
            continue  # nothing restored: no restoration to show
        path = out_dir / f"gallery_{slug(label)}.png"
        figure = gallery_figure(examples, out_dir, title=f"{label}: degraded | restoration | clean")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        written[path.name] = path
    return written
