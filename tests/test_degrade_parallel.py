"""`degrade` and `prepare` in worker processes: the same bytes as one process, in order, with
a worker's error reported as one process reports it and nothing half-written."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import pytest
from degrade_images import natural_images

from clear_rl import parallel
from clear_rl.cli import main
from clear_rl.data.prepare import prepare_dataset
from clear_rl.data.samples import PrepareConfig
from clear_rl.degrade import benchmark
from clear_rl.degrade.benchmark import DegradeOptions, degrade_dataset, degrade_tsv
from clear_rl.demo.shapes_vqa import ShapesVQAConfig, build_shapes_vqa
from clear_rl.errors import ClearRLError
from clear_rl.io.images import encode_base64_image, tensor_to_pil
from clear_rl.parallel import ordered_map

SIZES = [(40, 40), (32, 48)]  # two sizes: batches group same-size images
COUNT = 30


def _images(count: int = COUNT):
    return [tensor_to_pil(natural_images(1, *SIZES[k % 2], seed=k)[0]) for k in range(count)]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def small_chunks(monkeypatch):
    """Chunks of 7 rows, so each output is several tasks and their order is exercised."""
    monkeypatch.setattr(benchmark, "DECODE_CHUNK", 7)


@pytest.fixture()
def tsv(tmp_path) -> Path:
    rows = [f"{k}\t{encode_base64_image(image)}\tq {k}?\tA\n" for k, image in enumerate(_images())]
    rows.insert(5, "100\t3\tsame image as row 3?\tB\n")  # a reference row keeps its cell
    path = tmp_path / "Small.tsv"
    path.write_text("index\timage\tquestion\tanswer\n" + "".join(rows), encoding="utf-8")
    return path


def test_workers_follow_the_request_the_tasks_and_the_work(monkeypatch):
    made = []

    class Pool(ThreadPoolExecutor):  # records the pools ordered_map makes, starts no process
        def __init__(self, workers, mp_context, initializer, initargs):
            made.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(parallel, "available_cores", lambda: 4)

    def run(count: int, workers: int) -> list:
        return list(ordered_map(int, [(k, str(k)) for k in range(count)], workers, count))

    assert run(5, 0) == [(k, k) for k in range(5)] and made == []  # automatic: too little work
    assert run(1, 3) == [(0, 0)] and made == []  # one task runs here
    assert run(6, 3) == [(k, k) for k in range(6)] and made == [3]  # asked for: used
    assert run(2, 3) == [(0, 0), (1, 1)] and made == [3, 2]  # never more workers than tasks
    monkeypatch.setattr(parallel, "AUTO_SECONDS", -1.0)  # any work is worth the workers now
    assert run(7, 0) == [(k, k) for k in range(7)] and made == [3, 2, 4]  # first here, then one per core
    with pytest.raises(ClearRLError, match="workers must be 0"):
        run(1, -1)


def test_results_come_in_order_and_a_failing_job_after_the_ones_before_it():
    def jobs():
        yield from ((k, str(k)) for k in range(6))
        raise ClearRLError("job 6 could not be made")

    for workers in (1, 2):
        seen = []
        with pytest.raises(ClearRLError, match="job 6 could not be made"):
            for context, result in ordered_map(int, jobs(), workers, tasks=7):
                seen.append((context, result))
        assert seen == [(k, k) for k in range(6)], workers


@pytest.mark.slow
def test_tsv_with_two_workers_is_byte_for_byte_one_process(tsv, tmp_path, small_chunks):
    outputs = {}
    for workers in (1, 2):
        options = DegradeOptions(levels=("low", "mid", "high"), seed=4, progress=False, workers=workers)
        result = degrade_tsv(tsv, tmp_path / f"w{workers}", options)
        assert len(result.outputs) == 3
        outputs[workers] = _tree(tmp_path / f"w{workers}")
    names = {f"Small_MMD_{lv}.tsv" for lv in ("low", "mid", "high")} | {"Small_MMD_manifest.json"}
    assert set(outputs[1]) == names
    assert outputs[2] == outputs[1]  # every output and the manifest
    assert "workers" not in json.loads(outputs[1]["Small_MMD_manifest.json"])  # resumable with any count


@pytest.mark.slow
def test_datasets_folder_with_two_workers_is_byte_for_byte_one_process(tmp_path, small_chunks):
    images = _images(24)
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
    splits = {
        "train": datasets.Dataset.from_dict(
            {"image": [None if k == 4 else im for k, im in enumerate(images[:16])], "question": ["q"] * 16},
            features=features,
        ),
        "test": datasets.Dataset.from_dict({"image": images[16:], "question": ["t"] * 8}, features=features),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "vqa"))
    for workers in (1, 2):
        options = DegradeOptions(levels=("low", "high"), seed=2, progress=False, workers=workers)
        degrade_dataset(tmp_path / "vqa", tmp_path / f"w{workers}", options)
    one, two = _tree(tmp_path / "w1"), _tree(tmp_path / "w2")
    assert any(name.endswith(".arrow") for name in one) and two == one
    assert datasets.load_from_disk(str(tmp_path / "w2" / "vqa_MMD_high"))["train"][4]["image"] is None


@pytest.mark.slow
def test_broken_cell_in_a_worker_names_the_row_and_writes_nothing(tsv, tmp_path, capsys, small_chunks):
    lines = tsv.read_text().splitlines()
    fields = lines[20].split("\t")  # index 18: the third chunk of the first output
    fields[1] = base64.b64encode(b"not an image, only some bytes" * 4).decode()
    lines[20] = "\t".join(fields)
    broken = tmp_path / "Broken.tsv"
    broken.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["degrade", str(broken), "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: row index=18: undecodable" in err
    assert not out.exists() or not list(out.iterdir())  # no output, manifest or temporary


@pytest.mark.slow
def test_prepare_with_two_workers_equals_one_process(tmp_path):
    source = build_shapes_vqa(
        tmp_path / "shapes", num_train=20, num_test=6, seed=0, config=ShapesVQAConfig(image_size=32)
    )
    saved = {}
    for workers in (1, 2):
        config = PrepareConfig(levels=("clean", "low", "high"), chunk_size=6, workers=workers)
        out = tmp_path / f"w{workers}"
        prepare_dataset(source.dataset_dir, out, config)
        saved[workers] = datasets.load_from_disk(str(out)), (out / "clear_rl_prepare.json").read_text()
    (one, one_manifest), (two, two_manifest) = saved[1], saved[2]
    assert list(two) == list(one) == ["train", "test"]
    for split in one:
        assert two[split].data.table.equals(one[split].data.table), split  # every column, image bytes too
    assert two_manifest == one_manifest and "workers" not in json.loads(one_manifest)["config"]


def test_negative_workers_are_an_error(tsv, tmp_path, capsys):
    with pytest.raises(
        ClearRLError, match=r"workers must be 0 \(automatic.*\) or a number of processes >= 1, got -1"
    ):
        DegradeOptions(workers=-1)
    with pytest.raises(ClearRLError, match="workers must be 0"):
        PrepareConfig(workers=-2)
    assert main(["degrade", str(tsv), "--out", str(tmp_path / "o"), "--workers", "-1"]) == 2
    assert "workers must be 0 (automatic" in capsys.readouterr().err
    assert main(["prepare", str(tsv), "--out", str(tmp_path / "p"), "--workers", "-1"]) == 2
    assert "workers must be 0 (automatic" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_no_worker_outlives_a_killed_or_interrupted_degrade(tmp_path, signal_name):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    cells = [encode_base64_image(image) for image in _images(60)]
    big = tmp_path / "Big.tsv"  # 1200 rows, every corruption at every level: minutes of work
    rows = [f"{k}\t{cells[k % len(cells)]}\tq {k}?\tA\n" for k in range(1200)]
    big.write_text("index\timage\tquestion\tanswer\n" + "".join(rows), encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "clear_rl", "degrade", str(big), "--out", str(tmp_path / "out"),
               "--workers", "2", "--mode", "full", "--backend", "torch"]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            workers = [
                c
                for c in psutil.Process(process.pid).children(recursive=True)
                if "spawn" in " ".join(c.cmdline())
            ]
        assert len(workers) == 2, "the workers never started"
        time.sleep(1.0)  # they are at work on a chunk
        process.send_signal(getattr(signal, signal_name))
        process.wait(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=1.5)
        assert alive == [], f"{len(alive)} worker(s) still running 1.5 s after the command ended"
    finally:
        if process.poll() is None:
            process.kill()
        for child in psutil.Process().children(recursive=True):
            if child.pid != process.pid and "spawn" in " ".join(child.cmdline()):
                child.kill()
