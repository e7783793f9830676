"""Probe labelling for `clear-rl prepare --label probe`: ask a model each question on the degraded
and on the clean image.

As in the paper, a row the model answers wrongly on its degraded image becomes restore-then-answer;
by default it must also answer the clean image rightly (otherwise restoring would not help it, and
the row stays direct). Answers come from greedy decoding with restoration banned, scored with the
same rule-based matching as the accuracy reward, asked with the probed model's own system prompt
and chat settings (the ones it was trained with, `models.chat`) unless the settings give one.

This sits above generation and eval (it runs the model), so `data.prepare` never imports it: the
caller (`clear-rl prepare`, the demo) builds a `Prober` and hands it to `prepare_dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from clear_rl.data.prompts import format_question
from clear_rl.data.samples import ProbeSettings
from clear_rl.data.sources import SourceRow
from clear_rl.eval.extract import score_answer
from clear_rl.models.chat import OWN_PROMPT, resolve_chat
from clear_rl.rollout.answering import answer_batch, vae_view_groups
from clear_rl.rollout.interleaved import InterleavedGenerationConfig


class Prober:
    """A model that says, per row, whether it answers correctly; it is loaded on first use, so a
    bad source is reported before a large model is read."""

    def __init__(self, settings: ProbeSettings):
        self.settings = settings
        self.model = None

    def _load(self) -> None:
        from clear_rl.models.io import load_unified

        settings = self.settings
        model, self.processor = load_unified(settings.model_path)
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        own = OWN_PROMPT if settings.system_prompt is None else settings.system_prompt
        self.chat = resolve_chat(own, model, "ProbeSettings.system_prompt")
        self.generation = InterleavedGenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=False, restore="never"
        )

    def correct(self, images: Sequence[Image.Image], rows: Sequence[SourceRow]) -> list[bool]:
        """Whether the greedy answer on each image scores >= 0.5 against its row's answer."""
        if self.model is None:
            self._load()
        verdicts: dict[int, bool] = {}
        size = self.settings.batch_size
        for start in range(0, len(rows), size):
            batch = list(range(start, min(start + size, len(rows))))
            # One VAE view size per generation (BAGEL keeps each image's aspect ratio).
            for group in vae_view_groups(self.processor, [images[i] for i in batch]):
                picked = [batch[g] for g in group]
                answered = answer_batch(
                    self.model,
                    self.processor,
                    [images[i] for i in picked],
                    [format_question(rows[i].question, rows[i].options) for i in picked],
                    self.generation,
                    system_prompt=self.chat.system_prompt,
                    chat_template_kwargs=self.chat.chat_template_kwargs,
                )
                for i, text in zip(picked, answered.texts):
                    verdicts[i] = score_answer(text, rows[i].answer, rows[i].options) >= 0.5
        return [verdicts[i] for i in range(len(rows))]

    def labels(self, rows: Sequence[SourceRow], degraded: Sequence[Image.Image]) -> list[str]:
        """`restore` where the degraded image is answered wrongly (and the clean one rightly)."""
        wrong = [not ok for ok in self.correct(degraded, rows)]
        if self.settings.require_clean_correct:
            failing = [i for i, w in enumerate(wrong) if w]
            clean_ok = self.correct([rows[i].image for i in failing], [rows[i] for i in failing])
            for i, ok in zip(failing, clean_ok):
                wrong[i] = ok
        return ["restore" if w else "direct" for w in wrong]
