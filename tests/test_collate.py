"""The training collator: sequence layout, label masking, placeholders, the teacher batch."""

import pytest
import torch

from clear_rl.data.collate import IGNORE_INDEX, ClearCollator, split_inputs
from clear_rl.data.prompts import format_question, row_options
from clear_rl.errors import DataError
from clear_rl.models.processing import encode_prompts
from tests.prepared import prepared_rows


@pytest.fixture
def batch_and_rows(tiny):
    model, processor = tiny
    rows = prepared_rows(3, size=64, templates=True)
    return ClearCollator.for_model(model, processor)(rows), rows


def test_labels_mask_exactly_prompt_placeholders_and_padding(tiny, batch_and_rows):
    model, processor = tiny
    batch, rows = batch_and_rows
    tokenizer = processor.tokenizer
    pad_id = model.token_ids.restored_pad
    for i, row in enumerate(rows):
        prompt = encode_prompts(
            processor, [row["image"]], [format_question(row["question"], row_options(row))]
        )
        prompt_len = prompt["input_ids"].shape[1]
        length = int(batch["attention_mask"][i].sum())
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        assert torch.equal(ids[:prompt_len], prompt["input_ids"][0])  # the prompt comes first, unchanged
        assert bool((labels[:prompt_len] == IGNORE_INDEX).all())
        assert bool((labels[length:] == IGNORE_INDEX).all()) and bool(
            (ids[length:] == tokenizer.pad_token_id).all()
        )
        completion, completion_labels = ids[prompt_len:length], labels[prompt_len:length]
        is_pad = completion == pad_id
        assert torch.equal(completion_labels[~is_pad], completion[~is_pad])  # every written token is a label
        assert bool((completion_labels[is_pad] == IGNORE_INDEX).all())
        assert int(completion[-1]) == tokenizer.eos_token_id
        text = tokenizer.decode(completion[~is_pad][:-1])
        assert text == row["target"]


def test_placeholders_follow_image_restore_and_match_the_model(tiny, batch_and_rows):
    model, _ = tiny
    batch, rows = batch_and_rows
    ids = model.token_ids
    for i, row in enumerate(rows):
        seq = batch["input_ids"][i]
        completion = batch["labels"][i] != IGNORE_INDEX
        completion[int(completion.nonzero().min()) :] = True  # the completion, placeholders included
        pads = (seq == ids.restored_pad).nonzero().squeeze(1)
        restores = ((seq == ids.image_restore) & completion).nonzero().squeeze(1)
        if row["label"] == "restore":
            assert len(pads) == model.num_restored_tokens
            assert len(restores) == 1 and torch.equal(pads, torch.arange(len(pads)) + restores[0] + 1)
        else:
            assert len(pads) == 0 and len(restores) == 0
    assert batch["restore"].tolist() == [row["label"] == "restore" for row in rows]


def test_teacher_batch_holds_the_clean_image_prompt(tiny, batch_and_rows):
    model, processor = tiny
    batch, rows = batch_and_rows
    student, teacher = split_inputs(batch)
    assert set(student) == {"input_ids", "attention_mask", "pixel_values"}
    assert set(teacher) == {"input_ids", "attention_mask", "pixel_values"}
    clean = processor.image_processor([r["clean_image"] for r in rows], return_tensors="pt")["pixel_values"]
    assert torch.allclose(teacher["pixel_values"], clean)
    assert not torch.allclose(student["pixel_values"], clean)
    # Same prompts: the teacher's ids are the student's prompt part.
    for i in range(len(rows)):
        n = int(teacher["attention_mask"][i].sum())
        assert torch.equal(teacher["input_ids"][i, :n], batch["input_ids"][i, :n])
    assert batch["clean_vae_pixel_values"].shape == (
        3,
        3,
        model.config.vae_image_size,
        model.config.vae_image_size,
    )


def test_labels_after_slot_keep_only_the_answer_part(tiny):
    model, processor = tiny
    rows = prepared_rows(2, size=64)
    batch = ClearCollator.for_model(model, processor, labels_after_slot=True)(rows)
    restore_row, direct_row = batch["labels"][0], batch["labels"][1]
    assert bool((direct_row == IGNORE_INDEX).all())
    last_pad = int((batch["input_ids"][0] == model.token_ids.restored_pad).nonzero().max())
    assert bool((restore_row[: last_pad + 1] == IGNORE_INDEX).all())
    text = processor.tokenizer.decode(
        restore_row[last_pad + 1 :][restore_row[last_pad + 1 :] != IGNORE_INDEX]
    )
    assert text == "<think>ok</think><answer>A</answer></s>"


@pytest.mark.parametrize(
    "target, message",
    [
        ("<think>x</think><image_restore><|restored_pad|><answer>A</answer>", "placeholders"),
        ("<image_restore><think>x</think><image_restore><answer>A</answer>", "2 <image_restore>"),
    ],
)
def test_bad_targets_are_errors_naming_the_row(tiny, target, message):
    model, processor = tiny
    rows = prepared_rows(1, size=64)
    rows[0]["target"], rows[0]["index"] = target, "q-17"
    with pytest.raises(DataError, match=f"index=q-17.*{message}"):
        ClearCollator.for_model(model, processor)(rows)
