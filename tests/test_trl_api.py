"""Stage 3 refuses, at import, a TRL whose private trainer API differs from the tested one.

The installed TRL is the tested one, so a different release is simulated by monkeypatching the
signature of a method stage 3 overrides.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

import pytest
from trl import GRPOTrainer

from clear_rl.errors import DependencyError
from clear_rl.trainers import trl_api
from clear_rl.trainers.trl_api import check_grpo_api, declared_range, multimodal_keys


def _without_stage3(monkeypatch):
    """Make the next import of clear_rl.trainers.grpo run its module code again."""
    monkeypatch.delitem(sys.modules, "clear_rl.trainers.grpo", raising=False)


def test_the_installed_trl_passes():
    check_grpo_api()


def test_the_tested_range_is_read_from_clear_rl_requirements():
    declared = [r for r in importlib.metadata.requires("clear-rl") if r.startswith("trl")]
    assert declared, "clear-rl declares no trl requirement"
    bounds = declared_range("trl").split(",")
    assert bounds[0].startswith(">=") and bounds[1].startswith("<"), bounds
    assert all(bound in declared[0] for bound in bounds)


def test_a_changed_signature_stops_stage3_at_import_naming_version_and_range(monkeypatch):
    def renamed(self, inputs, prompts, completions):  # TRL dropped completion_ids_list, say
        return None

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", renamed)
    _without_stage3(monkeypatch)
    with pytest.raises(DependencyError) as error:
        importlib.import_module("clear_rl.trainers.grpo")
    message = str(error.value)
    assert "GRPOTrainer._calculate_rewards" in message
    assert "completion_ids_list" in message and "(inputs, prompts, completions)" in message
    assert f"trl {importlib.metadata.version('trl')}" in message
    assert f"trl{declared_range('trl')}" in message
    assert "clear_rl.trainers.grpo" not in sys.modules


def test_a_removed_method_and_a_new_required_parameter_are_both_listed(monkeypatch):
    def with_new_argument(self, model, inputs, num_items):
        return None

    monkeypatch.delattr(GRPOTrainer, "_generate_and_score_completions")
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", with_new_argument)
    with pytest.raises(DependencyError) as error:
        check_grpo_api()
    message = str(error.value)
    assert "GRPOTrainer._generate_and_score_completions: not defined" in message
    assert "GRPOTrainer._compute_loss: expected exactly (model, inputs)" in message


def test_a_transformers_trainer_method_names_transformers(monkeypatch):
    from transformers import Trainer

    def load(self, checkpoint_dir):  # transformers renamed the parameter
        return None

    monkeypatch.setattr(Trainer, "_load_rng_state", load)
    with pytest.raises(DependencyError) as error:
        check_grpo_api()
    message = str(error.value)
    assert "GRPOTrainer._load_rng_state" in message
    assert f"transformers {importlib.metadata.version('transformers')}" in message
    assert f"transformers{declared_range('transformers')}" in message


def test_a_changed_helper_is_reported(monkeypatch):
    import trl.trainer.utils

    monkeypatch.setattr(trl.trainer.utils, "use_adapter", lambda model, name: None)
    with pytest.raises(DependencyError, match=r"trl\.trainer\.utils\.use_adapter: expected the parameter"):
        check_grpo_api()


def test_an_added_optional_scoring_input_is_fine_and_becomes_a_multimodal_key(monkeypatch):
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def scoring(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                compute_entropy=False, compute_aux_loss=False, pixel_values=None,
                video_grid_thw=None):  # fmt: skip
        return original(self, model, input_ids, attention_mask, logits_to_keep, batch_size)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", scoring)
    check_grpo_api()
    assert multimodal_keys() == ("pixel_values", "video_grid_thw")


def test_multimodal_keys_are_trls_scoring_parameters():
    keys = multimodal_keys()
    assert "pixel_values" in keys and "image_grid_thw" in keys
    assert not set(keys) & set(trl_api.SCORING_PARAMETERS)
    import clear_rl.trainers.grpo as grpo

    assert grpo.MULTIMODAL_KEYS == keys


def test_a_missing_trainer_attribute_is_reported():
    class Stub:
        pass

    with pytest.raises(DependencyError, match="no attribute"):
        trl_api.check_grpo_attributes(Stub())
