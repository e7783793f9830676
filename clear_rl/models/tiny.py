"""`tiny`: a small composed unified model, tokenizer and processor built entirely in code.

For tests and `make demo`: a LLaVA-style VLM (CLIP-style ViT + Llama-style LLM), a small
`AutoencoderKL`, a 2-layer DiT head and the bridge, with a byte-level BPE tokenizer trained on a
given corpus. Nothing is downloaded, and it builds in a few seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from clear_rl.models.assemble import compose_unified
from clear_rl.models.composed import ComposedUnifiedModel
from clear_rl.models.tokens import SYSTEM_PROMPT

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
BASE_SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|system|>", "<|user|>", "<|assistant|>"]
BASE_CORPUS = (
    SYSTEM_PROMPT,
    "The image is clear. The image is degraded: noise, blur, low light, compression.",
    "Restore the image first. Answer the question with the option's letter.",
    "What is shown in the image? The answer is A. B. C. D. yes no 0 1 2 3 4 5 6 7 8 9",
)


@dataclass
class TinyModelConfig:
    """Sizes of the tiny model; the defaults build in about a second."""

    image_size: int = 64
    vit_hidden_size: int = 64
    vit_layers: int = 2
    vit_patch_size: int = 8
    llm_hidden_size: int = 128
    llm_layers: int = 4
    llm_heads: int = 4
    llm_kv_heads: int = 2
    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    head_layers: int = 2
    head_heads: int = 4
    head_head_dim: int = 16
    bridge_mixer_layers: int = 2
    vocab_size: int = 640
    num_inference_steps: int = 8
    flow_shift: float = 3.0
    flow_source: str = "noise"  # or "degraded" (see clear_rl/flow.py)


def build_tiny_tokenizer(corpus: Iterable[str] = (), vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` (plus a small built-in text), in memory."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*BASE_CORPUS, *corpus], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.padding_side = "left"  # generation pads prompts on the left
    return fast


def build_tiny_processor(config: TinyModelConfig, corpus: Iterable[str] = ()) -> LlavaProcessor:
    side = config.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_center_crop=True
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(corpus, config.vocab_size),
        patch_size=config.vit_patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    config: TinyModelConfig | None = None, corpus: Iterable[str] = (), seed: int = 0
) -> tuple[ComposedUnifiedModel, LlavaProcessor]:
    """A randomly initialised tiny composed unified model and its processor (seeded)."""
    config = config or TinyModelConfig()
    processor = build_tiny_processor(config, corpus)
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=config.vit_hidden_size,
        intermediate_size=2 * config.vit_hidden_size,
        num_hidden_layers=config.vit_layers,
        num_attention_heads=2,
        image_size=config.image_size,
        patch_size=config.vit_patch_size,
    )
    text = LlamaConfig(
        hidden_size=config.llm_hidden_size,
        intermediate_size=2 * config.llm_hidden_size,
        num_hidden_layers=config.llm_layers,
        num_attention_heads=config.llm_heads,
        num_key_value_heads=config.llm_kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vlm_config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=(config.image_size // config.vit_patch_size) ** 2,
    )
    vlm = LlavaForConditionalGeneration._from_config(vlm_config, attn_implementation="sdpa")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        block_out_channels=config.vae_channels,
        latent_channels=config.latent_channels,
        norm_num_groups=16,
        layers_per_block=1,
        sample_size=config.image_size,
    )
    return compose_unified(
        vlm,
        processor,
        vae,
        vae_image_size=config.image_size,
        head={
            "num_layers": config.head_layers,
            "num_attention_heads": config.head_heads,
            "attention_head_dim": config.head_head_dim,
        },
        bridge={"mixer_layers": config.bridge_mixer_layers, "mixer_heads": config.llm_heads},
        flow_shift=config.flow_shift,
        num_inference_steps=config.num_inference_steps,
        flow_source=config.flow_source,
    )
