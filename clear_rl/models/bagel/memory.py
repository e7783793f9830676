"""How much memory BAGEL-7B-MoT takes at real size, computed on the meta device (no memory used).

Counts come from the module tree itself; bytes from stated formulas:

- bf16: 2 bytes per parameter.
- NF4 (bitsandbytes `Linear4bit`, `quant_type="nf4"`, blocks of 64): 0.5 byte per weight, plus the
  block scales: with double quantisation (bitsandbytes' default `compress_statistics=True`, as
  `quantize_4bit` loads) an 8-bit absmax per 64 weights and an fp32 absmax per 256 of those blocks,
  0.5 + 1/64 + 4/(64*256) = 0.51587 B/weight; without it an fp32 absmax per block,
  0.5 + 4/64 = 0.5625 B/weight. Biases and every Linear that `quantize_4bit` skips (LM head,
  patch embedding, time embedder, vae2llm, llm2vae), embeddings, norms and the VAE stay bf16.
- LoRA on the seven linears of both experts (q, k, v, o, gate, up, down and their `_moe_gen`
  twins, every layer): r * (in + out) parameters each.
- One GRPO step with LoRA (`grpo_step_memory`): base weights + LoRA weights, gradients and AdamW's
  two moments, all fp32 (16 B/param; `lora_dropout=0`, so peft keeps no dropped input copies),
  + activations under per-layer activation checkpointing:
  each MoT layer's input (N x D, bf16) is kept, and one layer at a time is recomputed in backward
  (its saved tensors, ~(4D + 2 kv_dim + 4I) bf16 values per token, taken twice for their
  gradients), + the LM-head logits of the completion tokens (bf16 logits, fp32 log-softmax and
  its gradient: 10 B per logit), + the attention mask as an (N x N) bf16 bias (memory-efficient
  SDPA; no N x N scores are stored). The ViT and VAE are frozen and carry no LoRA, so their
  activations are transient and left out, as are the CUDA context and allocator fragmentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from clear_rl.models.bagel.config import BagelConfig
from clear_rl.models.bagel.io import quantizable
from clear_rl.models.bagel.modeling import BagelModel

GIB = 1024**3
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_DOUBLE_QUANT = 0.5 + 1 / 64 + 4 / (64 * 256)
NF4_SINGLE_QUANT = 0.5 + 4 / 64


def lora_target_modules() -> str:
    """peft `target_modules` for the seven linears of both experts, as a full-match regex.

    A plain list would miss the generation expert (peft matches name suffixes, and `q_proj` does
    not match `q_proj_moe_gen`) and hit SigLIP's own `q_proj`/`k_proj`/`v_proj`; the regex names
    the `_moe_gen` twins and stays inside the language model's layers.
    """
    names = "|".join(LORA_TARGETS)
    return rf"language_model\.model\.layers\.\d+\.(self_attn|mlp|mlp_moe_gen)\.({names})(_moe_gen)?"


def meta_model(config: BagelConfig | None = None) -> BagelModel:
    with torch.device("meta"):
        return BagelModel(config or BagelConfig())


@dataclass
class ParameterCounts:
    understanding_expert: int  # MoT layers' understanding weights + final norm
    generation_expert: int  # the `_moe_gen` twins + norm_moe_gen
    embeddings_and_head: int  # embed_tokens + lm_head (untied)
    vit: int
    connector: int
    latent_interface: int  # time_embedder, vae2llm, llm2vae
    vae: int

    @property
    def bagel(self) -> int:
        """Everything in the checkpoint (ema.safetensors), the sin-cos tables aside."""
        return (
            self.understanding_expert
            + self.generation_expert
            + self.embeddings_and_head
            + self.vit
            + self.connector
            + self.latent_interface
        )

    @property
    def total(self) -> int:
        return self.bagel + self.vae


def count_parameters(model: BagelModel) -> ParameterCounts:
    groups = dict.fromkeys(("und", "gen", "embed", "vit", "connector", "latent"), 0)
    for name, param in model.named_parameters():
        n = param.numel()
        if name.startswith("language_model.model.layers.") or name.startswith("language_model.model.norm"):
            groups["gen" if "_moe_gen" in name else "und"] += n
        elif name.startswith("language_model."):
            groups["embed"] += n
        elif name.startswith("vit_model."):
            groups["vit"] += n
        elif name.startswith("connector."):
            groups["connector"] += n
        else:
            groups["latent"] += n
    return ParameterCounts(
        understanding_expert=groups["und"],
        generation_expert=groups["gen"],
        embeddings_and_head=groups["embed"],
        vit=groups["vit"],
        connector=groups["connector"],
        latent_interface=groups["latent"],
        vae=sum(p.numel() for p in model.vae.parameters()),
    )


def quantized_weight_count(model: BagelModel) -> int:
    """Weights that `quantize_4bit` turns into NF4 (its biases stay bf16)."""
    return sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if type(module) is nn.Linear and quantizable(name)
    )


def lora_parameter_count(model: BagelModel, rank: int = 16) -> int:
    pattern = re.compile(lora_target_modules())
    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and pattern.fullmatch(name)
    )


def resident_bytes(model: BagelModel, base: str = "bf16", double_quant: bool = True) -> int:
    """Bytes of the loaded weights (BAGEL + VAE) for `base` "bf16" or "nf4"."""
    counts = count_parameters(model)
    if base == "bf16":
        return 2 * counts.total
    if base != "nf4":
        raise ValueError(f"base must be 'bf16' or 'nf4', got {base!r}")
    quantized = quantized_weight_count(model)
    per_weight = NF4_DOUBLE_QUANT if double_quant else NF4_SINGLE_QUANT
    return int(per_weight * quantized + 2 * (counts.total - quantized))


@dataclass
class StepMemory:
    """Estimated peak bytes of one GRPO step with LoRA, by part."""

    weights: int
    lora_states: int
    checkpointed_activations: int
    layer_recompute: int
    logits: int
    attention_mask: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.lora_states
            + self.checkpointed_activations
            + self.layer_recompute
            + self.logits
            + self.attention_mask
        )


def grpo_step_memory(
    model: BagelModel,
    sequence_length: int,
    completion_tokens: int,
    base: str = "nf4",
    lora_rank: int = 16,
) -> StepMemory:
    """Peak memory of one GRPO micro-step over one packed sequence of `sequence_length` tokens
    (text + ViT + latent tokens), `completion_tokens` of which get log-probs; see the module
    docstring for what is counted."""
    cfg = model.config
    llm = cfg.llm_json
    d, inter, layers = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    kv_dim = llm["num_key_value_heads"] * cfg.head_dim
    n = sequence_length
    per_token_layer = (4 * d + 2 * kv_dim + 4 * inter) * 2
    return StepMemory(
        weights=resident_bytes(model, base),
        lora_states=16 * lora_parameter_count(model, lora_rank),
        checkpointed_activations=layers * n * d * 2,
        layer_recompute=2 * n * per_token_layer,
        logits=10 * completion_tokens * llm["vocab_size"],
        attention_mask=2 * n * n,
    )


def kv_cache_bytes_per_token(config: BagelConfig | None = None, dtype_bytes: int = 2) -> int:
    """Keys and values of one token in every layer (rollouts hold these for the whole context)."""
    cfg = config or BagelConfig()
    return 2 * cfg.num_layers * cfg.llm_json["num_key_value_heads"] * cfg.head_dim * dtype_bytes


def memory_report(
    config: BagelConfig | None = None,
    sequence_lengths: tuple[int, ...] = (2048, 4096, 8192),
    completion_tokens: int = 512,
    lora_rank: int = 16,
) -> dict:
    """Every figure above for one config (default: BAGEL-7B-MoT), as plain numbers."""
    model = meta_model(config)
    counts = count_parameters(model)
    steps = {
        (base, n): grpo_step_memory(model, n, completion_tokens, base, lora_rank)
        for base in ("bf16", "nf4")
        for n in sequence_lengths
    }
    return {
        "counts": counts,
        "quantized_weights": quantized_weight_count(model),
        "lora_params": lora_parameter_count(model, lora_rank),
        "resident_bf16": resident_bytes(model, "bf16"),
        "resident_nf4": resident_bytes(model, "nf4"),
        "resident_nf4_single_quant": resident_bytes(model, "nf4", double_quant=False),
        "kv_bytes_per_token": kv_cache_bytes_per_token(model.config),
        "steps": steps,
        "completion_tokens": completion_tokens,
        "lora_rank": lora_rank,
    }
