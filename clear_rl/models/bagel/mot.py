"""The Mixture-of-Transformers language model: one sequence, two experts, one softmax.

Every per-token operation (RMSNorms, q/k/v/o projections, q/k norms, MLP, final norm) exists twice:
the understanding weights (text and ViT tokens, Qwen2.5's own) and the generation weights
(`*_moe_gen`, VAE-latent tokens). Routing is by token kind, not learned, so a `Routing` of index
tensors says which rows take which expert. Attention is shared: both experts' queries, keys and
values go back into sequence order and one SDPA call (GQA, 1-D RoPE, a boolean mask) mixes them.

Module names match BAGEL's checkpoint exactly (`language_model.model.layers.N.self_attn.q_proj_moe_gen`,
...), and the leaves are transformers' own `Qwen2MLP`, `Qwen2RMSNorm` and `Qwen2RotaryEmbedding`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2MLP,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
    apply_rotary_pos_emb,
)


@dataclass
class Routing:
    """Which rows of a packed sequence use the understanding and which the generation expert."""

    und: torch.Tensor  # (Nu,) long
    gen: torch.Tensor  # (Ng,) long

    @classmethod
    def from_mask(cls, is_gen: torch.Tensor) -> Routing:
        return cls(und=(~is_gen).nonzero().squeeze(1), gen=is_gen.nonzero().squeeze(1))

    def apply(
        self,
        x: torch.Tensor,
        und_fn: Callable[[torch.Tensor], torch.Tensor],
        gen_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`und_fn` on understanding rows, `gen_fn` on generation rows, back in sequence order."""
        if self.gen.numel() == 0:
            return und_fn(x)
        if self.und.numel() == 0:
            return gen_fn(x)
        und, gen = und_fn(x[self.und]), gen_fn(x[self.gen])
        out = und.new_empty((x.shape[0], *und.shape[1:]))
        out[self.und] = und
        out[self.gen] = gen.to(und.dtype)
        return out


@dataclass
class BagelCache:
    """Keys and values of a packed prefix, per layer, with what later tokens may see of it.

    Several samples share one packed cache (as in BAGEL's own NaiveCache): `sample_ids` says whose
    each cached token is, `visible` is False for tokens no later token may attend to (a noised
    latent block), and `next_positions` is each sample's next RoPE position.
    """

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    sample_ids: torch.Tensor  # (L,) long
    visible: torch.Tensor  # (L,) bool
    next_positions: torch.Tensor  # (S,) long
    num_blocks: int = 0  # image blocks so far, so new blocks get fresh ids
    _pending: dict = field(default_factory=dict, repr=False)

    @classmethod
    def empty(cls, num_layers: int, num_samples: int, device: torch.device | str = "cpu") -> BagelCache:
        return cls(
            keys=[None] * num_layers,
            values=[None] * num_layers,
            sample_ids=torch.zeros(0, dtype=torch.long, device=device),
            visible=torch.zeros(0, dtype=torch.bool, device=device),
            next_positions=torch.zeros(num_samples, dtype=torch.long, device=device),
        )

    @property
    def num_samples(self) -> int:
        return self.next_positions.shape[0]

    def __len__(self) -> int:
        return self.sample_ids.shape[0]

    def layer(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys[index], self.values[index]

    def store(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Set layer `index`'s keys and values (1, kv_heads, L, head_dim), prefix included."""
        self.keys[index], self.values[index] = keys, values

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values] if t is not None)


