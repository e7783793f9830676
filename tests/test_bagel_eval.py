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
         "--readback", "bridge,reencode", "--tags", "tokens", "--max-new-tokens", "4", "--steps", "2", "--batch-size", "4", "--gallery", "1", "--out", str(out)]
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
    # clear-rl's single tokens: `always` restores within three tokens (the release's text turns would not)
    args = ["eval", "--model", str(folder), "--data", str(tsv), "--levels", "clean", "--restore", "always",
            "--max-new-tokens", "3", "--steps", "2", "--batch-size", "4", "--gallery", "4", "--tags", "tokens"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    preset = load_bagel_unified(folder, device="cpu")[0].preset  # the release's, fitted to the tiny model
    assert "`clear-release`" in report and preset.summary in report
    for setting, value in preset.rows():
        if setting not in ("restoration steps", "protocol tags"):
            assert f"| {setting} | {value} |" in report, setting
    assert "| restoration steps | 2 Euler steps (given; the preset's: 49) * |" in report
    assert (
        "| protocol tags | tokens: clear-rl's single tokens; the token <image_restore> restores (given"
        in report
    )
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


def test_eval_runs_a_released_checkpoint_as_the_releases_eval_does(tmp_path, monkeypatch):
    """A folder without clear_rl_recipe.yaml under clear-release: the release's system prompt, tags as
    text (a finished turn holding <image_restore> restores), the reencode-vae readback; report.md names
    each value, and --system-prompt still replaces the prompt."""
    from clear_rl.models.bagel import BagelUnifiedModel
    from clear_rl.models.bagel.tiny import build_tiny_tokenizer
    from tests.test_bagel_release_protocol import THOUGHT_1, THOUGHT_2, scripted_decoder

    folder = tmp_path / "CLEAR-RL"
    build_tiny_bagel(folder, seed=0)
    tokenizer = build_tiny_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    script = [*tokenizer.encode(THOUGHT_1), end, *tokenizer.encode(THOUGHT_2), end]
    monkeypatch.setattr(
        BagelUnifiedModel, "decoder_class", scripted_decoder(BagelUnifiedModel.decoder_class, [script], end)
    )
    tsv = _benchmark(tmp_path / "MMStar.tsv")
    args = ["eval", "--model", str(folder), "--data", str(tsv), "--levels", "clean",
            "--steps", "2", "--batch-size", "4", "--gallery", "0"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert (scores["trigger_rate"] == 100.0).all()  # every row asked in text, and restored
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert (rows["prediction"] == THOUGHT_1 + THOUGHT_2).all() and rows["hit"].tolist() == [1, 0, 1, 0]
    for line in (
        "| protocol tags | text: <think>, <answer>, <image_restore> as plain text; a finished turn holding "
        "<image_restore> restores |",
        "| turns | at most 3, 4095 tokens each (tags text) |",
        "| system prompt | CLEAR's INTERLEAVE_REASON_SYSTEM_PROMPT |",
        "| readback | reencode-vae: decoded to 8-bit pixels, encoded by the VAE, a latent block |",
        "| VAE posterior | sampled (seeded) |",
        "| token budget | 12288 tokens a completion |",  # 3 turns of 4095 tokens and their <|im_end|>
        "the clear-release preset's: CLEAR's INTERLEAVE_REASON_SYSTEM_PROMPT (prompts.py)",  # Setup: From
        "`You are a specialized multimodal assistant.",  # Setup: the prompt itself
    ):
        assert line in report, line
    assert (
        main([*args, "--system-prompt", "Look.", "--readback", "bridge", "--out", str(tmp_path / "own")]) == 0
    )
    report = (tmp_path / "own" / "report.md").read_text()
    assert "| system prompt | from EvalConfig.system_prompt (--system-prompt) * |" in report
    assert "| readback | bridge: the restored latent as a latent block * |" in report
    assert "| CLEAR-RL | `Look.` |" in report
