"""The demo's bookkeeping, without running it: targets, the seeds' summary, Spearman, `--reuse`."""

import json
import math

import pandas as pd
import pytest

from clear_rl.demo.seeds import SEED_FOLDER, parse_seeds, write_seeds_summary
from clear_rl.demo.steps import StepLedger, fingerprint
from clear_rl.demo.summary import Measures, spearman, targets
from clear_rl.errors import ClearRLError

LEVELS = ["clean", "low", "mid", "high"]


def measures(
    base_high: float,
    rl_high: float,
    rl_trigger=(0.0, 2.0, 5.0, 30.0),
    gains=(40, 10, -5),
    triggers=(90, 30, 0),
):
    """Measures of a made-up run: Base and CLEAR-RL at High as given, three corruptions at High."""
    accuracy = pd.DataFrame(
        [
            [100, 98, 90, base_high],
            [99, 97, 90, 70],
            [100, 98, 92, rl_high],
            [99, 97, 89, 60],
            [95, 94, 88, 68],
            [90, None, None, None],
        ],
        index=[
            "Base",
            "CLEAR-SFT",
            "CLEAR-RL",
            "CLEAR-SFT [never]",
            "CLEAR-SFT [always]",
            "CLEAR-SFT [oracle]",
        ],
        columns=LEVELS,
        dtype=float,
    )
    trigger = pd.DataFrame(
        [[0, 0, 0, 0], [5, 6, 8, 20], list(rl_trigger)],
        index=["Base", "CLEAR-SFT", "CLEAR-RL"],
        columns=LEVELS,
        dtype=float,
    )
    gain = pd.DataFrame(
        {"never": [99, 60], "always": [95, 68], "gain": [-4, 8]}, index=["clean", "high"], dtype=float
    )
    per_corruption = pd.DataFrame(
        {
            "rows": [10, 10, 10],
            "never": [0, 50, 90],
            "always": list(gains),
            "gain": list(gains),
            "trigger": list(triggers),
        },
        index=["dark_illumination", "scan_lines", "gaussian_noise"],
        dtype=float,
    )
    return Measures(
        accuracy,
        trigger,
        gain,
        per_corruption,
        {"psnr_restored": 20.0, "psnr_degraded": 18.0, "colour_restored": 70.0, "colour_degraded": 60.0},
    )


def by_claim(checks, text):
    (target,) = [t for t in checks if text in t.claim]
    return target


