"""`clear-rl prepare`: schema, determinism, labelling (rule, probe), balancing, bad input."""

from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from clear_rl.cli import main
from clear_rl.data.prepare import MANIFEST_NAME, prepare_dataset
from clear_rl.data.samples import PREPARED_COLUMNS, PrepareConfig, ProbeSettings, prepared_features
from clear_rl.data.sources import SourceRow
from clear_rl.degrade import LEVELS
from clear_rl.demo.shapes_vqa import ShapesVQAConfig, build_shapes_vqa
from clear_rl.errors import DataError
from clear_rl.labelling import Prober
from clear_rl.models import build_tiny_model
from clear_rl.models.io import save_unified
from tests.prepared import SMALL


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return build_shapes_vqa(root, num_train=16, num_test=6, seed=0, config=ShapesVQAConfig(image_size=32))


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "data"
    assert main(["prepare", str(source.dataset_dir), "--out", str(out), "--restore-levels", "mid,high"]) == 0
    return datasets.load_from_disk(str(out)), out


def test_schema_is_exact_and_splits_follow_the_source(prepared, source):
    data, out = prepared
    assert list(data) == ["train", "test"] and (len(data["train"]), len(data["test"])) == (16, 6)
    original = datasets.load_from_disk(str(source.dataset_dir))["train"]
    for split in data.values():
        assert split.features == prepared_features() and tuple(split.column_names) == PREPARED_COLUMNS
    train = data["train"]
    for i, row in enumerate(train):
        assert row["index"] == str(original[i]["index"]) and row["question"] == original[i]["question"]
        assert row["intensity"] == LEVELS[row["severity"]]
        assert row["clean_image"].tobytes() == original[i]["image"].convert("RGB").tobytes()
        restores = row["target"].count("<image_restore>")
        assert restores == (1 if row["label"] == "restore" else 0) and "<|restored_pad|>" not in row["target"]
        assert row["target"].endswith(f"<answer>{row['answer']}</answer>")
        if original[i]["A"]:
            assert row["answer"] in "ABCD" and row["A"] == original[i]["A"]
        else:
            assert row["A"] == row["B"] == row["C"] == row["D"] == ""
    degraded_differs = [
        np.abs(np.asarray(r["image"], float) - np.asarray(r["clean_image"], float)).mean() > 0.5
        for r in train
    ]
    assert sum(degraded_differs) >= len(train) // 2
    assert (out / MANIFEST_NAME).exists()


def test_rule_labels_restore_exactly_the_chosen_levels(prepared):
    data, _ = prepared
    for row in data["train"]:
        assert row["label"] == ("restore" if row["severity"] in ("mid", "high") else "direct")


def test_same_seed_same_dataset_other_seed_other_draws(prepared, source, tmp_path):
    data, _ = prepared
    again = tmp_path / "again"
    prepare_dataset(source.dataset_dir, again, PrepareConfig(restore_levels=("mid", "high")))
    repeat = datasets.load_from_disk(str(again))
    for name in data:
        assert repeat[name].with_format("arrow")[:] == data[name].with_format("arrow")[:]
    other = tmp_path / "other"
    prepare_dataset(source.dataset_dir, other, PrepareConfig(seed=1, restore_levels=("mid", "high")))
    assert datasets.load_from_disk(str(other))["train"]["seed"] != data["train"]["seed"]


def test_balance_keeps_all_minority_rows_and_as_many_others(source, tmp_path, prepared):
    data, _ = prepared
    out = tmp_path / "balanced"
    prepare_dataset(source.dataset_dir, out, PrepareConfig(restore_levels=("mid", "high"), balance=True))
    train = datasets.load_from_disk(str(out))["train"]
    labels = train["label"]
    assert labels.count("restore") == labels.count("direct") > 0
    full = data["train"]["label"]
    minority = min(("restore", "direct"), key=full.count)
    assert labels.count(minority) == full.count(minority)
    assert set(train["index"]) <= set(data["train"]["index"])


