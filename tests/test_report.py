"""Report tables on a hand-made result set equal hand-computed numbers; the files are written."""

import json

import pandas as pd
import pytest
from PIL import Image

from clear_rl.errors import DataError
from clear_rl.eval.corruption_report import corruption_drop, corruption_table
from clear_rl.eval.report import (
    benchmark_table,
    levels_table,
    per_level,
    robustness,
    robustness_table,
    score_results,
    trigger_table,
    write_report,
)


def results_file(hits, restored, latency=1.0, tokens=100):
    n = len(hits)
    return pd.DataFrame(
        {
            "index": list(range(1, n + 1)),
            "question": ["q"] * n,
            "answer": ["A"] * n,
            "image": ["aGVsbG8="] * n,  # base64 image cells are not copied into predictions files
            "prediction": ["<answer>A</answer>" if h else "<answer>B</answer>" for h in hits],
            "hit": hits,
            "restored": restored,
            "latency_s": [latency] * n,
            "num_tokens": [tokens] * n,
        }
    )


NO = [False] * 4
RESULTS = {
    "Base": {
        "MMStar": results_file([1, 1, 1, 0], NO),  # 75
        "MMStar_MMD_high": results_file([1, 0, 0, 1], NO),  # 50
        "MMVP": results_file([1, 1, 1, 1], NO),  # 2/2 pairs: 100
        "MMVP_MMD_high": results_file([1, 0, 1, 1], NO),  # 1/2 pairs: 50
        "R-Bench-Dis": results_file([1, 1, 0, 0], NO),  # 50
    },
    "CLEAR-RL": {
        "MMStar": results_file([1, 1, 1, 1], NO, latency=1.0),  # 100, trigger 0
        "MMStar_MMD_low": results_file([1, 1, 1, 0], [True, False, False, False], latency=2.0),  # 75, 25%
        "MMStar_MMD_mid": results_file([1, 1, 0, 0], [True, True, False, False], latency=3.0),  # 50, 50%
        "MMStar_MMD_high": results_file([1, 1, 1, 0], [True, True, True, False], latency=4.0),  # 75, 75%
        "MMVP": results_file([1, 1, 1, 1], NO, latency=1.0),  # 100
        "MMVP_MMD_high": results_file(
            [1, 1, 0, 1], [True] * 4, latency=6.0, tokens=200
        ),  # 1/2 pairs: 50, 100%
        "R-Bench-Dis": results_file([1, 1, 1, 0], [True, True, False, False], latency=2.0),  # 75, 50%
    },
}


@pytest.fixture(scope="module")
def scores():
    return score_results(RESULTS, protocol="vlmevalkit")  # MMVP by pairs


def test_hard_table_in_the_papers_layout(scores):
    table = benchmark_table(scores, "high").splitlines()
    assert table[0] == "| Method | MMVP | MMStar | R-Bench-Dis | AVG |"
    assert table[2] == "| Base | 50.00 | 50.00 | 50.00 | 50.00 |"
    assert table[3] == "| CLEAR-RL | 50.00 | 75.00 | 75.00 | 66.67 |"
    clean = benchmark_table(scores, "clean").splitlines()
    assert clean[0] == "| Method | MMVP | MMStar | AVG |"  # R-Bench-Dis has no clean version
    assert clean[2] == "| Base | 100.00 | 75.00 | 87.50 |"


def test_levels_table_for_one_model(scores):
    table = levels_table(scores, "CLEAR-RL").splitlines()
    assert table[2:] == [
        "| Clean | 100.00 | 100.00 | – | 100.00 |",
        "| Low | – | 75.00 | – | 75.00 |",
        "| Mid | – | 50.00 | – | 50.00 |",
        "| High | 50.00 | 75.00 | 75.00 | 66.67 |",
    ]


