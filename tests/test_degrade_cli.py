"""`clear-rl degrade`: MMD-Bench copies of a TSV or datasets folder, the grid, bad input."""

from __future__ import annotations

import base64
import json

import datasets
import pytest
import torch
from degrade_images import natural_images
from PIL import Image

from clear_rl import __version__
from clear_rl.cli import main
from clear_rl.degrade import CORRUPTIONS, corrupt_pil
from clear_rl.degrade.benchmark import DegradeOptions, iter_degraded_frames
from clear_rl.io.images import decode_image, encode_base64_image, tensor_to_pil
from clear_rl.io.tsv import read_tsv

SIZES = [(64, 80), (72, 72), (64, 80), (60, 90), (72, 72)]


def make_images(count: int = len(SIZES)) -> list[Image.Image]:
    return [tensor_to_pil(natural_images(1, h, w, seed=k)[0]) for k, (h, w) in enumerate(SIZES[:count])]


@pytest.fixture()
def tsv(tmp_path):
    rows = []
    for k, image in enumerate(make_images()):
        rows.append(
            [str(k + 1), encode_base64_image(image), f"question {k}?", "A", f"opt a{k}", "opt b", "cat"]
        )
    rows.append(["9", "1", "same image as row 1?", "B", "x", "y", "cat"])  # MMBench-style reference
    path = tmp_path / "Tiny.tsv"
    header = "index\timage\tquestion\tanswer\tA\tB\tcategory\n"
    path.write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mixed_round_trip_keeps_columns_and_records_reproducible_draws(tsv, tmp_path):
    out = tmp_path / "out"
    assert main(["degrade", str(tsv), "--out", str(out), "--seed", "3", "--batch-size", "2"]) == 0
    source = read_tsv(tsv)
    manifest = json.loads((out / "Tiny_MMD_manifest.json").read_text())
    assert manifest["version"] == __version__ and manifest["mode"] == "mixed" and manifest["seed"] == 3
    assert [f["file"] for f in manifest["files"]] == [
        "Tiny_MMD_low.tsv",
        "Tiny_MMD_mid.tsv",
        "Tiny_MMD_high.tsv",
    ]
    chosen = None
    for entry in manifest["files"]:
        assert entry["source"] == str(tsv) and entry["mode"] == "mixed" and entry["seed"] == 3
        frame = read_tsv(out / entry["file"])
        assert list(frame.columns) == list(source.columns)
        assert frame.drop(columns="image").equals(source.drop(columns="image"))
        assert frame["image"].iloc[5] == "1"  # the reference still points at row 1
        rows = {r["index"]: r for r in entry["rows"]}
        assert rows["9"]["same_image_as"] == "1"
        names = [rows[str(k + 1)]["corruption"] for k in range(5)]
        assert all(n in CORRUPTIONS for n in names)
        chosen = chosen or names
        assert names == chosen, "mixed mode applies one corruption per image at every level"
        for k in range(5):
            row = rows[str(k + 1)]
            assert row["intensity"] == entry["intensity"]
            clean = decode_image(source["image"].iloc[k])
            degraded = decode_image(frame["image"].iloc[k])
            assert degraded.size == clean.size
            # The manifest reproduces the cell exactly: same corruption, intensity, seed, JPEG 95.
            expected = corrupt_pil(clean, row["corruption"], row["intensity"], row["seed"])
            assert frame["image"].iloc[k] == encode_base64_image(expected, 95)
    # Same seed, same files; the level draws are independent of each other.
    again = tmp_path / "again"
    assert main(["degrade", str(tsv), "--out", str(again), "--seed", "3"]) == 0
    assert (again / "Tiny_MMD_high.tsv").read_text() == (out / "Tiny_MMD_high.tsv").read_text()


def test_full_mode_writes_one_file_per_type_and_level(tsv, tmp_path):
    out = tmp_path / "full"
    args = [
        "degrade",
        str(tsv),
        "--out",
        str(out),
        "--mode",
        "full",
        "--types",
        "lens_blur,graffiti",
        "--levels",
        "mid,high",
    ]
    assert main(args) == 0
    names = sorted(p.name for p in out.glob("*.tsv"))
    assert names == [f"Tiny_MMD_{t}_{lv}.tsv" for t in ("graffiti", "lens_blur") for lv in ("high", "mid")]
    manifest = json.loads((out / "Tiny_MMD_manifest.json").read_text())
    blur_high = next(f for f in manifest["files"] if f["file"] == "Tiny_MMD_lens_blur_high.tsv")
    assert blur_high["corruption"] == "lens_blur" and blur_high["intensity"] == 0.9
    assert {r.get("corruption") for r in blur_high["rows"] if "seed" in r} == {"lens_blur"}


