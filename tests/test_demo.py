"""The embedded default: `make demo-smoke` runs every stage for a few steps (what CI checks)."""

import json
from pathlib import Path

import pytest

from clear_rl.demo.pipeline import DemoConfig, run_demo
from clear_rl.models.io import load_unified

REPO = Path(__file__).resolve().parents[1]
TARGETS = (
    "Stage 1 keeps",
    "Bridge fidelity",
    "Restoration gain",
    "trigger rate",
    "Drop(CLEAR-RL)",
    "Spearman",
)
TABLES = ("accuracy", "trigger_rate", "robustness", "restoration_gain", "per_corruption_high")


def _smoke(folder: Path, reuse: bool = False) -> Path:
    config = DemoConfig.smoke(out_dir=str(folder))
    config.recipes_dir = str(REPO / "recipes" / "demo")
    return run_demo(config, reuse=reuse)


@pytest.mark.slow
def test_demo_smoke_hands_every_stage_a_loadable_model_reports_and_reproduces(tmp_path):
    summary = _smoke(tmp_path / "demo")
    models = tmp_path / "demo" / "models"
    for stage in ("init", "base_vlm", "head", "base", "sft", "bridge", "grpo"):
        model, processor = load_unified(models / stage)
        assert model.num_restored_tokens > 0 and processor.tokenizer is not None, stage
        # Stages run through `clear-rl train` save their recipe; stage 0's own loops do not.
        assert (models / stage / "clear_rl_recipe.yaml").exists() == (
            stage in ("base_vlm", "sft", "bridge", "grpo")
        )
    text = summary.read_text()
    for table in (
        "Accuracy (%) per degradation level",
        "Robustness",
        "Restoration trigger rate",
        "Per corruption at High",
    ):
        assert table in text
    record = json.loads(summary.with_suffix(".json").read_text())
    claims = [t["claim"] for t in record["targets"]]
    assert all(any(name in claim for claim in claims) for name in TARGETS), claims
    assert {"CLEAR-SFT [never]", "CLEAR-SFT [always]", "CLEAR-SFT [oracle]"} <= set(record["accuracy"])
    for name in ("report.md", "scores.csv", "predictions.csv", "trigger_latency.png"):
        assert (tmp_path / "demo" / "eval" / name).exists()
    assert (tmp_path / "demo" / "eval" / "restoration" / "restoration_gain.csv").exists()
    # Same seed, same machine: the same tables (timings aside).
    again = json.loads(_smoke(tmp_path / "again").with_suffix(".json").read_text())
    for key in TABLES:
        assert again[key] == record[key], key
    assert [t["measured"] for t in again["targets"]] == [t["measured"] for t in record["targets"]]
    # --reuse: every step of a finished run is kept, and the same tables come out.
    reused = json.loads(_smoke(tmp_path / "demo", reuse=True).with_suffix(".json").read_text())
    assert reused["timings_s"].keys() == {"total"} and len(reused["reused"]) == len(record["timings_s"]) - 1
    for key in TABLES:
        assert reused[key] == record[key], key
