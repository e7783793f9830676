"""GRPO rollout throughput: a group of G completions batched, as clear-rl runs it, against one at a time.

Stage 3 samples G completions per prompt. clear-rl generates them as one batch
(`answer_batch` -> `generate_interleaved`: one KV cache, restorations of the rows that restore
denoised together); the released CLEAR trainer writes them one completion at a time. Both run
here on the same prompt with a restoration in every completion (`restore: always`) and the
KV cache on, greedy, with the stop tokens made unreachable so every completion writes exactly
the budget: the two ways do the same work and must write identical completions.
"""

from __future__ import annotations

import time

import torch

from benchmarks._common import count_parameters, millions, suppress_tokens
from benchmarks.results import machine_line, update_section
from clear_rl.demo.shapes_vqa import generate_shapes_vqa
from clear_rl.eval.report import markdown_table
from clear_rl.models import TinyModelConfig, build_tiny_model
from clear_rl.rollout.answering import answer_batch
from clear_rl.rollout.interleaved import InterleavedGenerationConfig

G = 8
NEW_TOKENS = 48  # the demo recipe's max_completion_length
REPEATS = 3
TARGET = 4.0  # batched completions/s at least this many times the one-at-a-time rate
MODELS = {
    "tiny": TinyModelConfig(),
    # A Llama-style LLM of width 512 and depth 8 (~19M parameters) on the tiny ViT and VAE.
    "small": TinyModelConfig(llm_hidden_size=512, llm_layers=8, llm_heads=8, llm_kv_heads=4),
}


def _group(model, processor, image, question, config, size: int) -> tuple[float, list[torch.Tensor], int]:
    """(seconds, completions, written tokens) of G completions generated `size` at a time."""
    completions, tokens = [], 0
    start = time.perf_counter()
    for _ in range(0, G, size):
        answered = answer_batch(model, processor, [image] * size, [question] * size, config)
        out = answered.output
        completions += [ids[mask.bool()] for ids, mask in zip(out.completion_ids, out.completion_mask)]
        tokens += int(out.text_mask.sum())
    return time.perf_counter() - start, completions, tokens


def _median(runs: list[tuple[float, list[torch.Tensor], int]]) -> tuple[float, list[torch.Tensor], int]:
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def main() -> None:
    record = generate_shapes_vqa(1, seed=0)[0]
    config = InterleavedGenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, restore="always")
    rows, ratios = [], {}
    for name, model_config in MODELS.items():
        model, processor = build_tiny_model(model_config, seed=0)
        model.eval()
        ids = model.token_ids
        suppress_tokens(
            model.get_output_embeddings(), [model.config.get_text_config().eos_token_id, ids.answer_end]
        )
        _group(model, processor, record["image"], record["question"], config, G)  # warm-up
        batched = _median(
            [_group(model, processor, record["image"], record["question"], config, G) for _ in range(REPEATS)]
        )
        single = _median(
            [_group(model, processor, record["image"], record["question"], config, 1) for _ in range(REPEATS)]
        )
        same = all(torch.equal(a, b) for a, b in zip(batched[1], single[1]))
        ratios[name] = single[0] / batched[0]
        for label, (seconds, _, tokens) in (("batched (clear-rl)", batched), ("one at a time", single)):
            rows.append(
                [
                    f"{name} ({millions(count_parameters(model.vlm.model.language_model))} LLM)",
                    label,
                    f"{seconds:.2f}",
                    f"{G / seconds:.2f}",
                    f"{tokens / seconds:,.0f}",
                ]
            )
        rows[-2].append(f"**{ratios[name]:.1f}x**")
        rows[-1].append("1.0x")
        for row in rows[-2:]:
            row.append("yes" if same else "no")
            print(" | ".join(row), flush=True)
    summary = ", ".join(f"{ratio:.1f}x on {name}" for name, ratio in ratios.items())
    markdown = "\n\n".join(
        [
            "## GRPO rollout throughput: a batched group against one completion at a time (`rollout_throughput`)",
            f"One ShapesVQA prompt, G = {G} completions, {NEW_TOKENS} tokens each (stop tokens "
            "unreachable), a restoration in every completion (`restore: always`, the model's ODE "
            "steps), KV cache on, greedy, CPU, float32, random weights. Batched: the G completions "
            "as one `answer_batch` call (clear-rl's rollouts); one at a time: G calls of batch 1 "
            f"(the released trainer's way). Median of {REPEATS} groups after one warm-up group. "
            "'same': both ways wrote identical completions.",
            markdown_table(
                ["model", "generation", "s / group", "completions/s", "tokens/s", "speedup", "same"], rows
            ),
            f"**Batched / one at a time: {summary}** (target at least {TARGET:.0f}x at G = {G}).",
            machine_line(),
        ]
    )
    update_section("rollout_throughput", markdown)


if __name__ == "__main__":
    main()