def test_datasets_folder_round_trip(tmp_path):
    images = make_images(4)
    source = datasets.Dataset.from_dict(
        {"question": [f"q{k}" for k in range(4)], "image": images, "answer": list("ABCD")},
        features=datasets.Features(
            {
                "question": datasets.Value("string"),
                "image": datasets.Image(),
                "answer": datasets.Value("string"),
            }
        ),
    )
    source.save_to_disk(str(tmp_path / "vqa"))
    out = tmp_path / "out"
    assert main(["degrade", str(tmp_path / "vqa"), "--out", str(out), "--levels", "high", "--seed", "1"]) == 0
    degraded = datasets.load_from_disk(str(out / "vqa_MMD_high"))
    assert degraded.column_names == ["question", "image", "answer"]
    assert degraded["question"] == source["question"] and degraded["answer"] == source["answer"]
    for clean, result in zip(images, degraded["image"]):
        assert result.size == clean.size
        assert not torch.equal(torch.tensor(list(result.getdata())), torch.tensor(list(clean.getdata())))
    manifest = json.loads((out / "vqa_MMD_manifest.json").read_text())
    assert [r["index"] for r in manifest["files"][0]["rows"]] == ["0", "1", "2", "3"]


def test_grid_draws_every_corruption_and_level(tmp_path):
    image_path = tmp_path / "photo.png"
    make_images(1)[0].save(image_path)
    grid = tmp_path / "grid.png"
    assert main(["degrade", "--grid", str(grid), str(image_path)]) == 0
    sheet = Image.open(grid)
    assert sheet.height > 16 * 60 and sheet.width > 3 * 150


def test_missing_input_and_unknown_corruption_are_reported(tsv, tmp_path, capsys):
    assert main(["degrade", str(tmp_path / "nope.tsv")]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main(["degrade", str(tsv), "--out", str(tmp_path), "--mode", "full", "--types", "fog"]) == 2
    err = capsys.readouterr().err
    assert "unknown corruption 'fog'" in err and "lens_blur" in err and "watermark_damage" in err


def test_undecodable_row_names_index_and_file_and_keeps_previous_output(tsv, tmp_path, capsys):
    broken = tmp_path / "Broken.tsv"
    lines = tsv.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[1] = base64.b64encode(b"this is not an image at all, just some bytes" * 3).decode()
    lines[3] = "\t".join(fields)
    broken.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    previous = out / "Broken_MMD_high.tsv"
    previous.write_text("previous complete file\n")
    assert main(["degrade", str(broken), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "index=3" in err and str(broken) in err and "undecodable" in err
    assert previous.read_text() == "previous complete file\n"
    assert sorted(p.name for p in out.iterdir()) == ["Broken_MMD_high.tsv"]


def test_datasets_folder_without_the_image_column(tmp_path, capsys):
    datasets.Dataset.from_dict({"question": ["q"], "picture": [None]}).save_to_disk(str(tmp_path / "ds"))
    assert main(["degrade", str(tmp_path / "ds"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no image column 'image'" in err and "picture" in err


def test_in_memory_copies_for_on_the_fly_evaluation(tsv):
    frame = read_tsv(tsv)
    options = DegradeOptions(levels=("high", 0.6), seed=7, progress=False)
    produced = list(iter_degraded_frames(frame, tsv, options))
    assert [spec.name for spec, _, _ in produced] == ["Tiny_MMD_high", "Tiny_MMD_0.6"]
    for spec, degraded, rows in produced:
        assert degraded.shape == frame.shape and degraded["question"].equals(frame["question"])
        assert len(rows) == len(frame) and all(
            r.get("intensity", spec.intensity) == spec.intensity for r in rows
        )
    again = list(iter_degraded_frames(frame, tsv, options))
    assert all(a[1].equals(b[1]) for a, b in zip(produced, again))


def test_backend_choice_is_named_in_the_manifest_and_a_resume_does_not_mix_backends(tsv, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["degrade", str(tsv), "--out", str(out), "--levels", "high", "--workers", "1"]
    assert main([*args, "--backend", "torch"]) == 0
    manifest = json.loads((out / "Tiny_MMD_manifest.json").read_text())
    assert manifest["backend"] == "torch" and manifest["complete"]
    assert main([*args, "--resume"]) == 2  # auto is OpenCV on this CPU: a different identity
    assert "backend='torch'" in capsys.readouterr().err
    assert main([*args]) == 0
    assert json.loads((out / "Tiny_MMD_manifest.json").read_text())["backend"] == "opencv"
    with pytest.raises(Exception, match="unknown corruption backend 'gpu'"):
        DegradeOptions(backend="gpu")
