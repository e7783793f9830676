"""What every stage does around its trainer: build the model, load the data, save the result."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import datasets
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from clear_rl.data.disk import check_saved_split
from clear_rl.data.samples import PREPARED_COLUMNS as _PREPARED_COLUMNS
from clear_rl.errors import ClearRLError, DataError
from clear_rl.models import TinyModelConfig, build_tiny_model, compose_from_pretrained
from clear_rl.models.adapters import apply_lora, set_trainable_parts
from clear_rl.models.backbone import TrainableBackbone
from clear_rl.models.io import is_model_folder, load_unified
from clear_rl.models.registry import unified_core
from clear_rl.models.settings import text_tags_training_error
from clear_rl.recipe import ModelConfig, Recipe, build_dataclass
from clear_rl.runs import (
    CHECKPOINT_COMPLETE,
    begin_run,
    checkpoint_marker,
    checkpoint_run,
    checkpoints,
    current_run,
    is_last,
    mark_finished,
)
from clear_rl.trainers.arguments import AutoPrecisionArguments

logger = logging.getLogger(__name__)

# Columns a prepared dataset (`clear-rl prepare`) has; stages check the ones they need.
PREPARED_COLUMNS = _PREPARED_COLUMNS
# Parts trained in full when neither the recipe nor the stage's config names any.
DEFAULT_TRAINABLE_PARTS = AutoPrecisionArguments.default_trainable_parts


def load_model(config: ModelConfig, where: str = "model"):
    """(model, processor) from the recipe's `model:` section, before any freezing or LoRA."""
    if config.path is not None:
        model, processor = load_unified(
            config.path,
            dtype=config.dtype,
            is_trainable=True,
            backbone=config.backbone,
            load_in_4bit=config.load_in_4bit,
            preset=config.preset,
            tags=config.tags,
        )
        if getattr(model, "turn_rules", None) is not None:  # tags as text: checked by preflight too
            raise ClearRLError(text_tags_training_error(f"{where}.path {config.path}", "the loaded model's"))
        if hasattr(processor, "vae_views"):  # BAGEL: a training pass packs one latent size
            processor.vae_views = "square"
        return model, processor
    if config.tiny is not None:
        return build_tiny_model(build_dataclass(TinyModelConfig, config.tiny, f"{where}.tiny"))
    return compose_from_pretrained(
        config.vlm_path,
        config.vae_path,
        vae_subfolder=config.vae_subfolder,
        load_in_4bit=config.load_in_4bit,
        torch_dtype=config.dtype,
        vae_image_size=config.vae_image_size,
        head=config.head,
        bridge=config.bridge,
        flow_source=config.flow_source,
    )


def keep_base_for_adapters(model: TrainableBackbone, processor, folder: str | Path, args=None) -> None:
    """Save a freshly built model as the base its LoRA adapters will load onto.

    An adapter folder names its base model's folder; a model composed or built in memory has none,
    so it is saved to `folder` (by the main process of `args`, a TrainingArguments, when given)
    and named there.
    """
    import contextlib

    from clear_rl.models.io import save_unified

    current = Path(model.name_or_path or "")
    if str(model.name_or_path or "") and is_model_folder(current):
        return
    together = args.main_process_first(local=False, desc="saving the adapters' base model") if args else None
    with together or contextlib.nullcontext():
        if args is None or args.process_index == 0:
            save_unified(model, processor, folder)
    model.name_or_path = model.config._name_or_path = str(Path(folder).resolve())


def make_trainable(model, config: ModelConfig, default_parts=DEFAULT_TRAINABLE_PARTS):
    """Freeze/unfreeze parts, or add LoRA adapters, as the recipe says; returns the model to train.

    Without `model.lora`, the parts in `model.trainable_parts` (else `default_parts`) train in full
    and everything else is frozen. A model loaded from an adapter folder keeps training its adapters.
    """
    if hasattr(model, "peft_config"):
        if config.lora is not None:
            logger.info("model.path holds LoRA adapters; they are trained further and model.lora is ignored")
        return model
    if config.lora is not None:
        if config.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return apply_lora(model, config.lora)
    if config.load_in_4bit:
        raise ClearRLError("model.load_in_4bit trains only through LoRA: add a model.lora section")
    set_trainable_parts(
        model, config.trainable_parts if config.trainable_parts is not None else default_parts
    )
    return model


