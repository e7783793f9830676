"""Input files are checked before work starts: empty or header-only TSVs, empty answers, image
cells (a cell is a path only when it looks like one); each error names the file and the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clear_rl.cli import main
from clear_rl.demo.shapes_vqa import generate_shapes_vqa, records_to_tsv_frame
from clear_rl.errors import DataError
from clear_rl.eval.runner import EvalConfig, evaluate
from clear_rl.io.images import decode_image, encode_base64_image
from clear_rl.io.tsv import read_tsv, write_tsv
from tests.conftest import make_images

HEADER = "index\timage\tquestion\tanswer\n"


def _shapes(path: Path, n: int = 4) -> Path:
    write_tsv(records_to_tsv_frame(generate_shapes_vqa(n, seed=1, split="test")), path)
    return path


@pytest.fixture()
def bad_files(tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "header.tsv").write_text(HEADER)
    return tmp_path


def test_empty_and_header_only_tsvs_are_named(bad_files):
    with pytest.raises(DataError, match=r"empty\.tsv is empty"):
        read_tsv(bad_files / "empty.tsv")
    with pytest.raises(DataError, match=r"header\.tsv has a header but no rows"):
        read_tsv(bad_files / "header.tsv")


@pytest.mark.parametrize("name, message", [("empty", "is empty"), ("header", "has a header but no rows")])
def test_prepare_and_degrade_refuse_them_and_write_nothing(bad_files, capsys, name, message):
    source = str(bad_files / f"{name}.tsv")
    assert main(["prepare", source, "--out", str(bad_files / "prepared")]) == 2
    assert f"{name}.tsv {message}" in capsys.readouterr().err
    assert main(["degrade", source, "--out", str(bad_files / "degraded")]) == 2
    assert f"{name}.tsv {message}" in capsys.readouterr().err
    assert not (bad_files / "prepared").exists() and not (bad_files / "degraded").exists()


def test_eval_refuses_them_before_any_model_runs(bad_files):
    models = {"unused": (None, None)}  # would fail at once if it were run
    for name in ("empty", "header"):
        with pytest.raises(DataError, match=rf"{name}\.tsv"):
            evaluate(models, [bad_files / f"{name}.tsv"], bad_files / "out", EvalConfig(levels=["clean"]))


def test_eval_names_an_empty_answer_before_any_model_runs(tmp_path):
    tsv = _shapes(tmp_path / "ShapesVQA_test.tsv")
    frame = read_tsv(tsv)
    frame.loc[2, "answer"] = " "
    write_tsv(frame, tsv)
    with pytest.raises(
        DataError, match=r"ShapesVQA_test\.tsv: empty `answer` in 1 row\(s\): row index=2 \(line 4\)"
    ):
        evaluate({"unused": (None, None)}, [tsv], tmp_path / "out", EvalConfig(levels=["clean"]))
    assert not (tmp_path / "out" / "predictions").exists()


def test_resume_answers_again_a_row_an_earlier_run_could_not_score(tiny, tmp_path):
    tsv = _shapes(tmp_path / "ShapesVQA_test.tsv")
    out = tmp_path / "out"
    predictions = out / "predictions" / "tiny" / "ShapesVQA_test.jsonl"
    predictions.parent.mkdir(parents=True)
    stale = {
        "index": "2",
        "prediction": "x",
        "hit": None,
        "restored": False,
        "latency_s": 1.0,
        "num_tokens": 1,
    }
    predictions.write_text(json.dumps(stale) + "\n")  # written while row 2 had no answer
    config = EvalConfig(levels=["clean"], restore="never", resume=True, batch_size=4, max_new_tokens=4)
    files = evaluate({"tiny": tiny}, [tsv], out, config)
    assert files["scores.csv"].exists()
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert sorted(r["index"] for r in records if r["hit"] is not None) == ["0", "1", "2", "3"]


def test_a_path_cell_names_the_missing_file_and_base64_is_never_a_path(tmp_path, monkeypatch):
    image = make_images(1, size=16)[0]
    image.save(tmp_path / "cat.png")
    assert decode_image("cat.png", "row 0", tmp_path).size == (16, 16)
    with pytest.raises(DataError, match=r"row 1: image file not found: .*images/dog\.jpg"):
        decode_image("images/dog.jpg", "row 1", tmp_path)
    # Text that is not a path is base64 only, whatever lies on disk under that name.
    cell = "iVBORw0KGgo"  # the base64 of a PNG signature, cut short
    monkeypatch.chdir(tmp_path)
    (tmp_path / cell).write_bytes((tmp_path / "cat.png").read_bytes())
    with pytest.raises(
        DataError, match=r"row 2: undecodable image cell 'iVBORw0KGgo'.*nor the path of an image file"
    ):
        decode_image(cell, "row 2")


def test_prepare_names_the_row_of_a_short_undecodable_cell(tmp_path, capsys):
    good = encode_base64_image(make_images(1, size=16)[0])
    rows = [f"0\t{good}\tq?\tyes\n", "1\t/9j/4AAQ\tq?\tno\n"]  # a JPEG's base64 cut short
    (tmp_path / "bad.tsv").write_text(HEADER + "".join(rows))
    assert main(["prepare", str(tmp_path / "bad.tsv"), "--out", str(tmp_path / "prepared")]) == 2
    err = capsys.readouterr().err
    assert "bad.tsv: split 'train' row 1 (index=1): undecodable image cell '/9j/4AAQ'" in err
    assert not (tmp_path / "prepared").exists()


def test_prepare_names_an_empty_answer_before_decoding_any_image(tmp_path, capsys):
    (tmp_path / "q.tsv").write_text(HEADER + "0\tnot-decoded\tq?\t\n")
    assert main(["prepare", str(tmp_path / "q.tsv"), "--out", str(tmp_path / "prepared")]) == 2
    assert "q.tsv: empty `answer` in 1 row(s): row index=0 (line 2)" in capsys.readouterr().err
