"""A tiny random BAGEL in the official folder layout, and a Qwen2-style tokenizer, built in code.

For tests: the same module tree, file names and formats as BAGEL-7B-MoT (JSON configs, weights
under the official keys, the VAE under BFL names, tokenizer files with Qwen2.5's special tokens
after a byte-level BPE vocabulary), at sizes that build and run in well under a second.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from clear_rl.models.bagel.config import OFFICIAL_LLM_JSON, OFFICIAL_VIT_JSON, BagelConfig, flux_vae_config
from clear_rl.models.bagel.modeling import BagelModel

# Qwen2.5's added tokens, in its order (ids 151643.. there; right after the BPE vocabulary here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PLAIN_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
SPARE_ROWS = 16  # unused embedding rows past the tokenizer (Qwen2.5 has 399)
CORPUS = (
    "You are a helpful assistant. Describe the image. What is shown in the picture?",
    "The image is degraded: noise, blur, low light, compression. Restore the image first.",
    "The answer is A. B. C. D. yes no 0 1 2 3 4 5 6 7 8 9",
)


@dataclass
class TinyBagelSizes:
    """Sizes of the tiny model (defaults: a 2-layer MoT of width 32, a 2-layer ViT, a 2x VAE)."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vit_hidden_size: int = 16
    vit_intermediate_size: int = 32
    vit_layers_in_file: int = 3  # one more than used, as in the official vit_config.json
    vit_heads: int = 2
    vit_patch_size: int = 4
    vit_image_size: int = 32  # 8 x 8 patches
    vae_channels: tuple[int, ...] = (32, 32)  # GroupNorm(32) as FLUX's: no file states the groups
    latent_channels: int = 4
    max_latent_size: int = 8
    vocab_size: int = 320


def build_tiny_tokenizer(corpus: Iterable[str] = (), vocab_size: int = 320) -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer and Qwen2.5's added tokens."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.NFC()
    base.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(PLAIN_ADDED_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    base.train_from_iterator([*CORPUS, *corpus], trainer)
    bpe = json.loads(base.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    tokenizer._clear_rl_bpe = (bpe["vocab"], merges)  # for vocab.json / merges.txt
    return tokenizer


def write_tokenizer_files(tokenizer: Qwen2Tokenizer, folder: str | os.PathLike) -> None:
    """`tokenizer.json` and `tokenizer_config.json`, plus `vocab.json` and `merges.txt` as Qwen ships."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    vocab, merges = tokenizer._clear_rl_bpe
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_bagel_config(tokenizer: Qwen2Tokenizer, sizes: TinyBagelSizes | None = None) -> BagelConfig:
    """A `BagelConfig` of the official kind at tiny sizes, with the tokenizer's marker ids."""
    s = sizes or TinyBagelSizes()
    # Padded like Qwen's 152064 rows for 151665 tokens: unused rows at the end, enough for the
    # CLEAR protocol tags (models/tokens.py) to be added without a resize, as on the real model.
    vocab = -(-(len(tokenizer) + SPARE_ROWS) // 64) * 64
    llm = dict(OFFICIAL_LLM_JSON)
    llm.update(
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        max_window_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        max_position_embeddings=4096,
        vocab_size=vocab,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    vit = dict(OFFICIAL_VIT_JSON)
    vit.update(
        hidden_size=s.vit_hidden_size,
        intermediate_size=s.vit_intermediate_size,
        num_hidden_layers=s.vit_layers_in_file,
        num_attention_heads=s.vit_heads,
        patch_size=s.vit_patch_size,
        image_size=s.vit_image_size,
    )
    n = len(s.vae_channels)
    vae = flux_vae_config()
    vae.update(
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(s.vae_channels),
        layers_per_block=1,
        latent_channels=s.latent_channels,
    )
    ids = {
        key: tokenizer.convert_tokens_to_ids(token)
        for key, token in (
            ("im_start_id", "<|im_start|>"),
            ("im_end_id", "<|im_end|>"),
            ("vision_start_id", "<|vision_start|>"),
            ("vision_end_id", "<|vision_end|>"),
        )
    }
    return BagelConfig(
        llm_json=llm,
        vit_json=vit,
        vae=vae,
        max_latent_size=s.max_latent_size,
        **ids,
    )


@torch.no_grad()
def randomize(model: BagelModel, seed: int = 0) -> BagelModel:
    """Seeded random weights everywhere, norms and the zero-initialised `llm2vae` included, so that
    tests see both experts' every weight at work."""
    generator = torch.Generator().manual_seed(seed)
    for module in (model, model.vae):
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1 and "norm" in name:
                param.copy_(1.0 + 0.1 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            else:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)
    return model


def build_tiny_bagel(
    path: str | os.PathLike | None = None,
    sizes: TinyBagelSizes | None = None,
    seed: int = 0,
    weights_name: str = "ema.safetensors",
) -> tuple[BagelModel, Qwen2Tokenizer]:
    """A seeded tiny random BAGEL and its tokenizer; with `path`, also saved there (official layout)."""
    s = sizes or TinyBagelSizes()
    tokenizer = build_tiny_tokenizer(vocab_size=s.vocab_size)
    model = randomize(BagelModel(tiny_bagel_config(tokenizer, s)), seed).eval()
    if path is not None:
        from clear_rl.models.bagel.io import save_bagel

        save_bagel(model, path, weights_name=weights_name)
        write_tokenizer_files(tokenizer, path)
        model.name_or_path = str(path)
    return model, tokenizer