class MoTAttention(nn.Module):
    """Self-attention with both experts' projections and q/k norms (names as in BAGEL)."""

    def __init__(self, config: Qwen2Config, layer_idx: int, qk_norm: bool = True):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        hidden, q_dim, kv_dim = (
            config.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        )
        eps = config.rms_norm_eps
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(hidden, q_dim, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(hidden, kv_dim, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(hidden, kv_dim, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(q_dim, hidden, bias=False))
            norm = (lambda: Qwen2RMSNorm(self.head_dim, eps=eps)) if qk_norm else nn.Identity
            setattr(self, f"q_norm{suffix}", norm())
            setattr(self, f"k_norm{suffix}", norm())

    def _qkv(self, suffix: str) -> Callable[[torch.Tensor], torch.Tensor]:
        q_proj, k_proj, v_proj = (getattr(self, f"{n}_proj{suffix}") for n in "qkv")
        q_norm, k_norm = getattr(self, f"q_norm{suffix}"), getattr(self, f"k_norm{suffix}")
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim

        def project(x: torch.Tensor) -> torch.Tensor:
            q = q_norm(q_proj(x).view(-1, h, d))
            k = k_norm(k_proj(x).view(-1, kvh, d))
            v = v_proj(x).view(-1, kvh, d)
            return torch.cat([q, k, v], dim=1)  # (n, h + 2 kvh, d)

        return project

    def forward(
        self,
        x: torch.Tensor,
        routing: Routing,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: BagelCache | None = None,
        update_cache: bool = False,
    ) -> torch.Tensor:
        """x (N, D) normed hidden states; mask (N, L_cache + N) bool, True where a query may look."""
        qkv = routing.apply(x, self._qkv(""), self._qkv("_moe_gen"))
        h, kvh = self.num_heads, self.num_kv_heads
        q, k, v = qkv.split([h, kvh, kvh], dim=1)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, heads, N, d)
        cos, sin = rope
        q, k = apply_rotary_pos_emb(q, k, cos.unsqueeze(0), sin.unsqueeze(0), unsqueeze_dim=1)
        if cache is not None:
            past_k, past_v = cache.layer(self.layer_idx)
            if past_k is not None:
                k = torch.cat([past_k.to(k.dtype), k], dim=2)
                v = torch.cat([past_v.to(v.dtype), v], dim=2)
            if update_cache:
                cache.store(self.layer_idx, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None], enable_gqa=h != kvh)
        out = out.squeeze(0).transpose(0, 1).reshape(x.shape[0], h * self.head_dim)
        return routing.apply(out, self.o_proj, self.o_proj_moe_gen)


class MoTDecoderLayer(nn.Module):
    """One MoT block: per-expert pre-norm, shared attention, per-expert post-norm and MLP."""

    def __init__(self, config: Qwen2Config, layer_idx: int, qk_norm: bool = True):
        super().__init__()
        self.self_attn = MoTAttention(config, layer_idx, qk_norm)
        self.mlp = Qwen2MLP(config)
        self.mlp_moe_gen = Qwen2MLP(config)
        eps = config.rms_norm_eps
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=eps)
        self.input_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        routing: Routing,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: BagelCache | None = None,
        update_cache: bool = False,
    ) -> torch.Tensor:
        normed = routing.apply(x, self.input_layernorm, self.input_layernorm_moe_gen)
        x = x + self.self_attn(normed, routing, rope, mask, cache, update_cache)
        und_mlp = lambda t: self.mlp(self.post_attention_layernorm(t))  # noqa: E731
        gen_mlp = lambda t: self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(t))  # noqa: E731
        return x + routing.apply(x, und_mlp, gen_mlp)


class MoTTextModel(nn.Module):
    """`language_model.model`: token embeddings, the MoT layers, both final norms, RoPE."""

    def __init__(self, config: Qwen2Config, qk_norm: bool = True):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [MoTDecoderLayer(config, i, qk_norm) for i in range(config.num_hidden_layers)]
        )
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)  # non-persistent inv_freq only
        self.gradient_checkpointing = False

    def reset_rotary(self, device: torch.device | str) -> None:
        """Recompute RoPE's inverse frequencies (non-persistent: a meta-built model lacks them)."""
        with torch.device(device):
            self.rotary_emb = Qwen2RotaryEmbedding(config=self.rotary_emb.config)

    def forward(
        self,
        hidden: torch.Tensor,
        routing: Routing,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        cache: BagelCache | None = None,
        update_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Packed hidden states (N, D) -> final-normed (N, D), and every layer's input/output if asked.

        `hidden_states[0]` is the input embedding and `hidden_states[i]` the output of layer i
        (before the final norm), as in transformers' convention.
        """
        cos, sin = self.rotary_emb(hidden, position_ids[None])
        rope = (cos[0], sin[0])
        states = [hidden] if output_hidden_states else None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                hidden = checkpoint(layer, hidden, routing, rope, mask, use_reentrant=False)
            else:
                hidden = layer(hidden, routing, rope, mask, cache, update_cache)
            if states is not None:
                states.append(hidden)
        hidden = routing.apply(hidden, self.norm, self.norm_moe_gen)
        return hidden, (tuple(states) if states is not None else None)


class MoTForCausalLM(nn.Module):
    """`language_model`: the MoT text model and its untied LM head."""

    def __init__(self, config: Qwen2Config, qk_norm: bool = True):
        super().__init__()
        self.model = MoTTextModel(config, qk_norm)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
