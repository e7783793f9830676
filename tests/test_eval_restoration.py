"""`clear-rl eval` with several restore policies on the tiny model: per-row restoration quality,
the gain table, the gallery, side-by-side runs, and nothing written beside the inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from clear_rl.cli import main
from clear_rl.degrade import CORRUPTIONS
from clear_rl.demo.shapes_vqa import generate_shapes_vqa, records_to_tsv_frame
from clear_rl.errors import ClearRLError
from clear_rl.eval.reference import CleanReference, row_corruptions
from clear_rl.eval.runner import EvalConfig, evaluate, plan_runs
from clear_rl.io.tsv import read_tsv, write_tsv
from clear_rl.models.io import save_unified

SMALL = {"batch_size": 4, "max_new_tokens": 4, "restoration_steps": 2}


def _tsv(path: Path, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(records_to_tsv_frame(generate_shapes_vqa(n, seed=1, split="test")), path)
    return path


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_runs_are_labelled_by_policy_and_readback():
    config = EvalConfig(restore="never,always", readback=["bridge", "reencode"])
    labels = [run.label for run in plan_runs(["A"], config)]
    assert labels == ["A [never]", "A [always, bridge]", "A [always, reencode]"]  # never reads nothing back
    assert [run.label for run in plan_runs(["A", "B"], EvalConfig())] == ["A", "B"]
    with pytest.raises(ClearRLError, match="restore must be among"):
        plan_runs(["A"], EvalConfig(restore="sometimes"))


def test_clean_reference_and_corruption_of_each_row(tmp_path):
    from clear_rl.degrade.benchmark import DegradeOptions, degrade_tsv

    tsv = _tsv(tmp_path / "data" / "Shapes.tsv")
    (high,) = degrade_tsv(tsv, tmp_path / "deg", DegradeOptions(levels=["high"], progress=False)).outputs
    reference = CleanReference(tsv)
    degraded = read_tsv(high)
    assert len(reference) == len(degraded) and all(i in reference for i in degraded["index"])
    clean = read_tsv(tsv).set_index("index")["image"]
    first = degraded["index"][0]
    assert reference.image(first).tobytes() == CleanReference(tsv).image(first).tobytes()
    assert degraded["image"][0] != clean[first]  # the copy is corrupted, the reference is not
    names = row_corruptions(high, list(degraded["index"]))
    assert all(name in CORRUPTIONS or name == "none" for name in names)
    assert row_corruptions(tsv, ["0"]) == ["none"]


def test_never_and_always_side_by_side_with_quality_gain_and_gallery(tiny, tmp_path):
    data = tmp_path / "data"
    tsv = _tsv(data / "ShapesVQA_test.tsv")
    before = _snapshot(data)
    out = tmp_path / "out"
    config = EvalConfig(levels=["clean", "high"], restore="never,always", gallery=1, **SMALL)
    files = evaluate({"tiny": tiny}, [tsv], out, config)
    assert _snapshot(data) == before  # the input folder is only read
    scores = pd.read_csv(files["scores.csv"])
    assert sorted(scores["model"].unique()) == ["tiny [always]", "tiny [never]"]
    assert scores.groupby("model")["trigger_rate"].first().to_dict() == {
        "tiny [always]": 100.0,
        "tiny [never]": 0.0,
    }
    assert set(scores["restore"]) == {"never", "always"} and set(scores["base_model"]) == {"tiny"}

    # Every restoring row has its PSNRs and cosines; the never rows have none.
    records = [
        json.loads(line)
        for line in (out / "predictions" / "tiny_always" / "ShapesVQA_test_MMD_high.jsonl").open()
    ]
    assert len(records) == 4 and all(r["restored"] for r in records)
    for record in records:
        assert 0 < record["psnr_restored"] <= 100 and 0 < record["psnr_degraded"] <= 100
        assert -1 <= record["latent_cos_restored"] <= 1 and -1 <= record["latent_cos_degraded"] <= 1
        assert record["corruption"] in CORRUPTIONS or record["corruption"] == "none"
    never = [
        json.loads(line)
        for line in (out / "predictions" / "tiny_never" / "ShapesVQA_test_MMD_high.jsonl").open()
    ]
    assert not any("psnr_restored" in r for r in never)
    clean_rows = [
        json.loads(line) for line in (out / "predictions" / "tiny_always" / "ShapesVQA_test.jsonl").open()
    ]
    # On the clean file the input is the clean image: no degraded baseline, the restoration still measured.
    assert all("psnr_restored" in r and "psnr_degraded" not in r for r in clean_rows)

    gain = pd.read_csv(files["restoration_gain.csv"])
    assert (
        set(gain["level"]) == {"clean", "high"} and (gain.loc[gain["corruption"] == "all", "rows"] == 4).all()
    )
    hits = {
        label: pd.DataFrame(
            [json.loads(x) for x in (out / "predictions" / label / "ShapesVQA_test_MMD_high.jsonl").open()]
        )["hit"].mean()
        for label in ("tiny_never", "tiny_always")
    }
    pooled = gain[(gain["level"] == "high") & (gain["corruption"] == "all")].iloc[0]
    assert pooled["gain"] == pytest.approx(100 * (hits["tiny_always"] - hits["tiny_never"]))
    quality = pd.read_csv(files["restoration_quality.csv"])
    assert set(quality["model"]) == {"tiny [always]"}
    report = files["report.md"].read_text()
    assert "tiny [always]" in report and "## Restoration gain" in report

    # The gallery: one restored example per corruption from the saved PNGs, under the output folder.
    saved = [r["gallery"] for r in records if r.get("gallery")]
    assert saved and all((out / f"{stem}_restored.png").exists() for stem in saved)
    assert not any(k.startswith("gallery_tiny_never") for k in files)  # `never` saves no restorations
    with Image.open(files["gallery_tiny_always.png"]) as png:
        assert png.format == "PNG"
    with Image.open(files["restoration.png"]) as png:
        assert png.format == "PNG"


def test_cli_accepts_several_policies(tiny, tmp_path, capsys):
    model, processor = tiny
    save_unified(model, processor, tmp_path / "base")
    tsv = _tsv(tmp_path / "data" / "ShapesVQA_test.tsv", n=2)
    code = main(
        ["eval", "--model", f"Base={tmp_path / 'base'}", "--data", str(tsv), "--levels", "clean",
         "--restore", "never,always", "--readback", "bridge,reencode", "--degraded-view", "drop",
         "--max-new-tokens", "3", "--steps", "2", "--gallery", "0",
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert all(f"Base [{run}]" in printed for run in ("never", "always, bridge", "always, reencode"))
    assert not (tmp_path / "out" / "restorations").exists() or not any(
        p.is_file() for p in (tmp_path / "out" / "restorations").rglob("*")
    )
    assert sorted(os.listdir(tmp_path / "data")) == ["ShapesVQA_test.tsv"]


def test_readbacks_and_oracle_side_by_side(tiny, tmp_path):
    tsv = _tsv(tmp_path / "data" / "ShapesVQA_test.tsv", n=2)
    config = EvalConfig(
        levels=["clean", "high"],
        restore="never,always,oracle",
        readback="bridge,reencode",
        gallery=0,
        **SMALL,
    )
    files = evaluate({"tiny": tiny}, [tsv], tmp_path / "out", config)
    scores = pd.read_csv(files["scores.csv"])
    runs = scores.groupby("model")["level"].apply(sorted).to_dict()
    assert runs == {
        "tiny [never]": ["clean", "high"],
        "tiny [always, bridge]": ["clean", "high"],
        "tiny [always, reencode]": ["clean", "high"],
        "tiny [oracle, bridge]": ["clean"],  # the image is hidden: every level would answer alike
        "tiny [oracle, reencode]": ["clean"],
    }
    readback = pd.read_csv(files["readback.csv"])
    assert set(zip(readback["restore"], readback["readback"])) == {
        ("always", "bridge"), ("always", "reencode"), ("oracle", "bridge"), ("oracle", "reencode"),
    }  # fmt: skip
    assert (readback["latency_s"] > 0).all()
    fidelity = pd.read_csv(files["bridge_fidelity.csv"])
    never_clean = scores[(scores["model"] == "tiny [never]") & (scores["level"] == "clean")]["score"].item()
    assert fidelity["level"].tolist() == ["clean", "clean"] and (fidelity["clean"] == never_clean).all()
    oracle = scores[scores["model"] == "tiny [oracle, bridge]"]
    assert fidelity.loc[fidelity["readback"] == "bridge", "oracle"].item() == oracle["score"].item()
    assert (oracle["trigger_rate"] == 100.0).all()
    report = files["report.md"].read_text()
    assert "## Bridge fidelity" in report and "## Readback" in report


def test_reused_copies_keep_their_rows_corruptions_when_more_levels_are_made(tmp_path):
    from clear_rl.eval.files import make_levels

    tsv = _tsv(tmp_path / "data" / "Shapes.tsv")
    cache = tmp_path / "cache"
    high = make_levels(tsv, ["high"], cache, seed=0, reuse=True)["high"]
    first = row_corruptions(high, list(read_tsv(high)["index"]))
    files = make_levels(tsv, ["high", "mid"], cache, seed=0, reuse=True)  # makes mid, reuses high
    assert row_corruptions(files["high"], list(read_tsv(high)["index"])) == first
    assert "unknown" not in first + row_corruptions(files["mid"], list(read_tsv(files["mid"])["index"]))
