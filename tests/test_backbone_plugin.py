"""A third backbone, declared here, outside the package: `clear-rl eval` and an SFT step run on it
with no library file edited for it (models/registry.py; CONTRIBUTING.md "Adding a backbone").

`Toy` is the tiny composed model under a folder layout of its own (a `toy_backbone.json` beside the
weights), its own model class, and a narrower declaration: it reads restorations back through the
bridge only and trains in stage 1 only. What is proven is the plumbing a new backbone goes through:
detection, the weights check, loading, `--backbone` / `model.backbone`, the trainers finding its model
inside peft, its declared readbacks and stages refused elsewhere, and its own save layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pandas as pd
import pytest
import yaml

from clear_rl.cli import main
from clear_rl.errors import ClearRLError, RecipeError
from clear_rl.models import registry
from clear_rl.models.composed import ComposedUnifiedModel
from clear_rl.models.registry import BackboneSpec
from clear_rl.models.weights import WeightsError, check_model_folder, read_json
from clear_rl.preflight import check_inputs
from clear_rl.recipe import load_recipe, stage_module
from tests.prepared import SMALL, prepared_dataset
from tests.test_bagel_eval import _benchmark  # a small VLMEvalKit-style TSV

MARKER = "toy_backbone.json"
LOADED: list[str] = []  # folders the toy's `load` read


class ToyModel(ComposedUnifiedModel):
    """The toy backbone's model: the composed model's code, saved with its own marker file."""

    def save_pretrained(self, path, *args, **kwargs) -> None:
        super().save_pretrained(path, *args, **kwargs)
        (Path(path) / MARKER).write_text(json.dumps({"backbone": "toy"}))


def _check_toy(folder: Path) -> None:
    if read_json(folder / MARKER).get("backbone") != "toy":
        raise WeightsError(f"{folder / MARKER} does not name the toy backbone")
    registry.get("composed").check_folder(folder)  # its weights: the composed model's checks


def _load_toy(folder: Path, dtype="auto", load_in_4bit=False, preset=None, tags=None):
    from transformers import AutoProcessor

    from clear_rl.models.chat import ATTRIBUTE, saved_chat_settings

    LOADED.append(str(folder))
    model = ToyModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    model.name_or_path = model.config._name_or_path = str(folder.resolve())
    setattr(model, ATTRIBUTE, saved_chat_settings(folder))
    return model, AutoProcessor.from_pretrained(folder, local_files_only=True)


def _build_toy(folder, seed: int = 0) -> Path:
    from clear_rl.models import build_tiny_model
    from clear_rl.models.io import save_unified

    model, processor = build_tiny_model(SMALL, seed=seed)
    toy = ToyModel(model.config)
    toy.load_state_dict(model.state_dict())
    save_unified(toy, processor, folder)
    return Path(folder)


TOY = BackboneSpec(
    name="toy",
    description="the tiny composed model in a layout of its own (tests)",
    detect=lambda folder: (folder / MARKER).is_file(),
    check_folder=_check_toy,
    load=_load_toy,
    model_classes=lambda: (ToyModel,),
    build_tiny=_build_toy,
    readbacks=("bridge",),
    training_readbacks=("bridge",),
    training_stages=("sft",),
    detect_order=50,  # before composed's (any config.json)
    missing=lambda folder: f"it holds no {MARKER}",
)


@pytest.fixture
def toy(tmp_path):
    """The toy backbone registered (and forgotten afterwards), and a tiny folder of it."""
    registry.register(TOY)
    LOADED.clear()
    try:
        yield TOY.build_tiny(tmp_path / "toy-model")
    finally:
        registry.unregister("toy")


def test_the_registry_knows_the_plugin_and_recognises_its_folder(toy):
    assert "toy" in registry.backbone_names() and "toy" in registry.backbone_choices()
    assert registry.detect(toy) is TOY  # before composed, whose layout (config.json) it also holds
    from clear_rl.models.io import load_unified

    model, _ = load_unified(toy)
    assert type(model) is ToyModel and registry.spec_of(model) is TOY
    with pytest.raises(ClearRLError, match="registered already"):
        registry.register(TOY)
    plain = toy.parent / "plain"  # the same files without the marker: a composed model
    shutil.copytree(toy, plain)
    (plain / MARKER).unlink()
    assert check_model_folder(plain) == "composed"
    with pytest.raises(WeightsError, match="holds a composed model, not a toy one"):
        check_model_folder(plain, "toy")


def test_clear_rl_eval_runs_on_the_plugin_backbone(toy, tmp_path, capsys):
    tsv = _benchmark(tmp_path / "MMStar.tsv")
    out = tmp_path / "out"
    args = ["eval", "--model", f"Toy={toy}", "--data", str(tsv), "--levels", "clean,high",
            "--restore", "model,always", "--max-new-tokens", "4", "--steps", "2", "--batch-size", "4",
            "--gallery", "0"]  # fmt: skip
    assert main([*args, "--backbone", "toy", "--out", str(out)]) == 0
    assert LOADED == [str(toy)]
    scores = pd.read_csv(out / "scores.csv")
    always = scores[scores["model"].str.contains("always")]
    assert sorted(always["level"]) == ["clean", "high"] and (always["trigger_rate"] == 100.0).all()
    assert "Toy" in capsys.readouterr().out
    # Its declaration offers the bridge only: another readback is refused before any answer is written.
    refused = tmp_path / "refused"
    assert main([*args, "--readback", "reencode", "--out", str(refused)]) != 0
    assert "readback 'reencode': Toy (a toy model) reads restorations back through ['bridge'] only" in (
        capsys.readouterr().err
    )
    assert not (refused / "predictions").exists()


def _recipe(tmp_path: Path, stage: str, model: Path, out: Path) -> Path:
    data = tmp_path / "prepared"
    if not data.exists():
        datasets.DatasetDict({"train": prepared_dataset(4)}).save_to_disk(str(data))
    recipe = {
        "stage": stage,
        "model": {"path": str(model), "backbone": "toy"},
        "data": {"path": str(data)},
        "training": {
            "output_dir": str(out), "max_steps": 1, "per_device_train_batch_size": 2,
            "learning_rate": 1e-3, "report_to": "none", "disable_tqdm": True,
            "activation_checkpointing": False, "use_cpu": True,
        },
    }  # fmt: skip
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_one_sft_step_trains_and_saves_the_plugin_backbone(toy, tmp_path):
    import torch

    from clear_rl.models.io import load_unified

    out = tmp_path / "sft"
    recipe = load_recipe(_recipe(tmp_path, "sft", toy, out), check_inputs=check_inputs)
    trainer = stage_module("sft").train(recipe)
    assert trainer.state.global_step == 1
    assert (out / MARKER).is_file()  # saved through the toy's own layout
    before, _ = load_unified(toy)
    after, _ = load_unified(out)  # recognised as the toy again
    assert type(after) is ToyModel
    reference = dict(before.named_parameters())
    assert any(not torch.equal(p, reference[n]) for n, p in after.named_parameters())


def test_stages_the_plugin_does_not_declare_are_refused_before_anything_loads(toy, tmp_path):
    out = tmp_path / "bridge"
    with pytest.raises(RecipeError, match=r"toy model, which trains in the stages \['sft'\], not bridge"):
        load_recipe(_recipe(tmp_path, "bridge", toy, out), check_inputs=check_inputs)
    assert LOADED == [] and not out.exists()


def test_an_installed_package_declares_a_backbone_through_its_entry_point(monkeypatch):
    from importlib.metadata import EntryPoint

    points = [EntryPoint("toy", "tests.test_backbone_plugin:TOY", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(
        registry, "entry_points", lambda group: points if group == registry.ENTRY_POINT_GROUP else []
    )
    monkeypatch.setattr(registry, "_SPECS", {})
    monkeypatch.setattr(registry, "_loaded", False)  # as in a fresh interpreter
    assert registry.backbone_choices() == ("auto", "composed", "bagel", "toy")
    loaded = registry.get("toy")  # the entry point's own import of this file's TOY
    assert (loaded.description, loaded.training_stages) == (TOY.description, TOY.training_stages)
    # A plug-in that fails to import is named, not a traceback from inside argparse.
    points[:] = [EntryPoint("broken", "no_such_package.backbone", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "_SPECS", {})
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.raises(ClearRLError, match="backbone plug-in 'no_such_package.backbone'"):
        registry.backbone_names()