def test_robustness_drop_uses_benchmarks_present_at_both_levels(scores):
    table = robustness(scores).set_index("model")
    # Base: clean (75 + 100) / 2 = 87.5, hard (50 + 50) / 2 = 50; R-Bench-Dis is left out of both.
    assert table.loc["Base", ["clean", "hard", "drop"]].tolist() == [87.5, 50.0, 37.5]
    assert table.loc["CLEAR-RL", ["clean", "hard", "drop"]].tolist() == [100.0, 62.5, 37.5]
    assert table.loc["CLEAR-RL", "drop_per_benchmark"] == {"MMStar": 25.0, "MMVP": 50.0}
    assert robustness_table(scores).splitlines()[2:] == [
        "| Base | 87.50 | 50.00 | 37.50 |",
        "| CLEAR-RL | 100.00 | 62.50 | 37.50 |",
    ]


def test_trigger_rate_latency_and_tokens_per_level(scores):
    rows = per_level(scores)
    mine = rows[rows["model"] == "CLEAR-RL"].set_index("level")
    assert list(mine.index) == ["clean", "low", "mid", "high"]
    # High: MMStar 75 %, MMVP 100 %, R-Bench-Dis 50 % -> 75 %; latency (4 + 6 + 2) / 3; tokens (100 + 200 + 100) / 3.
    assert mine.loc["high", "trigger_rate"] == pytest.approx(75.0)
    assert mine.loc["high", "latency_s"] == pytest.approx(4.0)
    assert mine.loc["high", "num_tokens"] == pytest.approx(400 / 3)
    assert mine["trigger_rate"].tolist()[:3] == [0.0, 25.0, 50.0]
    assert "| CLEAR-RL | Mid | 50.0 | 3.000 | 100.0 |" in trigger_table(scores).splitlines()


def test_write_report_produces_every_file(tmp_path):
    files = write_report(RESULTS, tmp_path / "report", title="Demo", protocol="vlmevalkit")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        [
            "report.md",
            "scores.csv",
            "scores.json",
            "predictions.csv",
            "predictions.json",
            "trigger_latency.png",
        ]
    )
    report = files["report.md"].read_text()
    assert report.startswith("# Demo") and "| CLEAR-RL | 50.00 | 75.00 | 75.00 | 66.67 |" in report
    assert "Protocol: `vlmevalkit`" in report
    rows = json.loads(files["predictions.json"].read_text())
    assert len(rows) == sum(len(f) for datasets in RESULTS.values() for f in datasets.values())
    assert {"model", "dataset", "benchmark", "level", "prediction", "hit"} <= set(
        rows[0]
    ) and "image" not in rows[0]
    predictions = pd.read_csv(files["predictions.csv"])
    assert len(predictions) == len(rows) and set(predictions["level"]) == {"clean", "low", "mid", "high"}
    summary = json.loads(files["scores.json"].read_text())
    assert (
        summary["protocol"] == "vlmevalkit"
        and len(summary["scores"]) == 12
        and summary["robustness"][0]["drop"] == 37.5
    )
    assert len(pd.read_csv(files["scores.csv"])) == 12
    with Image.open(files["trigger_latency.png"]) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_two_files_for_one_benchmark_and_level_are_an_error():
    clash = {
        "Base": {
            "MMStar_MMD_high": results_file([1], [False]),
            "MMStar_LOW_LEVEL_HIGH": results_file([0], [False]),
        }
    }
    with pytest.raises(DataError, match="same model, benchmark and level"):
        score_results(clash)
    with pytest.raises(DataError, match="no results to report"):
        score_results({"Base": {}})


def test_per_corruption_files_get_their_own_table_and_stay_out_of_the_level_tables():
    results = {
        "CLEAR-RL": {
            **RESULTS["CLEAR-RL"],
            "MMStar_graffiti": results_file([0, 0, 0, 1], NO),  # 25
            "MMStar_gaussian_noise": results_file([1, 1, 0, 0], NO),  # 50
            "MMVP_gaussian_noise": results_file([1, 1, 1, 1], NO),  # 100
        }
    }
    scores = score_results(results, protocol="vlmevalkit")
    assert benchmark_table(scores, "high").splitlines()[2] == "| CLEAR-RL | 50.00 | 75.00 | 75.00 | 66.67 |"
    assert corruption_table(scores, "CLEAR-RL").splitlines() == [
        "| Corruption | MMVP | MMStar | AVG |",
        "|---|---|---|---|",
        "| gaussian_noise | 100.00 | 50.00 | 75.00 |",
        "| graffiti | – | 25.00 | 25.00 |",
    ]
    assert per_level(scores).loc[lambda t: t["level"] == "high", "trigger_rate"].item() == pytest.approx(75.0)


