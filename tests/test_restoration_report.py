"""Restoration report tables on hand-made predictions equal hand-computed numbers; figures are PNGs."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clear_rl.eval.gallery import gallery_figure, save_example, select_examples, write_galleries
from clear_rl.eval.plots import restoration_figure, trigger_latency_figure
from clear_rl.eval.quality import latent_cosine, psnr
from clear_rl.eval.report import per_level, score_results, write_report
from clear_rl.eval.restoration_report import (
    bridge_fidelity,
    readback_comparison,
    restoration_gain,
    restoration_quality,
)

RUNS = {
    "M [never]": {"model": "M", "restore": "never", "readback": ""},
    "M [always]": {"model": "M", "restore": "always", "readback": "bridge"},
}


def _rows(label, dataset, level, indices, hits, corruptions, restored, **extra):
    n = len(indices)
    return pd.DataFrame(
        {
            "model": label,
            "dataset": dataset,
            "level": level,
            "index": [str(i) for i in indices],
            "hit": hits,
            "restored": restored,
            "corruption": corruptions,
            **extra,
        },
        index=range(n),
    )


NOISE, BLUR = "gaussian_noise", "motion_blur"
PREDICTIONS = pd.concat(
    [
        _rows("M [never]", "D_MMD_high", "high", [1, 2, 3, 4], [0, 1, 1, 0], [NOISE, NOISE, BLUR, BLUR], False),
        # Row 5 was answered only with restoring: it is not a shared row, so the gain ignores it.
        _rows("M [always]", "D_MMD_high", "high", [1, 2, 3, 4, 5], [1, 1, 0, 1, 1], [NOISE, NOISE, BLUR, BLUR, BLUR],
              True, psnr_restored=[30.0, 20.0, 25.0, 15.0, 10.0], psnr_degraded=[20.0, 20.0, 10.0, 10.0, 10.0],
              latent_cos_restored=[0.9, 0.7, 0.8, 0.6, 0.5], latent_cos_degraded=[0.5, 0.5, 0.4, 0.4, 0.4]),
        _rows("M [never]", "D_MMD_low", "low", [1, 2], [1, 1], ["jpeg_compression"] * 2, False),
        _rows("M [always]", "D_MMD_low", "low", [1, 2], [1, 0], ["jpeg_compression"] * 2, True),
    ],
    ignore_index=True,
)  # fmt: skip


def test_restoration_gain_is_always_minus_never_on_shared_rows():
    gain = restoration_gain(PREDICTIONS, RUNS).set_index(["level", "corruption"])
    assert list(gain.index) == [
        ("low", "jpeg_compression"),  # one corruption: no `all` row repeating it
        ("high", NOISE),
        ("high", BLUR),
        ("high", "all"),
    ]
    expected = {
        ("high", NOISE): (2, 50.0, 100.0, 50.0),
        ("high", BLUR): (2, 50.0, 50.0, 0.0),
        ("high", "all"): (4, 50.0, 75.0, 25.0),
        ("low", "jpeg_compression"): (2, 100.0, 50.0, -50.0),
    }
    for key, values in expected.items():
        assert tuple(gain.loc[key, ["rows", "never", "always", "gain"]]) == pytest.approx(values), key
    assert set(gain["model"]) == {"M"} and set(gain["readback"]) == {"bridge"}


def test_no_gain_without_both_policies():
    assert restoration_gain(PREDICTIONS[PREDICTIONS["model"] == "M [always]"], RUNS).empty
    assert restoration_gain(PREDICTIONS).empty  # without runs every label is its own model's plain run


def test_restoration_quality_means_over_restored_rows():
    quality = restoration_quality(PREDICTIONS).set_index(["level", "corruption"])
    assert list(quality["model"].unique()) == ["M [always]"]  # the low rows have no measures
    blur = quality.loc[("high", BLUR)]
    assert blur["restored_rows"] == 3
    assert blur[["psnr_restored", "psnr_degraded", "psnr_gain"]].tolist() == pytest.approx(
        [50 / 3, 10.0, 20 / 3]
    )
    pooled = quality.loc[("high", "all")]
    assert pooled["restored_rows"] == 5 and pooled["psnr_gain"] == pytest.approx(6.0)
    assert pooled["latent_cos_restored"] == pytest.approx(0.7) and pooled[
        "latent_cos_degraded"
    ] == pytest.approx(0.44)


def _file(hits, restored, latency=1.0):
    n = len(hits)
    return pd.DataFrame({"index": range(1, n + 1), "question": "q", "answer": "A", "hit": hits,
                         "restored": restored, "latency_s": latency, "num_tokens": 5})  # fmt: skip


def test_readback_and_oracle_tables():
    results = {
        "M [never]": {"S": _file([1, 1, 0, 0], False), "S_MMD_high": _file([1, 0, 0, 0], False)},
        "M [always, bridge]": {"S_MMD_high": _file([1, 1, 0, 0], True, latency=2.0)},
        "M [always, reencode]": {"S_MMD_high": _file([1, 1, 1, 0], True, latency=5.0)},
        "M [oracle, bridge]": {"S": _file([1, 0, 0, 0], True), "S_MMD_high": _file([1, 1, 1, 1], True)},
    }
    runs = {
        "M [never]": {"model": "M", "restore": "never", "readback": ""},
        "M [always, bridge]": {"model": "M", "restore": "always", "readback": "bridge"},
        "M [always, reencode]": {"model": "M", "restore": "always", "readback": "reencode"},
        "M [oracle, bridge]": {"model": "M", "restore": "oracle", "readback": "bridge"},
    }
    scores = score_results(results)
    readback = readback_comparison(scores, runs)
    assert readback[["restore", "level", "readback", "accuracy", "latency_s"]].values.tolist() == [
        ["always", "high", "bridge", 50.0, 2.0],
        ["always", "high", "reencode", 75.0, 5.0],
    ]
    fidelity = bridge_fidelity(scores, runs).set_index("level")
    # Clean accuracy comes from the never run (50); the oracle reaches 25 on clean rows, 100 on high.
    assert fidelity.loc["clean", ["clean", "oracle", "gap"]].tolist() == [50.0, 25.0, -25.0]
    assert fidelity.loc["high", ["clean", "oracle", "gap"]].tolist() == [50.0, 100.0, 50.0]


def test_write_report_writes_the_restoration_tables(tmp_path):
    results = {
        label: {
            dataset: frame.drop(columns=["model", "dataset", "level"])
            for dataset, frame in part.groupby("dataset")
        }
        for label, part in PREDICTIONS.assign(question="q", answer="A").groupby("model", sort=False)
    }
    files = write_report(results, tmp_path, runs=RUNS, gallery=0)
    report = files["report.md"].read_text()
    assert "## Restoration gain" in report and "## Restoration quality" in report
    assert "| M | bridge | High | all | 4 | 50.00 | 75.00 | 25.00 |" in report
    gain = pd.read_csv(files["restoration_gain.csv"])
    assert len(gain) == 4 and pd.read_csv(files["restoration_quality.csv"])["restored_rows"].max() == 5
    assert set(pd.read_csv(files["scores.csv"])["restore"]) == {"never", "always"}
    for name in ("restoration.png", "trigger_latency.png"):
        with Image.open(files[name]) as image:
            assert image.format == "PNG" and image.width > 300


def test_figures_have_the_expected_panels():
    scores = score_results(
        {"Never": {"S": _file([1, 0], False)}, "Restoring": {"S": _file([1, 1], [True, False], latency=3.0)}}
    )
    levels = per_level(scores)
    figure = trigger_latency_figure(levels)
    rate_axis, accuracy_axis, time_axis = figure.axes
    assert len(rate_axis.patches) == 1  # one level x only the run that restores: no empty slot
    assert time_axis.get_ylim()[0] == 0 and rate_axis.get_ylim()[0] == 0 and accuracy_axis.get_ylim()[0] == 0
    assert [line.get_ydata().tolist() for line in accuracy_axis.lines] == [[50.0], [100.0]]
    quality, gain = restoration_quality(PREDICTIONS), restoration_gain(PREDICTIONS, RUNS)
    assert len(restoration_figure(quality, gain).axes) == 2  # one gain panel (M), one quality panel
    assert restoration_figure(quality.iloc[0:0], gain.iloc[0:0]) is None


def test_metrics_on_known_tensors():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] += 0.2  # [-1, 1] range: error 0.1 of the unit range -> 20 dB
    assert psnr(b, a).tolist() == pytest.approx([100.0, 20.0], abs=1e-4)
    x = torch.randn(3, 4, 2, 2)
    assert latent_cosine(x, 2 * x).tolist() == pytest.approx([1.0] * 3)
    assert latent_cosine(x, -x).tolist() == pytest.approx([-1.0] * 3)


def test_gallery_draws_three_panels_per_chosen_row(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8))
    folder = tmp_path / "restorations" / "M_always" / "D_MMD_high"
    stems = {}
    for index, restored in (("1", True), ("2", False), ("3", True)):
        decoded = torch.rand(3, 16, 16) * 2 - 1 if restored else None
        stems[index] = save_example(folder, index, image, image, decoded, 16).relative_to(tmp_path).as_posix()
    assert (folder / "1_restored.png").exists() and not (folder / "2_restored.png").exists()
    rows = pd.DataFrame(
        {
            "model": "M [always]",
            "level": "high",
            "index": ["1", "2", "3"],
            "corruption": [NOISE, NOISE, BLUR],
            "question": "What shape?",
            "answer": "A",
            "prediction": "<answer>A</answer>",
            "hit": [1.0, 0.0, 1.0],
            "restored": [True, False, True],
            "psnr_restored": [21.0, None, 19.0],
            "gallery": [stems["1"], stems["2"], stems["3"]],
        }
    )
    chosen = select_examples(rows, per_corruption=1)
    assert chosen["index"].tolist() == ["1", "3"]  # per corruption (sorted), restored rows first
    assert len(gallery_figure(chosen, tmp_path).axes) == 6
    assert len(gallery_figure(select_examples(rows, 2), tmp_path).axes) == 9
    files = write_galleries(rows, tmp_path, per_corruption=2)
    with Image.open(files["gallery_M_always.png"]) as png:
        assert png.format == "PNG" and png.height > png.width


def test_captions_show_control_characters_a_model_wrote_as_replacement_marks():
    from clear_rl.eval.gallery import _caption

    row = pd.Series(
        {"level": "high", "corruption": NOISE, "question": "What\x07 shape?", "answer": "A",
         "prediction": "<answer>A\x17</answer>", "hit": 1.0, "restored": False}
    )  # fmt: skip
    caption = _caption(row)
    assert "\x17" not in caption and "\x07" not in caption
    assert (
        "model: A\N{REPLACEMENT CHARACTER}" in caption and "What\N{REPLACEMENT CHARACTER} shape?" in caption
    )
