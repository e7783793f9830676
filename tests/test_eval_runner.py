"""`clear-rl eval`: the MMD-Bench evaluation loop end to end on the tiny model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from clear_rl.cli import main
from clear_rl.demo.shapes_vqa import generate_shapes_vqa, records_to_tsv_frame
from clear_rl.errors import DataError
from clear_rl.eval.runner import EvalConfig, evaluate
from clear_rl.io.tsv import read_tsv, write_tsv
from clear_rl.models.io import save_unified

SMALL = {"batch_size": 4, "max_new_tokens": 6, "restoration_steps": 2}


def _tsv(path: Path, n: int = 6) -> Path:
    write_tsv(records_to_tsv_frame(generate_shapes_vqa(n, seed=1, split="test")), path)
    return path


def test_report_and_trigger_rates_follow_the_restore_policy(tiny, tmp_path):
    tsv = _tsv(tmp_path / "ShapesVQA_test.tsv")
    models = {"tiny": tiny}
    for restore, expected in (("always", 100.0), ("never", 0.0)):  # percent, as the paper
        out = tmp_path / restore
        files = evaluate(models, [tsv], out, EvalConfig(levels=["clean"], restore=restore, **SMALL))
        for name in ("report.md", "scores.csv", "scores.json", "predictions.csv", "trigger_latency.png"):
            assert files[name].exists(), name
        scores = pd.read_csv(files["scores.csv"])
        assert scores["trigger_rate"].tolist() == [expected]
        rows = pd.read_csv(files["predictions.csv"])
        assert len(rows) == 6 and set(rows["restored"]) == {restore == "always"}
        assert (rows["latency_s"] > 0).all() and (rows["num_tokens"] <= 6).all()
        assert ((rows["hit"] == 0) | (rows["hit"] == 1)).all()


def test_degraded_copies_given_by_folder_are_scored_as_levels(tiny, tmp_path):
    tsv = _tsv(tmp_path / "ShapesVQA_test.tsv")
    degraded = tmp_path / "degraded"
    degraded.mkdir()
    _tsv(degraded / "ShapesVQA_test_MMD_high.tsv")  # stands in for a `clear-rl degrade` output
    config = EvalConfig(levels=["clean", "high"], restore="never", resume=True, **SMALL)
    files = evaluate({"tiny": tiny}, [tsv], tmp_path / "out", config, degraded_dir=degraded)
    scores = pd.read_csv(files["scores.csv"])
    assert sorted(scores["level"]) == ["clean", "high"]


def test_a_given_degraded_folder_is_read_not_overwritten(tiny, tmp_path):
    tsv = _tsv(tmp_path / "ShapesVQA_test.tsv")
    degraded = tmp_path / "released"
    degraded.mkdir()
    given = _tsv(degraded / "ShapesVQA_test_MMD_high.tsv")  # e.g. the released MMD-Bench file
    before = given.read_bytes()
    config = EvalConfig(levels=["high"], restore="never", **SMALL)  # no resume
    evaluate({"tiny": tiny}, [tsv], tmp_path / "out", config, degraded_dir=degraded)
    assert given.read_bytes() == before


def test_resume_skips_answered_rows(tiny, tmp_path):
    tsv = _tsv(tmp_path / "ShapesVQA_test.tsv")
    out = tmp_path / "out"
    predictions = out / "predictions" / "tiny" / "ShapesVQA_test.jsonl"
    predictions.parent.mkdir(parents=True)
    answered = {"index": "0", "prediction": "kept from before", "hit": 0.0, "restored": False,
                "latency_s": 1.0, "num_tokens": 3}  # fmt: skip
    predictions.write_text(json.dumps(answered) + "\n" + '{"index": "1", "predic')  # torn last line
    config = EvalConfig(levels=["clean"], restore="never", resume=True, **SMALL)
    files = evaluate({"tiny": tiny}, [tsv], out, config)
    rows = pd.read_csv(files["predictions.csv"], dtype={"index": str})
    assert rows.loc[rows["index"] == "0", "prediction"].tolist() == ["kept from before"]
    assert len(rows) == 6 and rows["prediction"].notna().all()


def test_bad_files_are_named(tiny, tmp_path):
    tsv = _tsv(tmp_path / "bad.tsv")
    frame = read_tsv(tsv)
    write_tsv(frame.drop(columns=["answer"]), tmp_path / "no_answer.tsv")
    with pytest.raises(DataError, match=r"no_answer\.tsv.*answer"):
        evaluate({"tiny": tiny}, [tmp_path / "no_answer.tsv"], tmp_path / "o1", EvalConfig(levels=["clean"]))
    frame.loc[2, "image"] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
    write_tsv(frame, tsv)
    with pytest.raises(DataError, match=r"bad\.tsv: row index=2"):
        evaluate(
            {"tiny": tiny}, [tsv], tmp_path / "o2", EvalConfig(levels=["clean"], restore="never", **SMALL)
        )
    with pytest.raises(DataError, match="not found"):
        evaluate({"tiny": tiny}, [tmp_path / "missing.tsv"], tmp_path / "o3", EvalConfig())


def test_cli_evaluates_saved_models_and_prints_the_tables(tiny, tmp_path, capsys):
    model, processor = tiny
    save_unified(model, processor, tmp_path / "base")
    tsv = _tsv(tmp_path / "ShapesVQA_test.tsv", n=4)
    code = main(
        ["eval", "--model", f"Base={tmp_path / 'base'}", "--data", str(tsv), "--levels", "clean",
         "--restore", "never", "--max-new-tokens", "4", "--batch-size", "4", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Base" in printed and (tmp_path / "out" / "report.md").exists()


def test_resume_says_which_rows_it_reused_and_its_bar_counts_them(tiny, tmp_path, caplog, capsys):
    tsv = _tsv(tmp_path / "ShapesVQA_test.tsv")
    out = tmp_path / "out"
    config = EvalConfig(levels=["clean"], restore="never", **SMALL)
    evaluate({"tiny": tiny}, [tsv], out, config)
    predictions = out / "predictions" / "tiny" / "ShapesVQA_test.jsonl"
    predictions.write_text("".join(predictions.read_text().splitlines(keepends=True)[:4]))  # killed after 4
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="clear_rl"):
        evaluate(
            {"tiny": tiny}, [tsv], out, EvalConfig(levels=["clean"], restore="never", resume=True, **SMALL)
        )
    assert "4 of 6 rows answered by an earlier run, reused (--resume)" in caplog.text
    assert "6/6" in capsys.readouterr().err  # the bar ends full, reused rows counted
