"""Interleaved generation speed: the KV cache against recomputing the whole prefix at every token.

`generate_interleaved` keeps one KV cache for the batch, restorations included (rows that do not
restore get masked holes). This measures what that buys on the tiny model and on a "small"
composed model whose LLM is big enough for the cache to matter, with and without a restoration
in each completion. Greedy decoding with the stop tokens made unreachable, so every row writes
exactly the token budget and both paths do the same work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from benchmarks._common import PhaseTimer, count_parameters, millions, suppress_tokens
from benchmarks.results import machine_line, update_section
from clear_rl.demo.shapes_vqa import generate_shapes_vqa
from clear_rl.eval.report import markdown_table
from clear_rl.models import TinyModelConfig, build_tiny_model
from clear_rl.models.processing import prompt_texts, vae_pixel_values
from clear_rl.rollout.interleaved import InterleavedGenerationConfig, _Rollout, generate_interleaved

BATCH = 8
NEW_TOKENS = (64, 128)
POLICIES = ("never", "always")
CACHED_REPEATS = 3  # the uncached path runs once: it is the slow one, and its figures are not close
# Recomputing the prefix on the small model takes minutes on a small CPU; with a restoration it
# costs what the same run without one does, plus the restoration (the tiny model shows both).
UNCACHED_SKIPPED = {("small", "always", 64), ("small", "always", 128)}
MODELS = {
    "tiny": TinyModelConfig(),
    # A Llama-style LLM of width 512 and depth 8 (~19M parameters) on the tiny ViT and VAE.
    "small": TinyModelConfig(llm_hidden_size=512, llm_layers=8, llm_heads=8, llm_kv_heads=4),
}


@dataclass
class Run:
    seconds: float
    restore_seconds: float
    text_tokens: int
    completion_ids: torch.Tensor


def _inputs(processor, model) -> dict:
    records = generate_shapes_vqa(BATCH, seed=0)
    images = [record["image"] for record in records]
    encoded = processor(
        images=[[image] for image in images],
        text=prompt_texts(processor, [record["question"] for record in records]),
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    return {**encoded, "vae_pixel_values": vae_pixel_values(images, model.config.vae_image_size)}


def _generate(model, inputs, new_tokens: int, restore: str, use_cache: bool) -> Run:
    config = InterleavedGenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, restore=restore, use_cache=use_cache
    )
    with PhaseTimer() as timer:
        timer.wrap(_Rollout, "restore", "restore")  # VAE encode of the input + the denoising loop
        start = time.perf_counter()
        out = generate_interleaved(model, config=config, **inputs)
        seconds = time.perf_counter() - start
    return Run(seconds, timer.seconds["restore"], int(out.text_mask.sum()), out.completion_ids)


def _median_run(model, inputs, new_tokens, restore, use_cache, repeats) -> Run:
    runs = sorted(
        (_generate(model, inputs, new_tokens, restore, use_cache) for _ in range(repeats)),
        key=lambda run: run.seconds,
    )
    return runs[len(runs) // 2]


def _rates(run: Run | None) -> list[str]:
    """Written tokens per second, overall and leaving the restorations' time out."""
    if run is None:
        return ["not run", "not run"]
    text_seconds = run.seconds - run.restore_seconds
    return [f"{run.text_tokens / run.seconds:,.0f}", f"{run.text_tokens / text_seconds:,.0f}"]


def _row(name: str, restore: str, new_tokens: int, cached: Run, uncached: Run | None) -> list[object]:
    restore_ms = "-"
    if restore != "never":
        restore_ms = f"{cached.restore_seconds * 1e3:,.0f}"
        if uncached is not None:
            restore_ms += f" / {uncached.restore_seconds * 1e3:,.0f}"
    if uncached is None:
        speedup = same = "-"
    else:
        speedup = f"**{uncached.seconds / cached.seconds:.1f}x**"
        same = "yes" if torch.equal(cached.completion_ids, uncached.completion_ids) else "no"
    return [name, restore, new_tokens, *_rates(cached), *_rates(uncached), restore_ms, speedup, same]


def main() -> None:
    rows, notes = [], []
    for name, model_config in MODELS.items():
        model, processor = build_tiny_model(model_config, seed=0)
        model.eval()
        ids = model.token_ids
        eos = model.config.get_text_config().eos_token_id
        suppress_tokens(model.get_output_embeddings(), [eos, ids.answer_end])
        inputs = _inputs(processor, model)
        prompt_length = inputs["input_ids"].shape[1]
        notes.append(
            f"`{name}`: LLM {model_config.llm_layers} layers x {model_config.llm_hidden_size} "
            f"({millions(count_parameters(model.vlm.model.language_model))} parameters), prompt {prompt_length} "
            f"tokens ({model.vlm.config.image_seq_length} image tokens), a restoration = "
            f"{model.config.num_inference_steps} denoising steps + {model.num_restored_tokens} bridged tokens"
        )
        _generate(model, inputs, 8, "always", True)  # warm-up, restoration included
        for restore in POLICIES:
            for new_tokens in NEW_TOKENS:
                cached = _median_run(model, inputs, new_tokens, restore, True, CACHED_REPEATS)
                skip = (name, restore, new_tokens) in UNCACHED_SKIPPED
                uncached = None if skip else _generate(model, inputs, new_tokens, restore, False)
                rows.append(_row(name, restore, new_tokens, cached, uncached))
                print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
    header = [
        "model",
        "restore",
        "new tokens",
        "cache tok/s",
        "cache tok/s excl. restore",
        "no-cache tok/s",
        "no-cache tok/s excl. restore",
        "restoration ms (cache / no cache)",
        "speedup",
        "same tokens",
    ]
    markdown = "\n\n".join(
        [
            "## Interleaved generation: KV cache vs recomputing the prefix (`generation_speed`)",
            f"`generate_interleaved`, batch {BATCH}, greedy, stop tokens unreachable so each row writes "
            "exactly the budget; tok/s counts model-written tokens (bridged placeholders excluded). "
            "`restore: always` puts one restoration in every completion; its time (VAE encode of the "
            "input + the ODE denoising loop) is also given on its own, and the 'excl. restore' rates "
            "leave it out. Speedup = uncached time / cached time. 'same tokens': the two paths wrote "
            f"identical completions. Cached runs: median of {CACHED_REPEATS}; uncached: one run; "
            "after one warm-up generation per model. CPU, float32, random weights. 'not run': "
            "the uncached small model with restorations is left out to keep the benchmark within a "
            "few minutes; uncached, a restoration adds its own time to the run without one (compare "
            "the tiny model's rows).",
            "\n".join(f"- {note}" for note in notes),
            markdown_table(header, rows),
            machine_line(),
        ]
    )
    update_section("generation_speed", markdown)


if __name__ == "__main__":
    main()
