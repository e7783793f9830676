"""`clear-rl eval` on the released MMD-Bench files as they are, and with each model's own prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from judge_server import FakeJudge, fake_judge

from clear_rl.cli import main
from clear_rl.demo.shapes_vqa import generate_shapes_vqa, records_to_tsv_frame
from clear_rl.errors import DataError
from clear_rl.eval import runner
from clear_rl.eval.files import plan_files
from clear_rl.eval.runner import EvalConfig, evaluate
from clear_rl.io.tsv import write_tsv
from clear_rl.models.io import save_unified

SMALL = {"batch_size": 4, "max_new_tokens": 6, "restoration_steps": 2, "restore": "never"}


def _tsv(path: Path, n: int = 6) -> Path:
    write_tsv(records_to_tsv_frame(generate_shapes_vqa(n, seed=1, split="test")), path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def released(tmp_path):
    """A folder laid out as the CLEAR release: clean MMStar, its three levels (High with fewer
    rows, to tell it from a regenerated copy), one per-corruption file, and R-Bench-Dis."""
    folder = tmp_path / "LMUData"
    folder.mkdir()
    _tsv(folder / "MMStar.tsv", 6)
    _tsv(folder / "MMStar_LOW_LEVEL_LOW.tsv", 6)
    _tsv(folder / "MMStar_LOW_LEVEL_MID.tsv", 6)
    _tsv(folder / "MMStar_LOW_LEVEL_HIGH.tsv", 4)
    _tsv(folder / "MMStar_graffiti.tsv", 5)
    _tsv(folder / "R-Bench-Dis.tsv", 3)
    return folder


def test_the_released_files_are_scored_at_their_levels_without_regenerating(tiny, released, tmp_path):
    before = _snapshot(released)
    out = tmp_path / "out"
    data = [released / "MMStar.tsv", released / "R-Bench-Dis.tsv"]
    files = evaluate({"tiny": tiny}, data, out, EvalConfig(**SMALL), degraded_dir=released)
    assert _snapshot(released) == before  # an input folder is never written
    assert not (out / "degraded").exists()  # nothing regenerated
    scores = pd.read_csv(files["scores.csv"], keep_default_na=False)
    found = sorted(zip(scores["dataset"], scores["level"], scores["corruption"], scores["rows"]))
    assert found == [
        ("MMStar", "clean", "", 6),
        ("MMStar_LOW_LEVEL_HIGH", "high", "", 4),
        ("MMStar_LOW_LEVEL_LOW", "low", "", 6),
        ("MMStar_LOW_LEVEL_MID", "mid", "", 6),
        ("MMStar_graffiti", "high", "graffiti", 5),
        ("R-Bench-Dis", "high", "", 3),
    ]
    report = files["report.md"].read_text()
    assert "| Method | MMStar | R-Bench-Dis | AVG |" in report  # the paper's High table, as named
    assert "## tiny [never] per corruption (High)" in report and "Protocol: `paper`" in report


def test_release_files_given_directly_are_answered_as_they_are(tiny, released, tmp_path):
    data = [released / "MMStar_LOW_LEVEL_HIGH.tsv", released / "MMStar_graffiti.tsv"]
    files = evaluate({"tiny": tiny}, data, tmp_path / "out", EvalConfig(**SMALL))
    scores = pd.read_csv(files["scores.csv"])
    assert sorted(scores["dataset"]) == ["MMStar_LOW_LEVEL_HIGH", "MMStar_graffiti"]
    assert set(scores["level"]) == {"high"} and not (tmp_path / "out" / "degraded").exists()


def test_missing_levels_are_made_under_out_not_in_the_given_folder(tiny, released, tmp_path):
    (released / "MMStar_LOW_LEVEL_MID.tsv").unlink()
    before = _snapshot(released)
    config = EvalConfig(levels=["mid", "high"], **SMALL)
    files = evaluate(
        {"tiny": tiny}, [released / "MMStar.tsv"], tmp_path / "out", config, degraded_dir=released
    )
    assert _snapshot(released) == before
    assert (tmp_path / "out" / "degraded" / "MMStar_MMD_mid.tsv").is_file()
    scores = pd.read_csv(files["scores.csv"])
    assert sorted(scores["dataset"]) == ["MMStar_LOW_LEVEL_HIGH", "MMStar_MMD_mid", "MMStar_graffiti"]


def test_the_cli_offers_the_runners_choices():
    from clear_rl.commands import eval as command
    from clear_rl.eval import scoring

    assert command.PROTOCOLS == scoring.PROTOCOLS and command.LEVELS == scoring.LEVELS
    assert command.RESTORE_POLICIES == runner.RESTORE_POLICIES and command.READBACKS == runner.READBACKS


def test_file_planning_skips_unwanted_levels_and_names_clashes(released, tmp_path, caplog):
    groups = plan_files([released / "R-Bench-Dis.tsv"], ["clean"], tmp_path / "cache", 0)
    assert groups == [] and "R-Bench-Dis.tsv: its level (high) is not among --levels" in caplog.text
    _tsv(released / "MMStar_MMD_high.tsv", 2)  # clear-rl's own copy beside the release's
    with pytest.raises(DataError, match="several files hold MMStar at level high"):
        plan_files([released / "MMStar.tsv"], ["high"], tmp_path / "cache", 0, released)
    with pytest.raises(DataError, match="--degraded folder not found"):
        plan_files([released / "MMStar.tsv"], ["high"], tmp_path / "cache", 0, tmp_path / "nowhere")


def _spy_prompts(monkeypatch) -> list:
    seen = []
    original = runner.answer_batch

    def spy(*args, **kwargs):
        seen.append(kwargs["system_prompt"])
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "answer_batch", spy)
    return seen


def _saved_with_prompt(tiny, folder: Path, prompt: str) -> Path:
    model, processor = tiny
    save_unified(model, processor, folder)
    (folder / "clear_rl_recipe.yaml").write_text(
        f"stage: sft\ndata:\n  path: prepared\n  system_prompt: {json.dumps(prompt)}\ntraining: {{}}\n"
    )
    return folder


def test_a_saved_model_is_asked_with_its_own_prompt_unless_told_otherwise(tiny, tmp_path, monkeypatch):
    folder = _saved_with_prompt(tiny, tmp_path / "sft", "Answer with one letter.")
    tsv = _tsv(tmp_path / "ShapesVQA_test.tsv", 4)
    seen = _spy_prompts(monkeypatch)
    argv = ["eval", "--model", f"SFT={folder}", "--data", str(tsv), "--levels", "clean", "--restore", "never",
            "--max-new-tokens", "4", "--batch-size", "4"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "own")]) == 0
    assert set(seen) == {"Answer with one letter."}
    report = (tmp_path / "own" / "report.md").read_text()
    assert "`Answer with one letter.`" in report and "clear_rl_recipe.yaml (data.system_prompt)" in report
    runs = json.loads((tmp_path / "own" / "scores.json").read_text())["runs"]
    assert runs["SFT [never]"]["system_prompt"] == "Answer with one letter."
    seen.clear()
    assert main([*argv, "--out", str(tmp_path / "given"), "--system-prompt", "Be brief."]) == 0
    assert set(seen) == {"Be brief."}
    assert (
        "--system-prompt"
        in json.loads((tmp_path / "given" / "scores.json").read_text())["runs"]["SFT [never]"][
            "prompt_source"
        ]
    )


def test_mm_vet_is_judge_graded_with_its_prompt_and_unscored_without(tiny, tmp_path, monkeypatch):
    frame = records_to_tsv_frame(generate_shapes_vqa(4, seed=1, split="test"))
    tsv = tmp_path / "MMVet.tsv"
    write_tsv(frame.drop(columns=[c for c in "ABCDEFGH" if c in frame.columns]), tsv)  # open-ended
    config = EvalConfig(levels=["clean"], **SMALL)
    files = evaluate({"tiny": tiny}, [tsv], tmp_path / "rules", config)
    assert "MM-Vet (MMVet, tiny [never]): not scored" in files["report.md"].read_text()
    with fake_judge([(200, "0.5")] * 4) as url:
        monkeypatch.setenv("CLEAR_RL_JUDGE_URL", url)
        monkeypatch.setenv("CLEAR_RL_JUDGE_MODEL", "grader")
        judged = EvalConfig(levels=["clean"], judge=True, **SMALL)
        files = evaluate({"tiny": tiny}, [tsv], tmp_path / "judge", judged)
        asked = [m["body"]["messages"] for m in FakeJudge.seen]
    assert len(asked) == 4 and all(m[0]["content"].startswith("Compare the ground truth") for m in asked)
    scores = pd.read_csv(files["scores.csv"])
    assert scores["score"].tolist() == [50.0] and scores["scored"].tolist() == [True]
    rows = pd.read_csv(files["predictions.csv"])
    assert set(rows["graded_by"]) == {"judge"}


def test_release_rows_are_measured_against_the_clean_file_even_when_clean_is_not_answered(
    tiny, released, tmp_path
):
    config = EvalConfig(
        levels=["high"], batch_size=4, max_new_tokens=4, restoration_steps=2, restore="always"
    )
    data = [released / "MMStar.tsv", released / "MMStar_LOW_LEVEL_HIGH.tsv"]
    files = evaluate({"tiny": tiny}, data, tmp_path / "out", config)
    rows = pd.read_csv(files["predictions.csv"])
    high = rows[rows["dataset"] == "MMStar_LOW_LEVEL_HIGH"]
    assert len(high) == 4 and high["psnr_restored"].notna().all()
    assert set(rows["dataset"]) == {"MMStar_LOW_LEVEL_HIGH"}  # no --degraded: the folder is not searched