def test_the_paper_protocol_scores_mmvp_by_question_and_says_so(tmp_path):
    scores = score_results(RESULTS)  # the default: the paper's protocol
    # Base's High MMVP has 3 of 4 questions right: 75 by question (50 by pairs, as above).
    assert benchmark_table(scores, "high").splitlines()[2] == "| Base | 75.00 | 50.00 | 50.00 | 58.33 |"
    report = write_report(RESULTS, tmp_path)["report.md"].read_text()
    assert "Protocol: `paper`: CLEAR's copy of VLMEvalKit" in report


def test_mm_vet_without_a_judge_is_reported_as_not_scored(tmp_path):
    mmvet = results_file([1, 0, 1, 1], NO).assign(answer=["x"] * 4, graded_by=["rules"] * 4)
    results = {"Base": {**RESULTS["Base"], "MMVet": mmvet, "MMVet_LOW_LEVEL_HIGH": mmvet}}
    scores = score_results(results)
    hard = benchmark_table(scores, "high").splitlines()
    assert hard[0] == "| Method | MM-Vet | MMVP | MMStar | R-Bench-Dis | AVG |"
    assert hard[2] == "| Base | – | 75.00 | 50.00 | 50.00 | 58.33* |"  # no rule-based number under MM-Vet
    assert robustness(scores).set_index("model").loc["Base", "benchmarks"] == ["MMStar", "MMVP"]
    report = write_report(results, tmp_path)["report.md"].read_text()
    assert "## Not scored" in report and "MM-Vet (MMVet_LOW_LEVEL_HIGH, Base): not scored" in report
    assert "run with --judge" in report
    judged = {"Base": {"MMVet": mmvet.assign(graded_by="judge", hit=[1.0, 0.5, 0.0, 0.5])}}
    assert score_results(judged)["score"].tolist() == [50.0]


def test_full_mode_files_give_a_table_per_level_and_a_drop_heat_map(tmp_path):
    from clear_rl.eval.scoring import CORRUPTIONS

    results = {"Base": {"MMStar": results_file([1, 1, 1, 1], NO)}}  # clean: 100
    for k, corruption in enumerate(CORRUPTIONS):
        results["Base"][f"MMStar_MMD_{corruption}_mid"] = results_file([1, 1, 1, 0], NO)  # 75
        results["Base"][f"MMStar_MMD_{corruption}_high"] = results_file([1, 1, 0, 0] if k else [0] * 4, NO)
    scores = score_results(results)
    high = corruption_table(scores, "Base", "high").splitlines()
    assert len(high) == 2 + 16 and high[2] == f"| {CORRUPTIONS[0]} | 0.00 | 0.00 |"
    assert len(corruption_table(scores, "Base", "mid").splitlines()) == 2 + 16
    drops = corruption_drop(scores)
    assert len(drops) == 32
    first = drops[drops["corruption"] == CORRUPTIONS[0]].set_index("level")["drop"]
    assert first.to_dict() == {"mid": 25.0, "high": 100.0}
    files = write_report(results, tmp_path)
    report = files["report.md"].read_text()
    assert "## Base per corruption (Mid)" in report and "## Base per corruption (High)" in report
    assert "| Corruption | Mid drop (↓) | High drop (↓) |" in report
    assert len(pd.read_csv(files["corruption_drop.csv"])) == 32
    with Image.open(files["corruption_drop.png"]) as image:
        assert image.format == "PNG" and image.height > 300
