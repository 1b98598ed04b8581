"""Causal softmax attention (Vaswani et al. 2017) as a mixer, with grouped KV heads (Ainslie et al.
2023) and optional RoPE (Su et al. 2021; `rope_theta=None` is attention without position encoding,
as in Jamba's attention layers, Lieber et al. 2024, sec. 2). With `causal=False` every position
attends to every other, as in a masked diffusion model's mask predictor (LLaDA) and HRM's modules:
there is then no state to carry, no `step`, and a forward over T tokens costs T x
`flops_per_token(T - 1)`.

Attention runs through `torch.nn.functional.scaled_dot_product_attention`, so on a GPU it uses
FlashAttention / memory-efficient kernels. Its state is a KV cache; `step` appends one token and
attends over the cache: O(context) per token, unlike a recurrence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from altbench.models.base import linear_flops
from altbench.models.blocks import FusedLinear, RotaryEmbedding, apply_rotary


@dataclass
class AttentionConfig:
    d_model: int
    n_heads: int
    n_kv_heads: int  # < n_heads gives grouped-query attention
    rope_theta: float | None = 10000.0  # None: no rotary position embedding
    qkv_bias: bool = False  # biases on the q, k, v projections (Qwen)
    causal: bool = True  # False: bidirectional (no causal mask, no KV cache, no step)


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


def attend(q, k, v, cache: KVCache | None, scale: float | None = None) -> tuple[torch.Tensor, KVCache]:
    """Causal attention of q over the cache's keys and values followed by k, v, which join the cache.

    q: (B, H, T, D)   k, v: (B, Hkv, T, D), Hkv dividing H   scale: None means D^-1/2
    returns o (B, H, T, D) and the cache (a new one when `cache` is None)
    """
    T = q.shape[2]
    if cache is None:
        cache, keys, values = KVCache(k, v, T), k, v
    else:
        keys, values = cache.append(k, v)  # (B, Hkv, start + T, D)
    S = keys.shape[2]
    mask = None if S == T or T == 1 else causal_lower_right(T, S)
    o = F.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, is_causal=(S == T and T > 1), scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return o, cache


class Attention(nn.Module):
    """q, k, v projections (one matmul) -> RoPE -> causal SDPA over the cache (or bidirectional SDPA) -> o_proj."""

    def __init__(self, c: AttentionConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.d_model // c.n_heads
        q, kv = c.n_heads * self.head_dim, c.n_kv_heads * self.head_dim
        FusedLinear(c.d_model, {"q_proj": q, "k_proj": kv, "v_proj": kv}, bias=c.qkv_bias).attach(self, "qkv_proj")
        self.o_proj = nn.Linear(c.n_heads * self.head_dim, c.d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, c.rope_theta) if c.rope_theta is not None else None
        self.d_model = c.d_model
        self.causal = c.causal

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache | None]:
        B, T, _ = x.shape
        if cache is not None and not self.causal:
            raise ValueError("bidirectional attention carries no state between calls; pass state=None")
        start = cache.length if cache is not None else 0
        q, k, v = self.qkv_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.rotary is not None:
            cos, sin = self.rotary(start, T, x.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or Hkv, T, D)
        if self.causal:
            o, cache = attend(q, k, v, cache)  # (B, H, T, D)
        else:
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])  # (B, H, T, D)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), cache

    def step(self, x: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """x: (B, d_model) -> (B, d_model): `forward` on a sequence of one token."""
        if not self.causal:
            raise NotImplementedError("bidirectional attention has no causal step")
        y, cache = self(x[:, None], cache)
        return y[:, 0], cache

    def init_state(self, batch, device, dtype, capacity=0):
        return KVCache.empty(batch, self.n_kv_heads, self.head_dim, capacity, device, dtype)

    def state_bytes(self, batch, context, dtype):
        if not self.causal:
            return 0
        return 2 * batch * self.n_kv_heads * context * self.head_dim * torch.finfo(dtype).bits // 8

    def flops_per_token(self, context):
        """One token attending over context + 1 keys (its own included)."""
        proj = linear_flops(self.d_model, self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads))
        scores_and_mix = 2 * 2 * self.n_heads * self.head_dim * (context + 1)  # q.k over context+1 keys, then p.v
        return proj + scores_and_mix