def build_model(
    config: ModelConfig,
    where: str = "model",
    adapter_base_dir: str | Path | None = None,
    args=None,
):
    """(model, processor) as the recipe's `model:` section says, with its trainable parts set.

    Parts train as `model.trainable_parts` says, else as the stage's config (`args`) does by
    default. With LoRA on a model that has no folder of its own, pass `adapter_base_dir` (e.g.
    `<output_dir>/base`) so the saved adapters can be loaded again (only the main process of
    `args` writes it).
    """
    model, processor = load_model(config, where)
    if adapter_base_dir is not None and config.lora is not None and not hasattr(model, "peft_config"):
        keep_base_for_adapters(model, processor, adapter_base_dir, args)
    default_parts = getattr(args, "default_trainable_parts", DEFAULT_TRAINABLE_PARTS)
    return make_trainable(model, config, default_parts), processor


def load_split(path: str, split: str, max_samples: int | None = None, required=PREPARED_COLUMNS):
    """One split of a prepared dataset folder, checked for the columns a stage needs."""
    check_saved_split(path, split, required)
    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded[split]
    if max_samples is not None:
        loaded = loaded.select(range(min(max_samples, len(loaded))))
    return loaded


def start_run(recipe: Recipe) -> Path:
    """What every stage does first: check the recipe's inputs and its output folder (before any
    model loads or anything is written, `preflight.check_inputs`), say where the run writes, and
    record the run there (main process: `runs.begin_run` saves the merged recipe and the run
    record, after clearing the old run under `recipe.overwrite`), so that even a run that stops
    early can be told apart and resumed. Returns the output folder."""
    from clear_rl.preflight import check_inputs

    check_inputs(recipe)
    args = recipe.training
    output_dir = Path(args.output_dir).resolve()
    logger.info("%s stage: writing checkpoints and the model to %s", recipe.stage, output_dir)
    if args.process_index == 0:
        begin_run(recipe, output_dir)
    return output_dir


def finish(trainer, processor, recipe: Recipe) -> None:
    """Save the final model and processor into output_dir (main process), beside the resolved
    recipe `start_run` saved, then mark the run finished."""
    trainer.save_whole_model(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(trainer.args.output_dir)
        mark_finished(trainer.args.output_dir, trainer.state.global_step)


class LossOnlyEvaluationMixin:
    """For `transformers.Trainer` subclasses whose `compute_loss` logs its own terms: evaluation
    reports the loss (and those terms) only, no logits are gathered."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class UnifiedCheckpointMixin:
    """For `transformers.Trainer` subclasses: checkpoints that are complete or skipped, and full
    unified models resumed through `from_pretrained`.

    `save_pretrained` writes a wrapped VLM's weights under their original checkpoint names (e.g.
    LLaVA's `language_model.model.*`), which `Trainer`'s plain `load_state_dict` does not find when
    resuming, silently leaving the weights as they were. Adapter, FSDP and DeepSpeed checkpoints
    take Trainer's own path. Put it first among the bases: `class T(UnifiedCheckpointMixin, SFTTrainer)`.
    """

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's own checkpoint, then `CHECKPOINT_COMPLETE` once every process has written its part.

        A completion marker, not a write-then-rename: every process writes into `checkpoint-N/`
        (weights, optimizer, `rng_state_<rank>.pth`, FSDP and DeepSpeed shards) and Trainer's
        best-model and rotation logic name that folder, so no single process could rename it into
        place. Rotation (`save_total_limit`) waits for the marker: a kill in between never leaves
        the folder without a complete checkpoint. Guards against a killed process, not power loss.
        """
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        marker = folder / CHECKPOINT_COMPLETE
        if self.args.should_save:
            marker.unlink(missing_ok=True)  # this save rewrites the folder: not complete until it ends
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            marker.write_text(checkpoint_marker(self.args.output_dir, self.state.global_step))
            rotate_checkpoints(
                output_dir=str(folder.parent),
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def save_whole_model(self, output_dir: str) -> None:
        """The final model as one loadable folder, whatever the checkpoints' layout.

        Trainer's `save_model` writes nothing under FSDP's sharded state dicts and a DeepSpeed
        checkpoint under ZeRO-3 without 16-bit gathering; the weights are gathered whole here
        (every process takes part, the main process writes).
        """
        from clear_rl.trainers.sharding import is_sharded

        if not is_sharded(self.accelerator):
            return self.save_model(output_dir)
        if self.is_deepspeed_enabled:
            state_dict = self.model_wrapped._zero3_consolidated_16bit_state_dict()
        else:
            state_dict = self.accelerator.get_state_dict(self.model)
        self._save(output_dir, state_dict=state_dict)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Trainer's save, but a unified model that is no `PreTrainedModel` (BAGEL) writes its own
        layout (`save_pretrained`) rather than Trainer's bare state dict."""
        from transformers.trainer import TRAINING_ARGS_NAME

        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PreTrainedModel | PeftModel):
            # peft looks for the adapters' base folder's config.json to tell whether the vocabulary
            # was resized; BAGEL's folder has none and its vocabulary never resizes (the tags use
            # unused rows), so peft's "will assume that the vocabulary was not modified" is right.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Could not find a config file in")
                return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir, state_dict=state_dict)  # gathered whole, when sharded
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / TRAINING_ARGS_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        own = self.accelerator.unwrap_model(model)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # their own sharded checkpoints
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if isinstance(own, PeftModel) or (folder / "adapter_config.json").exists():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        own.load_saved_weights(folder)  # what `_save` wrote, in the model's own layout


def resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """`training.resume_from_checkpoint`: a checkpoint folder, or `last` (`true`) for the newest
    complete one in output_dir (it holds `CHECKPOINT_COMPLETE`) that this run wrote; incomplete
    ones (a save that was killed) and another run's are named in a warning and skipped, and
    finding none is a warning too. A checkpoint another run wrote is never resumed
    (`runs.check_output_dir` refuses one given by path before the run starts)."""
    if value is None:
        return None
    run = current_run(output_dir)
    if not is_last(value):
        if Path(value).is_dir() and not (Path(value) / CHECKPOINT_COMPLETE).exists():
            logger.warning(
                "resume_from_checkpoint=%s lacks %s: its save may not have finished; resuming from it as asked",
                value,
                CHECKPOINT_COMPLETE,
            )
        elif run is not None and checkpoint_run(Path(value)) not in (None, run):
            raise ClearRLError(
                f"resume_from_checkpoint={value} was written by another run; it is not resumed"
            )
        return value
    folder = Path(output_dir)
    for checkpoint in checkpoints(folder):
        if not (checkpoint / CHECKPOINT_COMPLETE).exists():
            logger.warning(
                "resume_from_checkpoint=%s: skipping %s, whose save did not finish (no %s)",
                value,
                checkpoint,
                CHECKPOINT_COMPLETE,
            )
        elif run is not None and checkpoint_run(checkpoint) != run:
            logger.warning(
                "resume_from_checkpoint=%s: skipping %s, written by another run (%s; this one is %s)",
                value,
                checkpoint,
                checkpoint_run(checkpoint) or "a run that did not record itself",
                run,
            )
        else:
            logger.info("resume_from_checkpoint=%s: resuming from %s", value, checkpoint)
            return str(checkpoint)
    logger.warning(
        "resume_from_checkpoint=%s: no complete checkpoint in %s; training starts from the beginning",
        value,
        folder,
    )
    return None


def run_stage(
    recipe: Recipe,
    trainer_class,
    select=None,
    labels_after_slot: bool = False,
    callbacks=(),
):
    """Build model and data from the recipe, train with `trainer_class`, save; returns the trainer.

    `select(dataset) -> dataset` narrows the rows a stage trains on (stage 2: restoring rows);
    `labels_after_slot` puts the CE on the text after the restored slot only (stage 2);
    `callbacks` are extra `TrainerCallback`s (see trainers/progress.py).
    """
    from clear_rl.data.collate import ClearCollator
    from clear_rl.trainers.progress import attach_callbacks

    args = recipe.training
    start_run(recipe)
    data = recipe.data
    train_dataset = load_split(data.path, data.split, data.max_samples)
    eval_dataset = load_split(data.path, data.eval_split, data.max_samples) if data.eval_split else None
    if select is not None:
        train_dataset = select(train_dataset)
        eval_dataset = select(eval_dataset) if eval_dataset is not None else None
    if len(train_dataset) == 0:
        raise DataError(f"{data.path} split '{data.split}' has no rows this stage can train on")
    seed_everything(args.seed)
    base_dir = Path(args.output_dir) / "base"
    model, processor = build_model(recipe.model, adapter_base_dir=base_dir, args=args)
    collator = ClearCollator.for_model(unified_core(model), processor, data.system_prompt, labels_after_slot)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
    )
    attach_callbacks(trainer, callbacks)
    trainer.train(resume_from_checkpoint=resume_checkpoint(args.resume_from_checkpoint, args.output_dir))
    finish(trainer, processor, recipe)
    return trainer


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (transformers' set_seed) and return a generator for our own draws."""
    from transformers import set_seed

    set_seed(seed)
    return torch.Generator().manual_seed(seed)
