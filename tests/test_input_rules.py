"""degrade, prepare and eval apply one set of benchmark TSV rules (`io/benchmark_tsv.py`), each
before it writes anything: a file eval would refuse is not degraded first, and no refusal leaves a
file behind (a listing of the folder before and after)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clear_rl.cli import main
from clear_rl.demo.shapes_vqa import generate_shapes_vqa, records_to_tsv_frame
from clear_rl.errors import DataError
from clear_rl.eval.runner import EvalConfig, evaluate
from clear_rl.io.tsv import read_tsv, write_tsv
from tests.listing import listing


def _lines(tmp_path: Path) -> list[str]:
    """A small, good benchmark file, as its lines (header first)."""
    path = tmp_path / "good.tsv"
    write_tsv(records_to_tsv_frame(generate_shapes_vqa(4, seed=1, split="test")), path)
    return path.read_text(encoding="utf-8").splitlines()


def _cells(line: str) -> list[str]:
    return line.split("\t")


def _set(line: str, header: list[str], column: str, value: str) -> str:
    cells = _cells(line)
    cells[header.index(column)] = value
    return "\t".join(cells)


# name -> (how the good lines become bad, what the error says)
CASES = {
    "empty answer": (
        lambda h, rows: [rows[0], _set(rows[1], h, "answer", ""), *rows[2:]],
        "empty `answer` in 1 row(s): row index=0 (line 2)",
    ),
    "no answer column": (
        lambda h, rows: [
            "\t".join(c for i, c in enumerate(_cells(r)) if i != h.index("answer")) for r in rows
        ],
        "lacks required column(s) ['answer']; it has",
    ),
    "short row": (
        lambda h, rows: [*rows[:2], "\t".join(_cells(rows[2])[:-2]), *rows[3:]],
        "1 row(s) do not have the header's 10 cells: line 3 (8 cells)",
    ),
    "repeated index": (
        lambda h, rows: [*rows[:3], _set(rows[3], h, "index", "1"), *rows[4:]],
        "`index` repeats in 1 row(s): row index=1 (line 4)",
    ),
    "empty image": (
        lambda h, rows: [rows[0], _set(rows[1], h, "image", ""), *rows[2:]],
        "empty `image` in 1 row(s): row index=0 (line 2)",
    ),
    "empty question": (
        lambda h, rows: [rows[0], rows[1], _set(rows[2], h, "question", " "), *rows[3:]],
        "empty `question` in 1 row(s): row index=1 (line 3)",
    ),
}


@pytest.fixture(params=list(CASES))
def bad(request, tmp_path) -> tuple[Path, str]:
    """A benchmark file broken in one way, alone in its folder, and the error it must give."""
    lines = _lines(tmp_path)
    (tmp_path / "good.tsv").unlink()
    change, message = CASES[request.param]
    header = _cells(lines[0])
    path = tmp_path / "data" / "Bench.tsv"
    path.parent.mkdir()
    path.write_text("\n".join(change(header, [lines[0], *lines[1:]])) + "\n", encoding="utf-8")
    return path, message


def test_degrade_refuses_what_eval_refuses_and_writes_nothing(bad, tmp_path, capsys):
    path, message = bad
    before = listing(tmp_path)
    assert main(["degrade", str(path), "--out", str(tmp_path / "degraded")]) == 2
    assert main(["degrade", str(path)]) == 2  # beside the input, the default
    assert listing(tmp_path) == before
    error = capsys.readouterr().err
    assert f"{path}" in error and message in error, error
    assert "['answer', 'answer']" not in error


def test_prepare_refuses_it_and_writes_nothing(bad, tmp_path, capsys):
    path, message = bad
    before = listing(tmp_path)
    assert main(["prepare", str(path), "--out", str(tmp_path / "prepared")]) == 2
    assert listing(tmp_path) == before
    error = capsys.readouterr().err
    assert f"{path}" in error and message in error, error


def test_eval_refuses_it_before_making_a_level(bad, tmp_path):
    path, message = bad
    before = listing(tmp_path)
    models = {"unused": (None, None)}  # would fail at once if it were run
    with pytest.raises(DataError) as info:
        evaluate(models, [path], tmp_path / "out", EvalConfig(levels=["clean", "high"]))
    assert listing(tmp_path) == before  # no OUT/degraded/Bench_MMD_high.tsv, no manifest
    assert f"{path}" in str(info.value) and message in str(info.value)


def test_a_bad_file_in_the_degraded_folder_is_refused_before_a_missing_level_is_made(tmp_path):
    lines = _lines(tmp_path)
    header = _cells(lines[0])
    folder = tmp_path / "degraded"
    folder.mkdir()
    (folder / "good_MMD_low.tsv").write_text(
        "\n".join([lines[0], _set(lines[1], header, "answer", ""), *lines[2:]]) + "\n", encoding="utf-8"
    )
    before = listing(tmp_path)
    with pytest.raises(DataError, match=r"good_MMD_low\.tsv: empty `answer`"):
        evaluate({"unused": (None, None)}, [tmp_path / "good.tsv"], tmp_path / "out",
                 EvalConfig(levels=["low", "high"]), degraded_dir=folder)  # fmt: skip
    assert listing(tmp_path) == before


def test_quoted_cells_spanning_lines_are_read_as_pandas_reads_them(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('index\timage\tquestion\tanswer\n0\tx\t"two\nlines, a ""quote"""\tA\n1\ty\tq\tB\n')
    frame = read_tsv(path, filled=("answer",))
    assert frame["question"].tolist() == ['two\nlines, a "quote"', "q"]
    assert frame.attrs["lines"] == [2, 4]