def test_spearman_is_the_rank_correlation_and_undefined_when_a_side_is_constant():
    a = pd.Series([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -(a**3)) == pytest.approx(-1.0)
    # Ties take average ranks: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4).
    expected = pd.Series([1.5, 1.5, 3, 4]).corr(pd.Series([1.0, 2, 3, 4]))
    assert spearman(pd.Series([5.0, 5, 7, 9]), a) == pytest.approx(expected)
    assert math.isnan(spearman(a, pd.Series([3.0, 3, 3, 3])))


def test_targets_of_one_run_read_the_measures():
    checks = targets(measures(base_high=60, rl_high=66))
    assert by_claim(checks, "CLEAR-RL High >= Base High").met is True
    assert by_claim(checks, "clean accuracy").met is True
    assert by_claim(checks, "trigger rate: clean").met is True  # 0 <= 10 and 2 < 5 < 30
    assert by_claim(checks, "Restoration gain at High").met is True  # 68 - 60 = 8 >= 5
    assert by_claim(checks, "Spearman").met is True  # gains and triggers in the same order
    drop = by_claim(checks, "Drop(CLEAR-RL)")  # 100 - 66 = 34 vs 0.73 x 40 = 29.2
    assert drop.met is False and "34.0 vs 0.73 x 40.0" in drop.measured
    assert by_claim(checks, "Stage 1 keeps").diagnostic
    missing = measures(60, 66)
    missing.per_corruption = missing.per_corruption.drop(columns="trigger")
    assert by_claim(targets(missing), "Spearman").met is None


def _write_seed(root, seed, m):
    folder = root / SEED_FOLDER.format(seed=seed)
    folder.mkdir(parents=True)
    record = {
        **m.to_json(),
        "timings_s": {"total": 600.0 + seed},
        "cpu_s": {"total": 900.0 + seed},
        "reused": [],
    }
    (folder / "SUMMARY.json").write_text(json.dumps(record))


def test_seeds_summary_holds_mean_min_max_and_judges_the_mean_and_every_seeds_sign(tmp_path):
    _write_seed(tmp_path, 0, measures(base_high=60, rl_high=70, triggers=(90, 30, 0)))
    _write_seed(tmp_path, 1, measures(base_high=60, rl_high=58, triggers=(50, 70, 10)))
    text = write_seeds_summary(tmp_path, [0, 1]).read_text()
    record = json.loads((tmp_path / "SUMMARY.json").read_text())
    assert record["mean"]["accuracy"]["CLEAR-RL"]["high"] == pytest.approx(64.0)
    assert (
        record["min"]["accuracy"]["CLEAR-RL"]["high"] == 58.0
        and record["max"]["accuracy"]["CLEAR-RL"]["high"] == 70.0
    )
    assert (
        "| CLEAR-RL | 100.0 (100.0–100.0) | 98.0 (98.0–98.0) | 92.0 (92.0–92.0) | 64.0 (58.0–70.0) |" in text
    )
    assert record["clear_rl_minus_base"]["seed 1"]["high"] == pytest.approx(-2.0)
    checks = {t["claim"]: t for t in record["targets"]}
    (high,) = [t for claim, t in checks.items() if "CLEAR-RL High >= Base High" in claim]
    # The mean is 4 points above Base, but seed 1 is below it.
    assert high["met"] is False and "per seed +10.0, -2.0" in high["measured"]
    # Spearman on the mean table: triggers (70, 50, 5) against gains (40, 10, -5).
    (adaptive,) = [t for claim, t in checks.items() if "Spearman" in claim]
    assert adaptive["met"] is True and "Spearman 1.00" in adaptive["measured"]
    assert record["spearman_per_seed"]["seed 1"] == pytest.approx(0.5)  # ranks (3, 2, 1) vs (2, 3, 1)
    assert "- seed 0: 600 / 900" in text and "- seed 1: 601 / 901" in text
    assert "Machine:" in text


def test_seeds_summary_names_a_missing_seed(tmp_path):
    _write_seed(tmp_path, 0, measures(60, 70))
    with pytest.raises(ClearRLError, match="seed_1"):
        write_seeds_summary(tmp_path, [0, 1])


@pytest.mark.parametrize("text", ["", "0,x", "1,1"])
def test_parse_seeds_refuses_bad_lists(text):
    with pytest.raises(ClearRLError, match="--seeds"):
        parse_seeds(text)
    assert parse_seeds("2, 0,1") == [2, 0, 1]


def test_reuse_runs_a_step_again_only_when_its_fingerprint_or_outputs_change(tmp_path):
    calls = []
    output = tmp_path / "model"

    def make(tag):
        calls.append(tag)
        output.mkdir(exist_ok=True)

    first = fingerprint({"steps": 10}, ["parent-a"])
    assert first == fingerprint({"steps": 10}, ["parent-a"]) != fingerprint({"steps": 10}, ["parent-b"])
    StepLedger(tmp_path, reuse=True).run("sft", first, [output], make, "run 1")
    StepLedger(tmp_path, reuse=True).run("sft", first, [output], make, "same settings")  # reused
    StepLedger(tmp_path, reuse=True).run(
        "sft", fingerprint({"steps": 20}, ["parent-a"]), [output], make, "changed"
    )
    StepLedger(tmp_path, reuse=False).run(
        "sft", fingerprint({"steps": 20}, ["parent-a"]), [output], make, "no reuse"
    )
    output.rmdir()
    StepLedger(tmp_path, reuse=True).run(
        "sft", fingerprint({"steps": 20}, ["parent-a"]), [output], make, "gone"
    )
    assert calls == ["run 1", "changed", "no reuse", "gone"]

    def fails():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        StepLedger(tmp_path, reuse=True).run("sft", fingerprint({"steps": 30}, []), [output], fails)
    assert "sft" not in json.loads((tmp_path / "steps.json").read_text())  # a failed step is not finished