def test_tsv_source_with_a_held_out_share_and_reasoning_traces(source, tmp_path):
    frame = pd.read_csv(source.tsv["train"], sep="\t", dtype=str, keep_default_na=False)
    frame["reasoning"] = [f"trace number {i}" for i in range(len(frame))]
    path = tmp_path / "with_traces.tsv"
    frame.to_csv(path, sep="\t", index=False)
    out = tmp_path / "tsv_prepared"
    prepare_dataset(path, out, PrepareConfig(test_fraction=0.25))
    data = datasets.load_from_disk(str(out))
    assert (len(data["train"]), len(data["test"])) == (12, 4)
    assert not set(data["train"]["index"]) & set(data["test"]["index"])
    for row in data["train"]:
        assert f"trace number {row['index']}" in row["target"]


def test_missing_column_is_an_error_naming_it(source, tmp_path):
    broken = datasets.load_from_disk(str(source.dataset_dir))["train"].remove_columns("answer")
    broken.save_to_disk(str(tmp_path / "no_answer"))
    with pytest.raises(DataError, match=r"no_answer.*lacks required column\(s\) \['answer'\]"):
        prepare_dataset(tmp_path / "no_answer", tmp_path / "out")
    assert main(["prepare", str(tmp_path / "no_answer"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_undecodable_image_names_row_and_file_and_keeps_the_old_output(source, tmp_path, prepared):
    frame = pd.read_csv(source.tsv["train"], sep="\t", dtype=str, keep_default_na=False)
    frame.loc[5, "image"] = "bm90IGFuIGltYWdl" * 8  # base64 of text, not of an image
    path = tmp_path / "bad.tsv"
    frame.to_csv(path, sep="\t", index=False)
    out = tmp_path / "kept"
    prepare_dataset(path, out, PrepareConfig(max_samples=3))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(DataError, match=r"bad\.tsv: split 'train' row 5 \(index=5\): undecodable image"):
        prepare_dataset(path, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert len(datasets.load_from_disk(str(out))["train"]) == 3


def test_bad_settings_are_errors():
    with pytest.raises(DataError, match="unknown level"):
        PrepareConfig(levels=("low", "extreme"))
    with pytest.raises(DataError, match="--probe-model"):
        PrepareConfig(label="probe")


def test_probe_labelling_takes_the_labeller_from_the_caller(source, tmp_path):
    settings = ProbeSettings(model_path=str(tmp_path / "no_model"))
    prober = Prober(settings)  # loads its model on first use, so a bad source is reported first
    with pytest.raises(DataError, match="needs a labeller"):
        prepare_dataset(source.dataset_dir, tmp_path / "out", PrepareConfig(label="probe", probe=settings))
    with pytest.raises(DataError, match="only used with label='probe'"):
        prepare_dataset(source.dataset_dir, tmp_path / "out", PrepareConfig(), prober)
    with pytest.raises(DataError, match="source not found"):
        prepare_dataset(
            tmp_path / "missing", tmp_path / "out", PrepareConfig(label="probe", probe=settings), prober
        )
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_unified(*build_tiny_model(SMALL, seed=0), folder)
    return folder


def test_probe_labels_follow_the_models_answers(source, tiny_folder, tmp_path):
    out = tmp_path / "probed"
    settings = ProbeSettings(model_path=str(tiny_folder), max_new_tokens=8, device="cpu")
    prepare_dataset(
        source.dataset_dir, out, PrepareConfig(label="probe", probe=settings, max_samples=6), Prober(settings)
    )
    train = datasets.load_from_disk(str(out))["train"]
    # The oracle: the same model asked directly about the stored degraded and clean images.
    prober = Prober(settings)
    rows = [SourceRow(r["index"], r["clean_image"], r["question"], r["answer"], None, None) for r in train]
    for row, record in zip(rows, train):
        row.options = {k: record[k] for k in "ABCD" if record[k]} or None
    degraded_ok = prober.correct(train["image"], rows)
    clean_ok = prober.correct(train["clean_image"], rows)
    expected = ["restore" if not d and c else "direct" for d, c in zip(degraded_ok, clean_ok)]
    assert train["label"] == expected


class _Scripted(Prober):
    """A prober whose answers are given: correct on the degraded / clean images, per row."""

    def __init__(self, degraded_ok, clean_ok, require_clean_correct=True):
        self.settings = ProbeSettings(model_path="-", require_clean_correct=require_clean_correct)
        self.answers = {"degraded": degraded_ok, "clean": clean_ok}

    def correct(self, images, rows):
        which = "clean" if images and images[0] == "clean" else "degraded"
        return [self.answers[which][int(r.index)] for r in rows]


@pytest.mark.parametrize(
    "require_clean, expected",
    [(True, ["direct", "direct", "restore", "direct"]), (False, ["direct", "direct", "restore", "restore"])],
)
def test_probe_rule_wrong_on_degraded_and_right_on_clean(require_clean, expected):
    degraded_ok, clean_ok = [True, True, False, False], [True, False, True, False]
    rows = [SourceRow(str(i), "clean", "q", "A", None, None) for i in range(4)]
    prober = _Scripted(degraded_ok, clean_ok, require_clean)
    assert prober.labels(rows, ["degraded"] * 4) == expected


def test_template_corpus_covers_every_corruption():
    from clear_rl.data.samples import template_corpus
    from clear_rl.degrade import CORRUPTIONS

    text = " ".join(template_corpus())
    assert all(name.replace("_", " ") in text for name in CORRUPTIONS)


def test_output_path_is_named_in_the_summary(source, tmp_path):
    summary = prepare_dataset(
        source.dataset_dir, tmp_path / "s", PrepareConfig(max_samples=2, splits=("test",))
    )
    assert list(summary["splits"]) == ["test"] and summary["splits"]["test"]["rows"] == 2
    assert Path(summary["source"]) == Path(source.dataset_dir)


def test_clean_level_rows_keep_their_image(source, tmp_path):
    prepare_dataset(source.dataset_dir, tmp_path / "out", PrepareConfig(levels=("clean",), restore_levels=()))
    rows = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    assert set(rows["severity"]) == {"clean"} and set(rows["corruption"]) == {"none"}
    assert set(rows["label"]) == {"direct"}
    for row in rows.select(range(3)):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(row["clean_image"]))
        assert "no degradation" in row["target"]


def test_an_unknown_corruption_backend_is_refused_before_any_work(tmp_path):
    from clear_rl.data.prepare import prepare_dataset
    from clear_rl.data.samples import PrepareConfig
    from clear_rl.errors import ClearRLError

    with pytest.raises(ClearRLError, match="unknown corruption backend 'cuda'"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out", PrepareConfig(backend="cuda"))
    assert not (tmp_path / "out").exists()


def test_describe_quality_check_shares_the_check_and_leaves_the_decision_to_one_token(source, tmp_path):
    from clear_rl.data.samples import build_target

    restore = build_target("restore", "gaussian_noise", "high", "red", quality_check="describe")
    direct = build_target("direct", "gaussian_noise", "high", "red", quality_check="describe")
    check = "<think>The image has severe gaussian noise.</think>"
    assert restore.startswith(check + "<image_restore><think>") and direct.startswith(check + "<think>")
    assert direct.endswith("<answer>red</answer>") and "<image_restore>" not in direct
    # The default keeps the decision in the check's words.
    assert "I restore it first" in build_target("restore", "gaussian_noise", "high", "red")
    out = tmp_path / "described"
    config = PrepareConfig(levels=("high",), restore_levels=("high",), quality_check="describe")
    prepare_dataset(source.dataset_dir, out, config)
    targets = datasets.load_from_disk(str(out))["train"]["target"]
    assert all(
        t.startswith("<think>The image has severe ") and "</think><image_restore>" in t for t in targets
    )
    with pytest.raises(DataError, match="quality_check"):
        PrepareConfig(quality_check="explain")
