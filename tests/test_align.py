"""Bridge alignment (`stage: align`): the bridge learns to speak the VLM's own vision tokens."""

import datasets
import pytest
import torch
import yaml

from clear_rl.data.image_sources import AlignCollator, load_image_dataset
from clear_rl.errors import DataError, RecipeError
from clear_rl.io.images import encode_base64_image
from clear_rl.models import build_tiny_model
from clear_rl.models.io import load_unified
from clear_rl.models.processing import prompt_texts
from clear_rl.recipe import load_recipe, stage_module
from clear_rl.trainers.align import _on_grid, alignment_terms, vision_targets
from tests.conftest import make_images
from tests.prepared import SMALL

QUIET = {"report_to": "none", "disable_tqdm": True, "use_cpu": True, "save_strategy": "no"}


def _image_folder(tmp_path, n=32):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(make_images(n, size=32, seed=3)):
        image.save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    return folder


def _recipe(tmp_path, data_path, **training):
    recipe = {
        "stage": "align",
        "model": {"tiny": {k: getattr(SMALL, k) for k in SMALL.__dataclass_fields__}},
        "data": {"path": str(data_path)},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 60,
            "per_device_train_batch_size": 8,
            "learning_rate": 3e-3,
            "logging_steps": 10,
            "seed": 0,
            **QUIET,
            **training,
        },
    }
    path = tmp_path / "align.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _answer_logits(model, processor, images, image_tokens=None):
    """Next-token logits after a prompt, the image slot holding the vision path's or given tokens."""
    batch = processor(
        images=images, text=prompt_texts(processor, ["colour?"] * len(images)), return_tensors="pt"
    )
    projector = model.vlm.model.multi_modal_projector
    handle = None
    if image_tokens is not None:
        handle = projector.register_forward_hook(lambda module, args, output: image_tokens.to(output.dtype))
    try:
        with torch.no_grad():
            return model(**batch).logits[:, -1].float()
    finally:
        if handle is not None:
            handle.remove()


def _fidelity_gap(model, processor, images) -> float:
    """KL between what the LLM predicts from the vision path's tokens and from the bridged latent."""
    collated = AlignCollator(processor, model.config.vae_image_size)([{"image": im} for im in images])
    with torch.no_grad():
        bridged = model.bridge(model.encode_latents(collated["vae_pixel_values"]))
    reference = _answer_logits(model, processor, images).log_softmax(-1)
    through_bridge = _answer_logits(model, processor, images, bridged).log_softmax(-1)
    return float(
        torch.nn.functional.kl_div(through_bridge, reference, log_target=True, reduction="batchmean")
    )


@pytest.mark.slow
def test_alignment_lowers_its_loss_and_raises_bridge_fidelity(tmp_path):
    folder = _image_folder(tmp_path)
    recipe = load_recipe(_recipe(tmp_path, folder, lambda_hidden=0.5))
    images = make_images(8, size=32, seed=11)  # held out from the training folder
    before, processor = build_tiny_model(SMALL, seed=0)
    gap_before = _fidelity_gap(before.eval(), processor, images)
    trainer = stage_module("align").train(recipe)
    logs = [h for h in trainer.state.log_history if "align_mse" in h]
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]
    assert logs[-1]["align_cos"] > logs[0]["align_cos"]
    assert "align_hidden" in logs[0]
    after, processor = load_unified(tmp_path / "out")
    gap_after = _fidelity_gap(after.eval(), processor, images)
    assert gap_after < 0.5 * gap_before
    # Only the bridge trains: the vision path it is aligned to stays as it was.
    for name, param in after.vlm.state_dict().items():
        torch.testing.assert_close(param, before.vlm.state_dict()[name], msg=name)


def test_alignment_targets_are_the_vision_path_tokens(fresh_tiny):
    model, processor = fresh_tiny
    images = make_images(2, seed=1)
    batch = AlignCollator(processor, model.config.vae_image_size)([{"image": im} for im in images])
    targets = vision_targets(model, batch)
    pixel = {k: v for k, v in batch.items() if k != "vae_pixel_values"}
    vlm = model.vlm.model
    with torch.no_grad():
        hidden = vlm.vision_tower(pixel["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
        expected = vlm.multi_modal_projector(hidden)
    torch.testing.assert_close(targets, expected)
    terms = alignment_terms(model, batch, with_hidden=False)
    assert terms.hidden is None and float(terms.mse.detach()) > 0 and 0 <= float(terms.cosine.detach()) <= 2


def test_vision_grid_is_resampled_to_the_bridge_grid():
    tokens = torch.arange(16.0).reshape(1, 16, 1)  # a 4x4 grid, row-major
    pooled = _on_grid(tokens, (4, 4), (2, 2))
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # means of each 2x2 block
    assert _on_grid(tokens, (4, 4), (8, 8)).shape == (1, 64, 1)
    assert _on_grid(tokens, (4, 4), (4, 4)) is tokens


def test_image_sources_folder_dataset_and_tsv(tmp_path):
    folder = _image_folder(tmp_path, n=4)
    assert len(load_image_dataset(str(folder))) == 4  # recursive
    images = make_images(3, size=32)
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"clean_image": images, "image": images, "q": ["a", "b", "c"]})}
    ).save_to_disk(str(saved))
    before = sorted(p.name for p in saved.rglob("*"))
    loaded = load_image_dataset(str(saved), max_samples=2)
    assert loaded.column_names == ["image"] and len(loaded) == 2
    assert sorted(p.name for p in saved.rglob("*")) == before  # nothing written into the input folder
    tsv = tmp_path / "bench.tsv"
    cells = [encode_base64_image(im) for im in images]
    tsv.write_text("index\timage\n" + "".join(f"{i}\t{c}\n" for i, c in enumerate(cells)))
    assert len(load_image_dataset(str(tsv))) == 3
    model, processor = build_tiny_model(SMALL, seed=0)
    batch = AlignCollator(processor, model.config.vae_image_size)(list(loaded))
    assert batch["pixel_values"].shape[0] == 2 and batch["vae_pixel_values"].shape == (2, 3, 32, 32)


def test_image_source_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_image_dataset(str(tmp_path / "empty"))
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"q": ["a"]}).save_to_disk(str(saved))
    with pytest.raises(DataError, match="no image column"):
        load_image_dataset(str(saved))
    model, processor = build_tiny_model(SMALL, seed=0)
    with pytest.raises(DataError, match="cannot be decoded"):
        AlignCollator(processor, 32)([{"image": "not-an-image"}])


def test_align_recipe_validates_its_keys(tmp_path):
    path = _recipe(tmp_path, tmp_path, lambda_cos=1.0)
    recipe = load_recipe(path)
    assert recipe.stage == "align" and recipe.training.lambda_cos == 1.0
    with pytest.raises(RecipeError, match="lambda_co"):
        load_recipe(path, ["training.lambda_coss=1.0"])
    with pytest.raises(RecipeError, match="lambda_hidden must be >= 0"):
        load_recipe(path, ["training.lambda_hidden=-1"])
