"""Every command refuses a bad path, weights file, reward or number before it imports torch,
transformers or TRL, and leaves the file system as it found it: a reward plugin's missing
function, a misspelt parameter or a bad value, a missing, empty, truncated, random or foreign
weights file (named, without a traceback), a missing model, source or benchmark file, a judge
without its variables. Run in one fresh interpreter, which must end with none of them imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from clear_rl.models import build_tiny_model
from clear_rl.models.bagel.tiny import build_tiny_bagel
from clear_rl.models.io import load_unified, save_unified
from clear_rl.models.weights import WeightsError
from tests.listing import listing
from tests.prepared import SMALL
from tests.test_grpo import _prepared_folder
from tests.test_input_rules import _lines

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "diffusers", "datasets")
# Runs `clear-rl ARGV` for each case in one fresh interpreter; prints each exit code, error and
# seconds, then the heavy modules imported.
REFUSE = """
import contextlib, io, json, sys, time
from clear_rl import cli
heavy, results = json.loads(sys.argv[1]), []
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    results.append([code, err.getvalue(), time.perf_counter() - start])
print(json.dumps({"results": results, "heavy": [m for m in heavy if m in sys.modules]}))
"""


def corrupt(folder: Path, how: str, name: str = "model.safetensors") -> Path:
    """`folder` with its weights file `name` removed, emptied, cut in half, made random bytes,
    or replaced by another model's weights."""
    file = folder / name
    data = file.read_bytes()
    if how == "missing":
        file.unlink()
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "random":
        file.write_bytes(os.urandom(len(data)))
    elif how == "foreign":
        import torch

        save_file(
            {"model.embed_tokens.weight": torch.zeros(4, 4), "lm_head.weight": torch.zeros(4, 4)}, str(file)
        )
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    model, processor = build_tiny_model(SMALL, seed=0)
    save_unified(model, processor, root / "good")
    found = {"good": root / "good"}
    for how in ("missing", "empty", "truncated", "random", "foreign"):
        save_unified(model, processor, root / how)
        found[how] = corrupt(root / how, how)
    build_tiny_bagel(root / "bagel", seed=0)
    for how, name in (("missing", "ema.safetensors"), ("truncated", "ae.safetensors")):
        target = root / f"bagel_{how}"
        build_tiny_bagel(target, seed=0)
        found[f"bagel {how}"] = corrupt(target, how, name)
    return found


WEIGHTS_ERRORS = {
    "missing": "holds config.json but no model.safetensors: the model's weights are missing",
    "empty": "model.safetensors is empty (0 bytes)",
    "truncated": "model.safetensors is truncated: its header describes",
    "random": "model.safetensors is not a safetensors file (its first 8 bytes give a header of",
    "foreign": "model.safetensors holds weights of another model (keys such as ['lm_head.weight'",
    "bagel missing": "holds BAGEL's configs but no weights: ema.safetensors or model.safetensors is missing",
    "bagel truncated": "ae.safetensors is truncated",
}


def run_refusals(cwd: Path, cases: dict[str, list[str]]) -> dict[str, tuple[int, str, float]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in [k for k in env if k.startswith("CLEAR_RL_JUDGE_")]:
        env.pop(name)
    done = subprocess.run(
        [sys.executable, "-c", REFUSE, json.dumps(HEAVY), json.dumps(list(cases.values()))],
        env=env, capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], report["heavy"]  # no case imported them
    return dict(zip(cases, map(tuple, report["results"])))


def test_train_refuses_bad_rewards_and_weights_before_trl_and_before_any_write(tmp_path, models):
    data = _prepared_folder(tmp_path / "data")
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(completions, **kwargs):\n    return [0.0] * len(completions)\n"
    )

    def recipe(name: str, rewards: list, model: dict | None = None) -> str:
        body = {
            "stage": "grpo",
            "model": model or {"path": str(models["good"])},
            "data": {"path": str(data)},
            "training": {"output_dir": str(tmp_path / "out" / name), "max_steps": 1},
            "rewards": rewards,
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(body))
        return str(tmp_path / f"{name}.yaml")

    fine = [{"name": "format", "weight": 1.0}]
    cases = {
        "missing function": ["train", recipe("function", [{"path": "my_rewards.py:brevty"}])],
        "misspelt parameter": ["train", recipe("parameter", [{"name": "decision", "matrx": "paper"}])],
        "bad value": ["train", recipe("value", [{"name": "decision", "matrix": "papr"}])],
        **{
            f"{how} weights": ["train", recipe(how.replace(" ", "_"), fine, {"path": str(models[how])})]
            for how in WEIGHTS_ERRORS
        },
    }
    expected = {
        "missing function": "function.yaml: rewards[0] (",
        "misspelt parameter": "unknown parameter(s) ['matrx'] for decision",
        "bad value": "rewards[0] (decision): matrix must be one of ['paper', 'released'] or a mapping, got 'papr'",
        **{f"{how} weights": message for how, message in WEIGHTS_ERRORS.items()},
    }
    before = listing(tmp_path, *models.values())
    results = run_refusals(tmp_path, cases)
    assert listing(tmp_path, *models.values()) == before  # no output_dir, no clear_rl_recipe.yaml
    for name, (code, error, _) in results.items():
        assert code == 2 and expected[name] in error and "Traceback" not in error, (name, error)
    assert "has no function 'brevty'" in results["missing function"][1]


