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
