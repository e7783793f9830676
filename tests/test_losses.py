"""Loss terms: each sends gradients where it should and nowhere else; the distill's arithmetic."""

from types import SimpleNamespace

import pytest
import torch

from clear_rl.data.collate import ClearCollator
from clear_rl.models import build_tiny_model
from clear_rl.models.composed import ComposedUnifiedModel
from clear_rl.models.composed.parts import composed_part_paths
from clear_rl.trainers.losses import loss_terms, per_layer_kl
from tests.prepared import SMALL, prepared_rows


@pytest.fixture(scope="module")
def setup():
    model, processor = build_tiny_model(SMALL, seed=0)
    model.train()
    for param in model.parameters():
        param.requires_grad_(True)  # everything, the VAE and the ViT included: the losses must choose
    batch = ClearCollator.for_model(model, processor)(prepared_rows(4, size=32))
    return model, batch


def _parts_with_gradient(model) -> set[str]:
    paths = composed_part_paths(model)
    hit = set()
    for name, param in model.named_parameters():
        if param.grad is not None and bool(param.grad.abs().sum() > 0):
            part = next((p for p, prefixes in paths.items() if name.startswith(tuple(prefixes))), None)
            hit.add(part or name)
    return hit


def _gradient_parts(model, batch, term: str) -> set[str]:
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    terms = loss_terms(model, model.forward, batch, generator, with_mse=True, with_distill=True)
    value = {"ce": terms.ce_sum / terms.ce_tokens, "mse": terms.mse, "distill": terms.distill}[term]
    value.backward()
    return _parts_with_gradient(model)


def test_cross_entropy_trains_the_understanding_path_not_the_head(setup):
    model, batch = setup
    # The answer after the slot reads the bridged latent: the bridge learns from the text loss.
    assert _gradient_parts(model, batch, "ce") == {"llm", "vit", "projector", "bridge"}


def test_flow_mse_trains_head_and_context_but_not_the_bridge(setup):
    model, batch = setup
    parts = _gradient_parts(model, batch, "mse")
    # The head reads LLM states up to <image_restore>: the LLM (and the image path below it) learn,
    # the bridge (whose tokens come after) and the VAE (encoded without grad) do not.
    assert {"head", "llm", "vit", "projector"} <= parts
    assert "bridge" not in parts and "vae" not in parts
    lm_head = model.get_output_embeddings().weight
    assert lm_head.grad is None or float(lm_head.grad.abs().sum()) == 0.0


def test_distill_trains_bridge_and_llm_never_head_or_vae(setup):
    model, batch = setup
    parts = _gradient_parts(model, batch, "distill")
    assert {"bridge", "llm"} <= parts
    assert "head" not in parts and "vae" not in parts


def test_distill_treats_the_teacher_as_a_constant():
    student = torch.randn(3, 8, 4, 4, requires_grad=True)
    teacher = torch.randn(3, 8, 2, 2, requires_grad=True)
    per_layer_kl(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def test_per_layer_kl_is_zero_for_equal_grids_and_weights_higher_layers_more():
    states = torch.randn(1, 16, 4, 4).repeat(2, 1, 1, 1)  # two layers holding the same states
    assert float(per_layer_kl(states, states)) == pytest.approx(0.0, abs=1e-6)
    # Adaptive pooling matches a 4x4 student grid to a 2x2 teacher grid.
    pooled = torch.nn.functional.avg_pool2d(states, 2)
    assert float(per_layer_kl(states, pooled)) == pytest.approx(0.0, abs=1e-6)
    delta = torch.randn(16, 4, 4)
    off_first, off_last = states.clone(), states.clone()
    off_first[0] += delta
    off_last[1] += delta
    # The same disagreement costs twice as much at layer 2 (weight 2/3) as at layer 1 (1/3).
    first, last = float(per_layer_kl(off_first, states)), float(per_layer_kl(off_last, states))
    assert first > 0 and last == pytest.approx(2 * first)


def test_vit_grid_from_counts_and_from_qwen_style_grids(tiny):
    model, _ = tiny
    assert model.image_token_grid(None, 0, 64, None) == (8, 8)
    # Qwen2-VL style: a (t, h, w) patch grid merged 2x2 before the LLM: 6x8 patches -> 3x4 tokens.
    qwen_like = SimpleNamespace(
        config=SimpleNamespace(
            vlm_config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2))
        )
    )
    assert ComposedUnifiedModel.image_token_grid(qwen_like, None, 0, 12, torch.tensor([1, 6, 8])) == (3, 4)
    with pytest.raises(ValueError, match="pooled_mse"):
        model.image_token_grid(None, 0, 60, None)


def test_terms_are_absent_without_restoring_rows(setup):
    model, batch = setup
    direct = {k: v[1::2] for k, v in batch.items()}  # the odd rows are direct
    terms = loss_terms(model, model.forward, direct, torch.Generator(), with_mse=True, with_distill=True)
    assert terms.mse is None and terms.distill is None and terms.restore_rows == 0
    assert int(terms.ce_tokens) > 0


def test_vit_token_dropout_makes_restoring_answers_come_from_the_slot(setup):
    model, batch = setup
    restoring = {k: v[0::2] for k, v in batch.items()}  # the even rows restore

    def ce(inputs, dropout):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            terms = loss_terms(
                model,
                model.forward,
                inputs,
                generator,
                with_mse=False,
                with_distill=False,
                vit_token_dropout=dropout,
            )
        return float(terms.ce_sum), int(terms.ce_tokens)

    scrambled = {**restoring, "pixel_values": torch.randn_like(restoring["pixel_values"])}
    # Without dropout the answer reads the degraded image's ViT tokens; with it, it cannot.
    assert ce(restoring, 0.0)[0] != pytest.approx(ce(scrambled, 0.0)[0], rel=1e-6)
    assert ce(restoring, 1.0)[0] == pytest.approx(ce(scrambled, 1.0)[0], rel=1e-5)
    # The quality check before <image_restore> (about an image the row no longer sees) leaves the CE.
    assert ce(restoring, 1.0)[1] < ce(restoring, 0.0)[1]
