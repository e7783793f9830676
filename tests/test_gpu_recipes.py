"""The shipped Qwen2.5-VL recipes (and the BAGEL QLoRA one) on a CUDA GPU: a 4-bit base with LoRA.

The chain align -> sft-lora -> bridge-lora -> grpo-qlora runs as written (the aligned model
quantized to 4 bits as each later stage loads it), only paths, sizes and step counts overridden,
on a tiny VLM and VAE saved to folders the way a downloaded Qwen2.5-VL and FLUX VAE sit on disk. Skipped where CUDA
(and so bitsandbytes' 4-bit kernels) is absent; the CPU-only error is tested in test_models.py.
"""

import json
from pathlib import Path

import datasets
import pytest
import torch

from clear_rl.models import build_tiny_model
from clear_rl.models.io import load_unified
from clear_rl.recipe import load_recipe, stage_module
from tests.prepared import prepared_dataset

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "qwen2_5_vl_3b"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes 4-bit)"),
]


def _run(recipe: str, overrides: list[str]) -> dict:
    loaded = load_recipe(RECIPES / recipe, overrides)
    torch.cuda.reset_peak_memory_stats()
    stage_module(loaded.stage).train(loaded)
    return {"peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20}


def test_qwen_recipes_train_a_4bit_base_with_lora_through_every_stage(tmp_path):
    import bitsandbytes as bnb

    model, processor = build_tiny_model(seed=0)
    vlm_dir, vae_dir, data = tmp_path / "vlm", tmp_path / "vae", tmp_path / "prepared"
    model.vlm.save_pretrained(vlm_dir)
    processor.save_pretrained(vlm_dir)
    model.vae.save_pretrained(vae_dir)
    datasets.DatasetDict({"train": prepared_dataset(32, size=64, templates=True)}).save_to_disk(str(data))
    common = [
        f"data.path={data}",
        "data.max_samples=32",
        "training.report_to=none",
        "training.save_strategy=no",
    ]
    out = {name: tmp_path / name for name in ("align", "sft", "bridge", "grpo")}
    stats = {
        "align": _run(
            "align.yaml",
            [
                f"model.vlm_path={vlm_dir}",
                f"model.vae_path={vae_dir}",
                "model.vae_subfolder=null",
                f"model.vae_image_size={model.config.vae_image_size}",
                "model.head.num_layers=1",
                f"data.path={data}",
                f"training.output_dir={out['align']}",
                "training.max_steps=2",
                "training.per_device_train_batch_size=4",
                "training.report_to=none",
                "training.save_strategy=no",
            ],
        ),
        "sft": _run(
            "sft-lora.yaml",
            [
                f"model.path={out['align']}",  # the recipe's default is align.yaml's output folder
                f"training.output_dir={out['sft']}",
                "training.max_steps=3",
                "training.gradient_accumulation_steps=1",
                "training.per_device_train_batch_size=4",
                "training.dataloader_num_workers=0",
                *common,
            ],
        ),
        "bridge": _run(
            "bridge-lora.yaml",
            [
                f"model.path={out['sft']}",
                f"training.output_dir={out['bridge']}",
                "training.max_steps=2",
                "training.gradient_accumulation_steps=1",
                "training.restoration_steps=2",
                *common,
            ],
        ),
        "grpo": _run(
            "grpo-qlora.yaml",
            [
                f"model.path={out['bridge']}",
                f"training.output_dir={out['grpo']}",
                "training.max_steps=2",
                "training.gradient_accumulation_steps=1",
                "training.max_completion_length=24",
                "training.restoration_steps=2",
                *common,
            ],
        ),
    }
    del out["align"]  # the full-precision base the adapters below load onto, quantized as it loads
    for name, folder in out.items():
        loaded, _ = load_unified(folder, load_in_4bit=True)
        four_bit = [m for m in loaded.modules() if isinstance(m, bnb.nn.Linear4bit)]
        lora = [n for n, _ in loaded.named_parameters() if "lora_" in n]
        assert four_bit and lora, f"{name}: expected a 4-bit base with LoRA adapters"
        assert any(p.device.type == "cuda" for p in loaded.parameters()), name
        for part in ("vae", "restoration_head", "latent_bridge"):
            module = loaded.get_base_model().get_submodule(part)
            assert len({p.dtype for p in module.parameters()}) == 1, f"{name}: {part} has mixed dtypes"
    print("GPU_RECIPE_STATS " + json.dumps(stats))


def test_the_bagel_qlora_recipe_trains_adapters_on_a_4bit_tiny_bagel(tmp_path):
    """recipes/bagel_7b_mot/grpo-qlora-24gb.yaml as written but for paths and sizes: an NF4 base
    (both experts quantised) under LoRA adapters that train and save, restoring in every rollout."""
    import bitsandbytes as bnb

    from clear_rl.models.bagel import build_tiny_bagel

    folder, data, out = tmp_path / "tiny-bagel", tmp_path / "prepared", tmp_path / "grpo"
    build_tiny_bagel(folder, seed=0)
    datasets.DatasetDict({"train": prepared_dataset(8)}).save_to_disk(str(data))
    recipe = RECIPES.parent / "bagel_7b_mot" / "grpo-qlora-24gb.yaml"
    overrides = [
        f"model.path={folder}", f"data.path={data}", f"training.output_dir={out}", "training.max_steps=2",
        "training.max_completion_length=8", "training.restoration_steps=2", "training.restore_policy=always",
        "training.report_to=none", "training.save_strategy=no",
    ]  # fmt: skip
    loaded = load_recipe(recipe, overrides)
    stage_module("grpo").train(loaded)
    model, _ = load_unified(out, load_in_4bit=True)
    assert [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any("q_proj_moe_gen.lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
