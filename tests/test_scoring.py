"""Benchmark scoring rules on small hand-made result frames."""

import math

import pandas as pd
import pytest

from clear_rl.errors import DataError
from clear_rl.eval.scoring import compute_hits, parse_dataset_name, score_benchmark


def frame(**columns):
    return pd.DataFrame(columns)


@pytest.mark.parametrize(
    ("name", "benchmark", "rule", "level"),
    [
        ("MMBench_DEV_EN_V11", "MMBench", "circular", "clean"),
        ("MMBench_DEV_EN_V11_MMD_high", "MMBench", "circular", "high"),
        ("MMBench_DEV_EN_V11_LOW_LEVEL_MID", "MMBench", "circular", "mid"),
        ("/data/LMUData/MMVet_MMD_low.tsv", "MM-Vet", "mean_score", "low"),
        ("MMVP", "MMVP", "pairs", "clean"),
        ("CV-Bench-2D_MMD_high", "CV-Bench", "source_mean", "high"),
        ("CV-Bench-3D", "CV-Bench-3D", "accuracy", "clean"),
        ("MMStar_LOW_LEVEL_LOW", "MMStar", "accuracy", "low"),
        ("RealWorldQA_MMD_mid", "RealWorldQA", "accuracy", "mid"),
        ("R-Bench-Dis", "R-Bench-Dis", "accuracy", "high"),  # shipped degraded: reported with High
        ("ShapesVQA_high", "ShapesVQA", "accuracy", "high"),  # unknown: plain accuracy
        ("ShapesVQA", "ShapesVQA", "accuracy", "clean"),
        ("MMStar_graffiti", "MMStar", "accuracy", "high"),  # CLEAR's per-corruption set is High
        ("CV-Bench-2D_gaussian_noise", "CV-Bench", "source_mean", "high"),
    ],
)
def test_dataset_names(name, benchmark, rule, level):
    parsed = parse_dataset_name(name)
    assert (parsed.benchmark, parsed.rule, parsed.level) == (benchmark, rule, level)


def test_per_corruption_names_keep_the_corruption():
    assert parse_dataset_name("MMBench_DEV_EN_V11_motion_blur").corruption == "motion_blur"
    assert parse_dataset_name("MMBench_DEV_EN_V11_MMD_high").corruption == ""


def test_level_override_and_bad_level():
    assert parse_dataset_name("MMStar_foggy", level="high").level == "high"
    with pytest.raises(DataError, match="level must be one of"):
        parse_dataset_name("MMStar", level="extreme")


def test_mmbench_circular_one_wrong_rotation_fails_the_question():
    # Question 1: three rotations right. Question 2: its second rotation wrong. Question 3: no rotations.
    results = frame(
        index=[1, 1000001, 2000001, 2, 1000002, 2000002, 3],
        hit=[1, 1, 1, 1, 0, 1, 1],
        category=["ocr", "x", "x", "ocr", "x", "x", "counting"],
        restored=[True, False, False, False, False, False, True],
    )
    score = score_benchmark(results, "MMBench_DEV_EN_V11_MMD_high")
    assert score.score == pytest.approx(200 / 3)  # questions 1 and 3 of 3
    assert score.units == 3 and score.rows == 7
    assert score.breakdown == {"counting": 100.0, "ocr": 50.0}  # labels from the main rows
    assert score.trigger_rate == pytest.approx(200 / 7)
    assert math.isnan(score.latency_s)


def test_mmvp_pairs_need_both_questions_right():
    results = frame(index=[1, 2, 3, 4, 5, 6], hit=[1, 1, 1, 0, 0, 0])
    score = score_benchmark(results, "MMVP")
    assert score.score == pytest.approx(100 / 3) and score.units == 3
    assert score.breakdown == {"question_accuracy": 50.0}


def test_cv_bench_averages_per_source_then_across_sources():
    # ADE20K 1/1 right, COCO 1/3 right: plain accuracy would be 50, the CV-Bench rule gives 66.67.
    results = frame(index=[1, 2, 3, 4], hit=[1, 1, 0, 0], source=["ADE20K", "COCO", "COCO", "COCO"])
    score = score_benchmark(results, "CV-Bench-2D")
    assert score.score == pytest.approx((100 + 100 / 3) / 2)
    assert score.breakdown == pytest.approx({"ADE20K": 100.0, "COCO": 100 / 3})
    with pytest.raises(DataError, match="no `source` column"):
        score_benchmark(results.drop(columns="source"), "CV-Bench-2D")


def test_plain_accuracy_with_categories_and_costs():
    results = frame(
        index=[1, 2, 3, 4],
        hit=[1, 0, 1, 1],
        category=["a", "a", "b", "b"],
        **{"l2-category": ["p", "p", "p", "q"]},
        restored=["True", "False", "False", "1"],  # as a CSV round trip leaves them
        latency_s=[1.0, 2.0, 3.0, 4.0],
        num_tokens=[10, 20, 30, 40],
    )
    score = score_benchmark(results, "MMStar_MMD_low")
    assert (score.score, score.units, score.trigger_rate, score.latency_s, score.num_tokens) == (
        75.0,
        4,
        50.0,
        2.5,
        25.0,
    )
    assert score.breakdown == pytest.approx({"p": 200 / 3, "q": 100.0, "a": 50.0, "b": 100.0})


def test_mm_vet_averages_scores_per_capability():
    results = frame(index=[0, 1, 2], hit=[1.0, 0.5, 0.0], category=["rec,ocr", "ocr", "math"])
    score = score_benchmark(results, "MMVet")
    assert score.score == pytest.approx(50.0)
    assert score.breakdown == pytest.approx({"rec": 100.0, "ocr": 75.0, "math": 0.0})


@pytest.mark.parametrize(
    ("results", "name", "message"),
    [
        (frame(index=[1]), "MMStar", "lack column\\(s\\) \\['hit'\\]"),
        (frame(index=[1, 2], hit=[1, "yes"]), "MMStar", "'hit' at index=2 is 'yes'"),
        (frame(index=[1, 2], hit=[1, 3]), "MMStar", "`hit` at index=2 is 3"),
        (frame(index=["1", "a"], hit=[1, 1]), "MMBench_DEV_EN_V11", "'index' at index=a is 'a'"),
        (frame(index=[], hit=[]), "MMStar", "no result rows"),
    ],
)
def test_bad_results_are_named(results, name, message):
    with pytest.raises(DataError, match=message):
        score_benchmark(results, name)


def test_compute_hits_from_predictions():
    results = frame(
        index=["1", "2", "3"],
        question=["q"] * 3,
        answer=["B", "A", "7"],
        A=["cat", "cat", ""],
        B=["dog", "dog", ""],
        prediction=["<answer>dog</answer>", "<answer>B</answer>", "<answer>seven</answer>"],
    )
    assert compute_hits(results).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="row index=2 has no reference answer"):
        compute_hits(results.assign(answer=["B", "", "7"]), "MMStar")


def test_degrade_full_mode_names_carry_their_corruption_and_level():
    from clear_rl.eval.scoring import parse_dataset_name

    parsed = parse_dataset_name("RealWorldQA_MMD_lens_blur_mid")
    assert (parsed.base, parsed.corruption, parsed.level) == ("RealWorldQA", "lens_blur", "mid")
    released = parse_dataset_name("MMStar_graffiti")
    assert (released.base, released.corruption, released.level) == ("MMStar", "graffiti", "high")
