"""A killed `clear-rl degrade` is continued with --resume: its finished files are kept, stale
temporaries are cleared, and the result is byte for byte that of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from degrade_images import natural_images

from clear_rl.cli import main
from clear_rl.io.atomic import atomic_path, remove_stale_temporaries
from clear_rl.io.images import encode_base64_image, tensor_to_pil

ROOT = Path(__file__).resolve().parents[1]
LEVELS = "low,mid,high,0.5"


@pytest.fixture()
def source(tmp_path) -> Path:
    images = natural_images(64, 64, 64, seed=0)
    rows = [f"{k}\t{encode_base64_image(tensor_to_pil(im))}\tq {k}?\tA\n" for k, im in enumerate(images)]
    path = tmp_path / "Bench.tsv"
    path.write_text("index\timage\tquestion\tanswer\n" + "".join(rows), encoding="utf-8")
    return path


def _degrade(source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clear_rl",
        "degrade",
        str(source),
        "--out",
        str(out),
        "--levels",
        LEVELS,
        *extra,
    ]


def _manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "Bench_MMD_manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_bytes_of_an_uninterrupted_one(source, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    whole = tmp_path / "whole"
    subprocess.run(_degrade(source, whole), env=env, check=True, capture_output=True, timeout=300)
    assert _manifest(whole)["complete"] is True

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _degrade(source, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        manifest = _manifest(killed)
        if manifest and manifest["files"]:
            process.send_signal(signal.SIGKILL)  # no clean-up of any kind
            break
        time.sleep(0.02)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    manifest = _manifest(killed)
    assert manifest["complete"] is False and 0 < len(manifest["files"]) < len(manifest["planned"])
    first = killed / manifest["files"][0]["file"]
    kept = first.stat().st_mtime_ns
    stale = killed / ".Bench_MMD_high.tsv.k1ll3d.tmp"  # what a kill during a write leaves
    stale.write_text("half a file")

    done = subprocess.run(
        _degrade(source, killed, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and first.stat().st_mtime_ns == kept  # finished files are not redone
    assert _files(killed) == _files(whole)  # every output and the manifest, byte for byte
    assert _manifest(killed)["complete"] is True


def test_resume_refuses_a_manifest_of_other_options(source, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["degrade", str(source), "--out", str(out), "--levels", "low", "--seed", "1"]) == 0
    before = _files(out)
    assert (
        main(["degrade", str(source), "--out", str(out), "--levels", "low", "--seed", "2", "--resume"]) == 2
    )
    assert "cannot resume: it was written with seed=1, this run has 2" in capsys.readouterr().err
    assert _files(out) == before  # nothing already written is lost
    # Resuming a complete run writes nothing new.
    assert (
        main(["degrade", str(source), "--out", str(out), "--levels", "low", "--seed", "1", "--resume"]) == 0
    )
    assert _files(out) == before


def test_stale_temporaries_are_cleared_and_a_swapped_out_folder_put_back(tmp_path):
    target = tmp_path / "copy"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a").write_text("first")
    (tmp_path / ".copy.abc.tmp").mkdir()  # a folder write killed midway
    os.replace(target, tmp_path / ".copy.old")  # a swap killed between its two renames
    removed = remove_stale_temporaries(target)
    assert [p.name for p in removed] == [".copy.abc.tmp"] and not removed[0].exists()
    assert (target / "a").read_text() == "first"  # the previous complete version is back
