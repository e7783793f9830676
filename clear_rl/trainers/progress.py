"""A console for a person: one labelled progress bar per stage, with a short line of metrics.

transformers' `ProgressCallback` draws an unlabelled bar and prints every log as a dict of a dozen
or more keys; over a pipeline of six stages that is thousands of lines nobody reads. This callback
replaces it (and `PrinterCallback`): the bar is named after the stage, and each log updates the
bar's postfix with the few metrics that say whether the stage is learning.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

# Shown when present, in this order; everything else stays in the trainer's log history.
DEFAULT_KEYS = (
    "loss", "ce_loss", "mse_loss", "distill_loss", "align_cos", "reward", "flow_loss",
    "restore_fraction", "completions/restored_fraction",
)  # fmt: skip


class StageProgressCallback(TrainerCallback):
    """A tqdm bar labelled `label`; each log sets its postfix to the `keys` it holds."""

    def __init__(self, label: str, keys: Sequence[str] = DEFAULT_KEYS):
        self.label, self.keys = label, tuple(keys)
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc=self.label, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        shown = {
            key.split("/")[-1]: logs[key] for key in self.keys if isinstance(logs.get(key), (int, float))
        }
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def attach_callbacks(trainer, callbacks: Sequence[TrainerCallback]) -> None:
    """Add a stage's extra callbacks; a `StageProgressCallback` replaces the default bar and printer."""
    if any(isinstance(c, StageProgressCallback) for c in callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    for callback in callbacks:
        trainer.add_callback(callback)
