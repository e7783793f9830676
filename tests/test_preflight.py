"""A bad recipe, or one that points at missing inputs, is refused in well under 2 s, before
torch, transformers or TRL is imported and before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from clear_rl.errors import ClearRLError
from clear_rl.preflight import check_inputs
from clear_rl.recipe import load_recipe
from clear_rl.recipe_schema import STAGE_CONFIGS, config_class, schema_of, stage_schema
from tests.prepared import prepared_dataset

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "diffusers", "datasets")
# Runs `clear-rl train` on each recipe in one fresh interpreter; prints, per recipe, the exit
# code, the error and the seconds it took, then the heavy modules it imported.
REFUSE = """
import contextlib, io, json, sys, time
from clear_rl import cli
heavy, results = json.loads(sys.argv[1]), []
for path in sys.argv[2:]:
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = cli.main(["train", path])
    results.append([code, err.getvalue(), time.perf_counter() - start])
print(json.dumps({"results": results, "heavy": [m for m in heavy if m in sys.modules]}))
"""


def recipe(tmp_path: Path, name: str, **sections) -> Path:
    body = {
        "stage": "sft",
        "model": {"tiny": {}},
        "data": {"path": str(tmp_path / "prepared")},
        "training": {"output_dir": str(tmp_path / "out")},
    }
    for key, value in sections.items():
        if value is None:
            body.pop(key)
        elif isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A private schema cache, filled as the first run after an install would fill it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for stage in STAGE_CONFIGS:
        stage_schema(stage)
    return tmp_path / "cache"


def test_bad_recipes_and_missing_inputs_are_refused_fast_without_heavy_imports(tmp_path, cache):
    datasets.DatasetDict({"train": prepared_dataset(2)}).save_to_disk(str(tmp_path / "prepared"))
    no_answer = prepared_dataset(2).remove_columns(["answer"])
    no_answer.save_to_disk(str(tmp_path / "no_answer"))
    cases = {
        "missing file": (tmp_path / "absent.yaml", "recipe file not found"),
        "unknown key": (recipe(tmp_path, "key", training={"lamda_mse": 1}), "did you mean 'lambda_mse'"),
        "wrong type": (
            recipe(tmp_path, "type", training={"max_steps": "ten"}),
            "training.max_steps: expected int",
        ),
        "no output_dir": (
            recipe(tmp_path, "out", training={"output_dir": None}),
            "training.output_dir: missing",
        ),
        "unknown part": (
            recipe(tmp_path, "part", model={"trainable_parts": ["llm", "heads"]}),
            "model.trainable_parts: expected one of ['llm', 'vit', 'projector', 'head', 'bridge', 'vae'], got 'heads'",
        ),
        "missing data": (
            recipe(tmp_path, "data", data={"path": str(tmp_path / "nowhere")}),
            "data.yaml: data.path: dataset folder not found",
        ),
        "missing split": (
            recipe(tmp_path, "split", data={"split": "validation"}),
            "has no split 'validation'",
        ),
        "missing column": (
            recipe(tmp_path, "column", data={"path": str(tmp_path / "no_answer")}),
            "lacks column(s) ['answer']",
        ),
        "missing model": (
            recipe(tmp_path, "model", model={"tiny": None, "path": str(tmp_path / "no_model")}),
            "model.path: model folder not found",
        ),
        "grpo without rewards": (
            recipe(tmp_path, "grpo", stage="grpo", training={"output_dir": "o"}),
            "the grpo stage needs a `rewards:` section",
        ),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cache)}
    paths = [str(path) for path, _ in cases.values()]
    done = subprocess.run(
        [sys.executable, "-c", REFUSE, json.dumps(HEAVY), *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for (name, (path, expected)), (code, error, seconds) in zip(cases.items(), report["results"]):
        assert code == 2, (name, error)
        assert expected in error and (name == "missing file" or path.name in error), (name, error)
        assert seconds < 2.0, (name, seconds)
    assert report["heavy"] == []  # validation alone never imported them


def test_the_cached_schema_is_the_config_class_own(cache):
    for stage in STAGE_CONFIGS:
        real, cached = schema_of(config_class(stage)), stage_schema(stage)
        assert list(cached.hints) == list(real.hints) and cached.required == real.required
        assert cached.renames == real.renames and "gradient_checkpointing" in cached.renames
    assert len(list(cache.glob("clear-rl/schema-*.json"))) == len(STAGE_CONFIGS)


def test_a_torn_cache_file_is_rebuilt(cache):
    for path in cache.glob("clear-rl/schema-sft-*.json"):
        path.write_text('{"format": 1, "hin')
    assert "lambda_mse" in stage_schema("sft").hints


def test_missing_inputs_are_checked_only_when_asked(tmp_path):
    path = recipe(tmp_path, "r")  # data.path does not exist
    assert load_recipe(path).data.path.endswith("prepared")
    with pytest.raises(ClearRLError, match=r"r\.yaml: data\.path: dataset folder not found"):
        load_recipe(path, check_inputs=check_inputs)
