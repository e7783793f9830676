"""BAGEL-7B-MoT's memory at real size: parameters, resident weights, LoRA, one GRPO step.

Everything is computed on the meta device from clear-rl's own module tree (whose keys and shapes
equal the official checkpoint's), so it needs no weights and no GPU and runs in seconds. The
formulas and assumptions are `clear_rl.models.bagel.memory`'s docstring; the table says them again.

`python -m benchmarks bagel_memory` writes its section of RESULTS.md;
`python -m benchmarks.bagel_memory --print` only prints it.
"""

from __future__ import annotations

import sys

from benchmarks.results import update_section
from clear_rl.eval.report import markdown_table
from clear_rl.models.bagel.memory import GIB, NF4_DOUBLE_QUANT, memory_report

SEQUENCE_LENGTHS = (2048, 4096, 8192)
COMPLETION_TOKENS = 512
LORA_RANK = 16


def billions(n: int) -> str:
    return f"{n / 1e9:.3f} B"


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def section() -> str:
    report = memory_report(
        sequence_lengths=SEQUENCE_LENGTHS, completion_tokens=COMPLETION_TOKENS, lora_rank=LORA_RANK
    )
    c = report["counts"]
    params = [
        [
            "understanding expert (28 MoT layers' Qwen2.5 weights + final norm)",
            billions(c.understanding_expert),
        ],
        ["generation expert (the `_moe_gen` twins + `norm_moe_gen`)", billions(c.generation_expert)],
        ["token embeddings + LM head (untied)", billions(c.embeddings_and_head)],
        ["ViT (SigLIP so400m/14, 26 layers)", billions(c.vit)],
        ["connector (1152 -> 3584 -> 3584)", billions(c.connector)],
        ["latent interface (time embedder, vae2llm, llm2vae)", billions(c.latent_interface)],
        ["**BAGEL checkpoint (`ema.safetensors`, sin-cos tables aside)**", billions(c.bagel)],
        ["VAE (FLUX, `ae.safetensors`)", billions(c.vae)],
        ["**total**", billions(c.total)],
        [
            "active per token (one expert + embeddings/head + ViT + connector + latent interface)",
            billions(c.bagel - c.generation_expert),
        ],
        [f"LoRA r={LORA_RANK} on q,k,v,o,gate,up,down of both experts", billions(report["lora_params"])],
    ]
    resident = [
        ["bf16 (2 B/param)", gib(report["resident_bf16"])],
        [
            f"NF4, double quant ({NF4_DOUBLE_QUANT:.5f} B/weight on {report['quantized_weights'] / 1e9:.2f} B "
            "quantised weights, rest bf16)",
            gib(report["resident_nf4"]),
        ],
        ["NF4, single quant (0.5625 B/weight, rest bf16)", gib(report["resident_nf4_single_quant"])],
        [
            "KV cache per context token (bf16, 28 layers x 4 KV heads x 128 x K,V)",
            f"{report['kv_bytes_per_token'] / 1024:.0f} KiB",
        ],
    ]
    step_rows = []
    for (base, n), step in report["steps"].items():
        step_rows.append(
            [
                base,
                n,
                gib(step.weights),
                gib(step.lora_states),
                gib(step.checkpointed_activations),
                gib(step.layer_recompute),
                gib(step.logits),
                gib(step.attention_mask),
                f"**{gib(step.total)}**",
            ]
        )
    return "\n\n".join(
        [
            "## BAGEL-7B-MoT memory at real size (`bagel_memory`)",
            "Computed on the meta device from clear-rl's BAGEL module tree (keys and shapes equal to "
            "the official `ema.safetensors`); no weights are loaded.",
            markdown_table(["parameters", "count"], params),
            markdown_table(["resident weights (BAGEL + VAE)", "GiB"], resident),
            f"Estimated peak of one GRPO micro-step with LoRA r={LORA_RANK} (one packed sequence of N "
            f"tokens, {COMPLETION_TOKENS} of them completion tokens with log-probs), in GiB. Assumptions: "
            "LoRA weights, gradients and AdamW's two moments in fp32 (16 B/param), `lora_dropout=0` (peft "
            "keeps no dropped input copies); activation "
            "checkpointing per MoT layer (each layer's bf16 input kept; one layer recomputed at a time, "
            "its saved tensors ~(4D + 2 kv + 4I) bf16 values per token, counted twice for their "
            "gradients); logits of the completion tokens only (bf16 logits + fp32 log-softmax + its "
            "gradient, 10 B per logit); the mask as an N x N bf16 bias for memory-efficient SDPA (no "
            "N x N scores kept); frozen ViT and VAE activations, CUDA context and allocator "
            "fragmentation not counted. A rollout's KV cache (above, per token) is not held during "
            "the step; a GRPO group's (G=8 contexts of 4096 tokens) is "
            f"{gib(8 * 4096 * report['kv_bytes_per_token'])} GiB. For scale: a 512x512 image is about 1300 "
            "ViT tokens (36-37 patches of 14 px a side, as the resize rounds) and 1024 latent tokens "
            "(32 x 32), "
            "markers aside, so a CLEAR sample with the degraded image as VAE and ViT blocks, a bridged "
            "restoration and a few hundred text tokens is about 4k tokens.",
            markdown_table(
                [
                    "base",
                    "N",
                    "weights",
                    "LoRA states",
                    "layer inputs",
                    "layer recompute",
                    "logits",
                    "mask",
                    "peak",
                ],
                step_rows,
            ),
        ]
    )


def main(write: bool = True) -> None:
    markdown = section()
    print(markdown)
    if write:
        update_section("bagel_memory", markdown)


if __name__ == "__main__":
    main(write="--print" not in sys.argv[1:])
