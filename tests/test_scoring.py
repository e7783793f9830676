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
        ("MMBench_DEV_EN_V11_LOW_LEVEL_HIGH", "MMBench", "circular", "high"),  # the release's names
        ("MMVet_LOW_LEVEL_HIGH", "MM-Vet", "mean_score", "high"),
        ("CV-Bench-2D_LOW_LEVEL_LOW", "CV-Bench", "source_mean", "low"),
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
    parsed = parse_dataset_name(name, protocol="vlmevalkit")
    assert (parsed.benchmark, parsed.rule, parsed.level) == (benchmark, rule, level)


@pytest.mark.parametrize(
    ("name", "paper", "vlmevalkit"),
    [
        ("MMVP", "accuracy", "pairs"),
        ("CV-Bench-2D_MMD_high", "accuracy", "source_mean"),
        ("MMBench_DEV_EN_V11", "circular", "circular"),
        ("MMVet", "mean_score", "mean_score"),
        ("MMStar", "accuracy", "accuracy"),
    ],
)
def test_protocols_differ_only_where_clears_copy_does(name, paper, vlmevalkit):
    assert parse_dataset_name(name).rule == paper  # the paper's protocol is the default
    assert parse_dataset_name(name, protocol="vlmevalkit").rule == vlmevalkit
    with pytest.raises(DataError, match="protocol must be one of paper, vlmevalkit"):
        parse_dataset_name(name, protocol="lmms-eval")


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


def test_mmbench_groups_come_from_g_index_where_the_file_has_it():
    # Rows 10 and 57 are one question (g_index 10) although 57 % 1e6 is not 10; row 57 is wrong.
    results = frame(index=[10, 57, 11], g_index=[10, 10, 11], hit=[1, 0, 1], category=["a", "b", "c"])
    score = score_benchmark(results, "MMBench_DEV_EN_V11")
    assert score.score == pytest.approx(50.0) and score.units == 2
    assert score.breakdown == {"a": 0.0, "c": 100.0}  # the label of the group's main row (index 10)
    with pytest.raises(DataError, match="column 'g_index' at index=57 is 'x', not a number"):
        score_benchmark(results.assign(g_index=[10, "x", 11]), "MMBench_DEV_EN_V11")
    with pytest.raises(DataError, match="integer `g_index` values, got '10.5' at index=57"):
        score_benchmark(results.assign(g_index=[10, 10.5, 11]), "MMBench_DEV_EN_V11")


MMVP_ROWS = frame(
    index=[1, 2, 3, 4, 5, 6],
    question=["wings open?", "wings open?", "facing left?", "facing left?", "red?", "red?"],
    hit=[1, 1, 1, 0, 0, 0],
)


def test_mmvp_paper_protocol_is_question_accuracy():
    score = score_benchmark(MMVP_ROWS, "MMVP")
    assert score.score == pytest.approx(50.0) and score.units == 6 and score.protocol == "paper"


def test_mmvp_vlmevalkit_pairs_need_both_questions_right():
    score = score_benchmark(MMVP_ROWS, "MMVP", protocol="vlmevalkit")
    assert score.score == pytest.approx(100 / 3) and score.units == 3
    assert score.breakdown == {"question_accuracy": 50.0}
    # Pairs are taken by sorted position, whatever the first index and the row order.
    shuffled = MMVP_ROWS.assign(index=[100, 101, 102, 103, 104, 105]).iloc[[5, 0, 3, 1, 4, 2]]
    assert score_benchmark(shuffled, "MMVP", protocol="vlmevalkit").score == pytest.approx(100 / 3)


def test_mmvp_pairs_that_share_nothing_are_named():
    broken = MMVP_ROWS.assign(question=["a", "a", "b", "c", "d", "d"])
    with pytest.raises(DataError, match="index=3 and index=4 form MMVP pair 2"):
        score_benchmark(broken, "MMVP", protocol="vlmevalkit")
    # The same image (its digest, as the runner keeps it) is enough.
    same_image = broken.assign(image_digest=["x", "x", "y", "y", "z", "z"])
    assert score_benchmark(same_image, "MMVP", protocol="vlmevalkit").units == 3
    with pytest.raises(DataError, match="even number of rows, got 5"):
        score_benchmark(MMVP_ROWS.iloc[:5], "MMVP", protocol="vlmevalkit")


CV_ROWS = frame(index=[1, 2, 3, 4], hit=[1, 1, 0, 0], source=["ADE20K", "COCO", "COCO", "COCO"])


def test_cv_bench_paper_protocol_is_plain_accuracy():
    score = score_benchmark(CV_ROWS, "CV-Bench-2D")
    assert score.score == pytest.approx(50.0) and score.units == 4
    assert score.breakdown == pytest.approx({"ADE20K": 100.0, "COCO": 100 / 3})


def test_cv_bench_vlmevalkit_averages_per_source_then_across_sources():
    # ADE20K 1/1 right, COCO 1/3 right: plain accuracy would be 50, the per-source mean 66.67.
    score = score_benchmark(CV_ROWS, "CV-Bench-2D", protocol="vlmevalkit")
    assert score.score == pytest.approx((100 + 100 / 3) / 2)
    assert score.breakdown == pytest.approx({"ADE20K": 100.0, "COCO": 100 / 3})
    with pytest.raises(DataError, match="no `source` column"):
        score_benchmark(CV_ROWS.drop(columns="source"), "CV-Bench-2D", protocol="vlmevalkit")


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


def test_mm_vet_averages_judge_scores_per_capability():
    results = frame(
        index=[0, 1, 2], hit=[1.0, 0.5, 0.0], category=["rec,ocr", "ocr", "math"], graded_by=["judge"] * 3
    )
    score = score_benchmark(results, "MMVet")
    assert score.scored and score.score == pytest.approx(50.0)
    assert score.breakdown == pytest.approx({"rec": 100.0, "ocr": 75.0, "math": 0.0})


def test_mm_vet_without_judge_grades_is_not_scored():
    results = frame(index=[0, 1], hit=[1.0, 0.0], graded_by=["judge", "rules"])
    score = score_benchmark(results, "MMVet_LOW_LEVEL_HIGH")
    assert not score.scored and math.isnan(score.score)
    assert "run with --judge" in score.note and "1 of 2 answers" in score.note
    assert not score_benchmark(results.drop(columns="graded_by"), "MMVet").scored


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


def test_an_unknown_release_level_suffix_is_an_error_not_a_clean_file():
    from clear_rl.errors import DataError
    from clear_rl.eval.scoring import parse_dataset_name

    assert parse_dataset_name("MMStar_LOW_LEVEL_MID").level == "mid"
    with pytest.raises(DataError, match="_LOW_LEVEL_LOW, _MID or _HIGH"):
        parse_dataset_name("MMStar_LOW_LEVEL_MIXED")
