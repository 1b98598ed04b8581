"""Transformer baseline: a Llama-style decoder (Touvron et al. 2023, arXiv:2302.13971).

    h = x + Attn(RMSNorm(x))          causal softmax attention with RoPE and grouped KV heads
    y = h + SwiGLU(RMSNorm(h))

Every layer is a `Block` of the attention mixer (models/attention.py; its state is a KV cache,
so `step` costs O(context) per token, unlike a recurrence) and a SwiGLU MLP. With `causal=False`
it is the same stack as a bidirectional encoder (no causal step): how a Transformer reads a
grid-to-grid probe such as Sudoku, where every output cell depends on every input cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from altbench.models.attention import Attention, AttentionConfig
from altbench.models.base import BIDIRECTIONAL, LanguageModel, LMConfig
from altbench.models.blocks import SwiGLU
from altbench.models.compose import uniform_blocks


@dataclass
class TransformerConfig(LMConfig):
    n_heads: int = 12
    n_kv_heads: int = 12  # < n_heads gives grouped-query attention (Ainslie et al. 2023)
    d_hidden: int = 2304  # SwiGLU width; 3 x d_model keeps parameters matched to Mamba's blocks
    rope_theta: float = 10000.0
    causal: bool = True  # False: bidirectional encoder (grid-to-grid probes); no decode, no carried state


def llama_blocks(
    c, causal: bool = True, qkv_bias: bool = False, mlp: Callable[[int], nn.Module] | None = None
) -> list:
    """n_layers Llama blocks: RMSNorm, attention with RoPE (causal or bidirectional, biases on q, k, v
    with `qkv_bias`), RMSNorm, then `mlp(i)` for layer i, by default a SwiGLU of width c.d_hidden (the
    MoE decoders pass their experts). `c` has the fields of TransformerConfig but d_hidden."""
    attention = AttentionConfig(c.d_model, c.n_heads, c.n_kv_heads, c.rope_theta, causal=causal, qkv_bias=qkv_bias)
    return uniform_blocks(c, mixer=lambda i: Attention(attention), mlp=mlp or (lambda i: SwiGLU(c.d_model, c.d_hidden)))


class Transformer(LanguageModel):
    def __init__(self, c: TransformerConfig):
        super().__init__(c, llama_blocks(c, causal=c.causal))
        if not c.causal:
            self.capabilities = frozenset({BIDIRECTIONAL})


# Matched to Mamba's published sizes (Gu & Dao 2023, Table 12): same width and vocabulary, half the
# layers (a Transformer layer holds ~12 d^2 parameters to Mamba's ~6 d^2), tied embeddings.
SIZES = {
    "tiny": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_hidden=192),
    "130m": TransformerConfig(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_hidden=2304),
    "370m": TransformerConfig(d_model=1024, n_layers=24, n_heads=16, n_kv_heads=16, d_hidden=2816),
    "790m": TransformerConfig(d_model=1536, n_layers=24, n_heads=16, n_kv_heads=16, d_hidden=4096),
    "1.4b": TransformerConfig(d_model=2048, n_layers=24, n_heads=16, n_kv_heads=16, d_hidden=5632),
    "2.8b": TransformerConfig(d_model=2560, n_layers=32, n_heads=32, n_kv_heads=32, d_hidden=6912),
    # HRM's 27M (models/hrm.py): its eight post-norm blocks as one stack of eight, same width and SwiGLU,
    # with HRM's Sudoku vocabulary and untied head: the matched-parameter baseline of Wang et al. 2025.
    "27m": TransformerConfig(vocab_size=11, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, d_hidden=1536,
                             tie_embeddings=False),
}
MODEL = Transformer


# --- Hugging Face mapping (LlamaForCausalLM), see models/hf.py ------------------------------------
HF_CLASS = "LlamaForCausalLM"
# a Llama-style decoder's embedding, norms and attention: shared by the MoE models built on it
LLAMA_DECODER_RENAMES = [
    (r"model\.embed_tokens\.(.*)", r"embed.\1"),
    (r"model\.layers\.(\d+)\.input_layernorm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"model\.layers\.(\d+)\.self_attn\.(.*)", r"layers.\1.mixer.\2"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.(.*)", r"layers.\1.mlp_norm.\2"),
]
HF_RENAMES = [
    *LLAMA_DECODER_RENAMES,
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
