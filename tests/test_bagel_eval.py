"""`clear-rl eval --model <BAGEL folder>`: an official-layout folder on disk is evaluated without code,
nothing downloaded, on the tiny random BAGEL."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from PIL import Image

from clear_rl.cli import main
from clear_rl.io.tsv import write_tsv
from clear_rl.models.bagel import build_tiny_bagel


def _benchmark(path, n: int = 4):
    """A small VLMEvalKit-style multiple-choice TSV with base64 PNG images."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((36, 28, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
        rows.append(
            {"index": i, "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
             "question": "Which colour dominates?", "A": "red", "B": "green", "answer": "AB"[i % 2]}
        )  # fmt: skip
    write_tsv(pd.DataFrame(rows), path)
    return path


def test_cli_evaluates_an_official_bagel_folder(tmp_path, capsys):
    folder = tmp_path / "CLEAR-RL"
    build_tiny_bagel(folder, seed=0)
    tsv = _benchmark(tmp_path / "MMStar.tsv")
    out = tmp_path / "out"
    code = main(
        ["eval", "--model", str(folder), "--data", str(tsv), "--levels", "clean,high", "--restore", "model,always",
         "--readback", "bridge,reencode", "--max-new-tokens", "4", "--steps", "2", "--batch-size", "4", "--gallery", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "CLEAR-RL" in capsys.readouterr().out
    scores = pd.read_csv(out / "scores.csv")
    assert {"accuracy", "trigger_rate"} <= set(scores.columns) or {"score", "trigger_rate"} <= set(
        scores.columns
    )
    always = scores[scores["model"].str.contains("always")]
    assert (
        sorted(always["level"]) == ["clean", "clean", "high", "high"]
        and (always["trigger_rate"] == 100.0).all()
    )
    assert "Trigger" in (out / "report.md").read_text() or "trigger" in (out / "report.md").read_text()
    assert always["model"].str.contains("reencode").sum() == 2  # the paper's baseline, beside the bridge
    rows = pd.read_csv(out / "predictions.csv")
    assert len(rows) == 2 * 2 * 2 * 4 and rows["hit"].isin([0, 1]).all()


def _mixed_benchmark(path):
    """Rows whose images have different aspect ratios (tiny VAE views 32x24, 20x32, 32x32)."""
    rng = np.random.default_rng(1)
    rows = []
    for i, (w, h) in enumerate([(40, 30), (25, 40), (36, 36), (44, 33)]):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
        rows.append(
            {"index": i, "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
             "question": "Which colour dominates?", "A": "red", "B": "green", "answer": "AB"[i % 2]}
        )  # fmt: skip
    write_tsv(pd.DataFrame(rows), path)
    return path


def test_eval_report_names_the_preset_and_every_value_it_ran_with(tmp_path):
    from clear_rl.models.bagel import load_bagel_unified

    folder = tmp_path / "CLEAR-RL"
    build_tiny_bagel(folder, seed=0)
    tsv = _mixed_benchmark(tmp_path / "MMStar.tsv")
    out = tmp_path / "out"
    args = ["eval", "--model", str(folder), "--data", str(tsv), "--levels", "clean", "--restore", "always",
            "--max-new-tokens", "3", "--steps", "2", "--batch-size", "4", "--gallery", "4"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    preset = load_bagel_unified(folder, device="cpu")[0].preset  # the release's, fitted to the tiny model
    assert "`clear-release`" in report and preset.summary in report
    for setting, value in preset.rows():
        if setting != "restoration steps":
            assert f"| {setting} | {value} |" in report, setting
    assert "| restoration steps | 2 Euler steps (given; the preset's: 49) * |" in report
    # Restorations keep each image's aspect ratio: the saved restorations have its VAE view's shape.
    sizes = {Image.open(p).size for p in (out / "restorations").rglob("*_restored.png")}
    assert {(32, 24), (20, 32), (32, 32)} <= sizes

    upstream = tmp_path / "upstream"
    assert main([*args, "--preset", "bagel-upstream", "--cfg-text", "2.0", "--out", str(upstream)]) == 0
    report = (upstream / "report.md").read_text()
    assert "`bagel-upstream`" in report and "| CFG contexts | upstream * |" not in report
    assert (
        "| CFG text / image scale | 2.0 / 1.5 * |" in report and "| CFG renorm | global (min 0.0) |" in report
    )
