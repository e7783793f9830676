"""The README's Workflow block runs as written, so the README cannot drift from the code.

The block is taken from README.md and run literally by bash, in a folder holding tiny stand-ins
under the names the recipes use: a tiny LLaVA saved as models/Qwen2.5-VL-3B-Instruct (any VLM
AutoModelForImageTextToText loads works; Qwen2-VL's processor would need torchvision), a tiny VAE
as models/FLUX.1-dev/vae, and ShapesVQA TSVs as data/vqa.tsv and LMUData/MMStar.tsv, all built in
code. Sizes and step counts shrink through CLEAR_RL_TRAIN_OVERRIDES (the documented way to shrink
a script of train commands), so neither the block nor the recipes change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clear_rl.demo.shapes_vqa import build_shapes_vqa
from clear_rl.models import build_tiny_model
from clear_rl.models.io import load_unified

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("outputs/qwen2_5_vl_3b")
# Every stage: a few steps. Per stage: the align recipe composes the model, so its head and VAE
# view shrink there (later stages load them); 4-bit loading needs CUDA, so it is off.
SMALL = " ".join(
    [
        "training.max_steps=2",
        "training.gradient_accumulation_steps=1",
        "training.dataloader_num_workers=0",
        "training.logging_steps=1",
        "training.save_strategy=no",
        "model.load_in_4bit=false",
        "align:model.vae_image_size=64",
        "align:model.head.num_layers=1",
        "align:model.head.num_attention_heads=2",
        "align:model.head.attention_head_dim=16",
        "bridge:training.restoration_steps=2",
        "grpo:training.restoration_steps=2",
        "grpo:training.max_completion_length=16",
    ]
)


def workflow_block() -> str:
    """The first bash block under the README's '## Workflow' heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Workflow\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README.md's Workflow section has no bash block"
    return match.group(1)


def stand_ins(root: Path) -> None:
    """Tiny models and data under the names the README and the recipes use."""
    model, processor = build_tiny_model(seed=0)
    vlm = root / "models" / "Qwen2.5-VL-3B-Instruct"
    model.vlm.save_pretrained(vlm)
    processor.save_pretrained(vlm)
    model.vae.save_pretrained(root / "models" / "FLUX.1-dev" / "vae")
    files = build_shapes_vqa(root / "shapes", num_train=8, num_test=4, seed=0)
    (root / "data").mkdir()
    (root / "LMUData").mkdir()
    shutil.copy(files.tsv["train"], root / "data" / "vqa.tsv")
    shutil.copy(files.tsv["test"], root / "LMUData" / "MMStar.tsv")
    shutil.copytree(ROOT / "recipes", root / "recipes")


@pytest.mark.slow
def test_the_readme_workflow_runs_as_written(tmp_path):
    block = workflow_block()
    stand_ins(tmp_path)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "CLEAR_RL_TRAIN_OVERRIDES": SMALL,
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, f"the README's workflow failed:\n{done.stderr[-6000:]}"

    # degrade and eval name the same files: eval read the copies degrade wrote and made none itself
    scores = pd.read_csv(tmp_path / "outputs/eval/scores.csv")
    assert set(zip(scores["dataset"], scores["level"])) == {
        ("MMStar", "clean"), ("MMStar_MMD_low", "low"), ("MMStar_MMD_mid", "mid"), ("MMStar_MMD_high", "high"),
    }  # fmt: skip
    assert not (tmp_path / "outputs/eval/degraded").exists()

    # the probe labelled the training rows with a model a previous command made
    prepared = json.loads((tmp_path / "data/prepared/clear_rl_prepare.json").read_text())
    assert prepared["config"]["label"] == "probe"
    assert prepared["config"]["probe"]["model_path"] == str(OUT / "align")

    # each stage started from the folder the one before wrote: the aligned model reaches stage 1
    previous = {"sft-lora": "align", "bridge-lora": "sft-lora", "grpo-qlora": "bridge-lora"}
    for stage, before in previous.items():
        saved = yaml.safe_load((tmp_path / OUT / stage / "clear_rl_recipe.yaml").read_text())
        assert saved["model"]["path"] == str(OUT / before), stage
    adapters = json.loads((tmp_path / OUT / "sft-lora" / "adapter_config.json").read_text())
    assert Path(adapters["base_model_name_or_path"]) == (tmp_path / OUT / "align").resolve()
    stage1, _ = load_unified(tmp_path / OUT / "sft-lora")  # from any folder: the base path is absolute
    assert stage1.get_base_model().name_or_path == str((tmp_path / OUT / "align").resolve())
