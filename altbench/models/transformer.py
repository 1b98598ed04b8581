"""Transformer baseline: a Llama-style decoder (Touvron et al. 2023, arXiv:2302.13971).

    h = x + Attn(RMSNorm(x))          causal softmax attention with RoPE and grouped KV heads
    y = h + SwiGLU(RMSNorm(h))

Attention runs through `torch.nn.functional.scaled_dot_product_attention`, so on a GPU it uses
FlashAttention / memory-efficient kernels. The state of a layer is its KV cache; `step` appends
one token and attends over the cache: O(context) per token, unlike a recurrence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from altbench.models.base import LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import PreNormResidualBlock, RotaryEmbedding, SwiGLU, apply_rotary


@dataclass
class TransformerConfig(LMConfig):
    n_heads: int = 12
    n_kv_heads: int = 12  # < n_heads gives grouped-query attention (Ainslie et al. 2023)
    d_hidden: int = 2304  # SwiGLU width; 3 x d_model keeps parameters matched to Mamba's blocks
    rope_theta: float = 10000.0


class KVCache:
    """Keys and values seen so far, (B, H_kv, capacity, D) each; the first `length` slots are valid.

    Capacity doubles when an append would overflow, so appends are amortised O(1) per token.
    The cache is updated in place: a state passed to `forward` or `step` is consumed.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int):
        self.k, self.v, self.length = k, v, length

    @classmethod
    def empty(cls, batch, n_kv_heads, head_dim, capacity, device, dtype) -> "KVCache":
        shape = (batch, n_kv_heads, capacity, head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype), 0)

    def _grow(self, capacity: int) -> None:
        def grown(t: torch.Tensor) -> torch.Tensor:
            new = t.new_empty(t.shape[0], t.shape[1], capacity, t.shape[3])
            new[:, :, : self.length] = t[:, :, : self.length]
            return new

        self.k, self.v = grown(self.k), grown(self.v)

    def fill_random(self, length: int, headroom: int = 0) -> None:
        """Extend the cache to `length` tokens of random keys and values, with room for `headroom` more.

        For decode timing at long contexts: attention's cost depends on the cache's size, not its
        values, and a real 1M-token prefill would cost minutes per cell.
        """
        if length + headroom > self.k.shape[2]:
            self._grow(length + headroom)
        self.k[:, :, self.length : length].normal_()
        self.v[:, :, self.length : length].normal_()
        self.length = max(self.length, length)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part of the cache."""
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, H_kv, T, D). Returns views of all valid keys and values, (B, H_kv, length, D)."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            self._grow(max(end, 2 * self.k.shape[2]))
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.d_model // c.n_heads
        self.q_proj = nn.Linear(c.d_model, c.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * self.head_dim, c.d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, c.rope_theta)

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        cos, sin = self.rotary(start, T, x.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is None:
            cache, keys, values = KVCache(k, v, T), k, v
        else:
            keys, values = cache.append(k, v)  # (B, Hkv, start + T, D)
        S = keys.shape[2]
        mask = None if S == T or T == 1 else causal_lower_right(T, S)
        o = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=(S == T and T > 1), enable_gqa=self.n_heads != self.n_kv_heads
        )  # (B, H, T, D)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), cache

    def step(self, x: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """x: (B, d_model) -> (B, d_model): `forward` on a sequence of one token."""
        y, cache = self(x[:, None], cache)
        return y[:, 0], cache


class TransformerBlock(PreNormResidualBlock):
    def __init__(self, c: TransformerConfig):
        super().__init__(c, Attention(c), SwiGLU(c.d_model, c.d_hidden))

    def init_state(self, batch, device, dtype, capacity=0):
        a = self.mixer
        return KVCache.empty(batch, a.n_kv_heads, a.head_dim, capacity, device, dtype)

    def state_bytes(self, batch, context, dtype):
        a = self.mixer
        return 2 * batch * a.n_kv_heads * context * a.head_dim * torch.finfo(dtype).bits // 8

    def flops_per_token(self, context):
        c, a = self.c, self.mixer
        proj = linear_flops(c.d_model, a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads))
        scores_and_mix = 2 * 2 * a.n_heads * a.head_dim * (context + 1)  # q.k over context+1 keys, then p.v
        return proj + scores_and_mix + self.mlp.flops_per_token()


class Transformer(LanguageModel):
    def __init__(self, config: TransformerConfig):
        super().__init__(config, [TransformerBlock(config) for _ in range(config.n_layers)])


# Matched to Mamba's published sizes (Gu & Dao 2023, Table 12): same width and vocabulary, half the
# layers (a Transformer layer holds ~12 d^2 parameters to Mamba's ~6 d^2), tied embeddings.
SIZES = {
    "tiny": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_hidden=192),
    "130m": TransformerConfig(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_hidden=2304),
    "370m": TransformerConfig(d_model=1024, n_layers=24, n_heads=16, n_kv_heads=16, d_hidden=2816),
    "790m": TransformerConfig(d_model=1536, n_layers=24, n_heads=16, n_kv_heads=16, d_hidden=4096),
    "1.4b": TransformerConfig(d_model=2048, n_layers=24, n_heads=16, n_kv_heads=16, d_hidden=5632),
    "2.8b": TransformerConfig(d_model=2560, n_layers=32, n_heads=32, n_kv_heads=32, d_hidden=6912),
}
MODEL = Transformer


# --- Hugging Face mapping (LlamaForCausalLM), see models/hf.py ------------------------------------
HF_CLASS = "LlamaForCausalLM"
HF_RENAMES = [
    (r"model\.embed_tokens\.(.*)", r"embed.\1"),
    (r"model\.layers\.(\d+)\.input_layernorm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"model\.layers\.(\d+)\.self_attn\.(.*)", r"layers.\1.mixer.\2"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.(.*)", r"layers.\1.mlp_norm.\2"),
    (r"model\.(.*)", r"\1"),
]


def to_hf_config(c: TransformerConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, intermediate_size=c.d_hidden,
        rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
        max_position_embeddings=1 << 20, attention_bias=False, mlp_bias=False,
    )


def from_hf_config(d: dict) -> TransformerConfig:
    rope = d.get("rope_parameters") or {}
    return TransformerConfig(
        vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"], n_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
        d_hidden=d["intermediate_size"], norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)), tie_embeddings=d.get("tie_word_embeddings", False),
    )