def test_every_command_refuses_a_missing_path_or_bad_weights_before_heavy_imports(tmp_path, models):
    tsv = tmp_path / "Bench.tsv"
    tsv.write_text("\n".join(_lines(tmp_path)) + "\n")
    out = str(tmp_path / "out")
    cases = {
        "eval: missing model": ["eval", "--model", f"M={tmp_path / 'nowhere'}", "--data", str(tsv), "--out", out],
        "eval: missing data": ["eval", "--model", f"M={models['good']}", "--data", str(tmp_path / "no.tsv"), "--out", out],
        "eval: judge unset": ["eval", "--model", f"M={models['good']}", "--data", str(tsv), "--judge", "--out", out],
        "eval: same name": ["eval", "--model", f"M={models['good']}", "--model", f"M={models['good']}", "--data", str(tsv)],
        "eval: out in model": ["eval", "--model", f"M={models['good']}", "--data", str(tsv), "--out", str(models["good"] / "o")],
        "eval: batch size": ["eval", "--model", f"M={models['good']}", "--data", str(tsv), "--batch-size", "0"],
        "prepare: missing source": ["prepare", str(tmp_path / "no.tsv"), "--out", out],
        "prepare: missing probe": ["prepare", str(tsv), "--out", out, "--label", "probe", "--probe-model", str(tmp_path / "no")],
        "degrade: missing input": ["degrade", str(tmp_path / "no.tsv"), "--out", out],
        "demo: missing recipes": ["demo", "--recipes", str(tmp_path / "no"), "--out", out],
        **{f"eval: {how}": ["eval", "--model", f"M={models[how]}", "--data", str(tsv), "--out", out] for how in WEIGHTS_ERRORS},
        **{f"prepare: {how}": ["prepare", str(tsv), "--out", out, "--label", "probe", "--probe-model", str(models[how])]
           for how in ("truncated", "bagel missing")},
    }  # fmt: skip
    expected = {
        "eval: missing model": f"--model M: model folder not found: {tmp_path / 'nowhere'}",
        "eval: missing data": f"--data: file not found: {tmp_path / 'no.tsv'}",
        "eval: judge unset": "the LLM judge needs the environment variable(s) ['CLEAR_RL_JUDGE_URL', 'CLEAR_RL_JUDGE_MODEL']",
        "eval: same name": "--model: two models are named 'M'",
        "eval: out in model": "lies in the input folder of --model M",
        "eval: batch size": "--batch-size must be at least 1, got 0",
        "prepare: missing source": f"source not found: {tmp_path / 'no.tsv'}",
        "prepare: missing probe": f"--probe-model: model folder not found: {tmp_path / 'no'}",
        "degrade: missing input": f"input not found: {tmp_path / 'no.tsv'}",
        "demo: missing recipes": "demo recipes not found",
        **{f"eval: {how}": message for how, message in WEIGHTS_ERRORS.items()},
        "prepare: truncated": WEIGHTS_ERRORS["truncated"],
        "prepare: bagel missing": WEIGHTS_ERRORS["bagel missing"],
    }  # fmt: skip
    before = listing(tmp_path, *models.values())
    results = run_refusals(tmp_path, cases)
    assert listing(tmp_path, *models.values()) == before
    for name, (code, error, _) in results.items():
        assert code == 2 and expected[name] in error and "Traceback" not in error, (name, error)


@pytest.mark.parametrize("how", list(WEIGHTS_ERRORS))
def test_loading_bad_weights_names_the_file(models, how):
    with pytest.raises(WeightsError) as info:
        load_unified(models[how])
    assert WEIGHTS_ERRORS[how] in str(info.value) and str(models[how]) in str(info.value)


def test_weights_saved_from_another_model_are_refused_not_loaded_half_random(tmp_path, models):
    other, processor = build_tiny_model(SMALL.__class__(**{**vars(SMALL), "llm_layers": 1}), seed=0)
    save_unified(other, processor, tmp_path / "other")
    mixed = tmp_path / "mixed"
    save_unified(*build_tiny_model(SMALL, seed=0), mixed)
    (mixed / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(
        WeightsError, match=r"the weights do not fit the model its config.json describes: \d+ weights missing"
    ):
        load_unified(mixed)
