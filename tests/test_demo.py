"""The embedded default: `make demo-smoke` runs every stage for a few steps (what CI checks)."""

from pathlib import Path

import pytest

from clear_rl.demo.pipeline import DemoConfig, run_demo
from clear_rl.models.io import load_unified

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_smoke_hands_every_stage_a_loadable_model_and_reports(tmp_path):
    config = DemoConfig.smoke(out_dir=str(tmp_path / "demo"))
    config.recipes_dir = str(REPO / "recipes" / "demo")
    summary = run_demo(config)
    models = tmp_path / "demo" / "models"
    for stage in ("init", "base_vlm", "base", "sft", "bridge", "grpo"):
        model, processor = load_unified(models / stage)
        assert model.num_restored_tokens > 0 and processor.tokenizer is not None, stage
        assert (models / stage / "clear_rl_recipe.yaml").exists() or stage == "init"
    text = summary.read_text()
    for table in ("Accuracy (%) per degradation level", "Robustness", "Restoration trigger rate"):
        assert table in text
    for name in ("report.md", "scores.csv", "predictions.csv", "trigger_latency.png"):
        assert (tmp_path / "demo" / "eval" / name).exists()
