"""Jamba: Mamba layers interleaved with attention, and Mixture-of-Experts MLPs (Lieber et al. 2024,
arXiv:2403.19887). Every layer is a pre-norm residual block (models/compose.py)

    h = x + mixer(RMSNorm(x))      mixer: Mamba (with RMSNorm on dt, B and C) or attention, by the pattern
    y = h + mlp(RMSNorm(h))        mlp: MoE (top-2 of 16, weights not renormalised) every `moe_period`-th
                                   layer from `moe_offset`, a dense SwiGLU otherwise

Jamba-v0.1 uses one attention layer per eight (a:m = 1:7, "MMMMAMMM" in each Jamba block) and MoE every
second layer (e = 2); its attention has no position encoding, the Mamba layers carry position
(sec. 2, 3.1). Only the attention layers hold a KV cache, so the state is 1/8 of a Transformer's.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from altbench.models.attention import Attention, AttentionConfig
from altbench.models.base import LanguageModel, LMConfig
from altbench.models.blocks import SwiGLU
from altbench.models.compose import check_pattern, pattern_blocks
from altbench.models.mamba import MambaConfig, MambaMixer
from altbench.models.moe import MoE, MoEConfig

MIXER_LETTERS = "MA"  # M: Mamba, A: attention without RoPE


@dataclass
class JambaConfig(LMConfig):
    vocab_size: int = 65536
    d_model: int = 4096
    n_layers: int = 32
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    pattern: str = "MMMMAMMM" * 4  # one letter per layer (a:m = 1:7, attention at offset 4 of every 8)
    n_heads: int = 32
    n_kv_heads: int = 8
    d_hidden: int = 14336  # width of the dense SwiGLU and of each expert
    n_experts: int = 16
    top_k: int = 2
    moe_period: int = 2  # MoE replaces the dense MLP every `moe_period` layers ...
    moe_offset: int = 1  # ... starting at this layer
    d_state: int = 16  # Mamba: N
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 256  # ceil(d_model / 16)

    def __post_init__(self):
        check_pattern(self.pattern, self.n_layers, MIXER_LETTERS)

    def is_moe(self, layer: int) -> bool:
        return self.n_experts > 0 and layer % self.moe_period == self.moe_offset

    def mamba(self) -> MambaConfig:
        return MambaConfig(
            d_model=self.d_model, norm_eps=self.norm_eps, d_state=self.d_state, d_conv=self.d_conv,
            expand=self.expand, dt_rank=self.dt_rank, inner_norms=True,
        )


class Jamba(LanguageModel):
    def __init__(self, c: JambaConfig):
        attention = AttentionConfig(c.d_model, c.n_heads, c.n_kv_heads, rope_theta=None)
        mamba = c.mamba()
        moe = MoEConfig(c.d_model, c.d_hidden, c.n_experts, c.top_k, norm_topk=False) if c.n_experts else None
        blocks = pattern_blocks(
            c.pattern,
            mixers={"M": lambda i: MambaMixer(mamba), "A": lambda i: Attention(attention)},
            mlp=lambda i: MoE(moe) if c.is_moe(i) else SwiGLU(c.d_model, c.d_hidden),
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)


# Jamba-v0.1 (Lieber et al. 2024, sec. 3.1, and ai21labs/Jamba-v0.1 config.json): 4 Jamba blocks of 8
# layers, d 4096, 32 heads with 8 KV heads, 16 experts top-2 of width 14336, 64K vocabulary; 52B
# parameters in total, 12B active. `long` halves the depth (2 Jamba blocks) to fit long contexts on one
# GPU; `130m` is matched to altbench's 130m baselines in active parameters.
SIZES = {
    "tiny": JambaConfig(
        vocab_size=256, d_model=64, n_layers=8, n_heads=4, n_kv_heads=2, d_hidden=96, n_experts=4, d_state=8, dt_rank=8,
        pattern="MMMMAMMM",
    ),
    "130m": JambaConfig(
        vocab_size=50280, d_model=768, n_layers=16, pattern="MMMMAMMM" * 2, n_heads=12, n_kv_heads=4, d_hidden=640,
        n_experts=8, dt_rank=48, tie_embeddings=True,
    ),
    "long": JambaConfig(
        vocab_size=65536, d_model=2048, n_layers=16, pattern="MMMMAMMM" * 2, n_heads=16, n_kv_heads=4, d_hidden=5632,
        dt_rank=128,
    ),
    "v0.1": JambaConfig(),
}
MODEL = Jamba


# --- Hugging Face mapping (JambaForCausalLM), see models/hf.py ------------------------------------
HF_CLASS = "JambaForCausalLM"
HF_RENAMES = [
    (r"model\.embed_tokens\.(.*)", r"embed.\1"),
    (r"model\.final_layernorm\.(.*)", r"norm.\1"),
    (r"model\.layers\.(\d+)\.input_layernorm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"model\.layers\.(\d+)\.(?:mamba|self_attn)\.(.*)", r"layers.\1.mixer.\2"),
    (r"model\.layers\.(\d+)\.pre_ff_layernorm\.(.*)", r"layers.\1.mlp_norm.\2"),
    (r"model\.layers\.(\d+)\.feed_forward\.router\.(.*)", r"layers.\1.mlp.gate.\2"),
    (r"model\.layers\.(\d+)\.feed_forward\.(.*)", r"layers.\1.mlp.\2"),
]


def _period(pattern: str) -> tuple[int, int]:
    """(period, offset) of the attention layers, as transformers' JambaConfig states them."""
    where = [i for i, letter in enumerate(pattern) if letter == "A"]
    period = where[1] - where[0] if len(where) > 1 else len(pattern)
    offset = where[0] if where else len(pattern)
    if "".join("A" if i % period == offset else "M" for i in range(len(pattern))) != pattern:
        raise ValueError(f"pattern '{pattern}' is not periodic in its attention layers, as transformers' Jamba needs")
    return period, offset


def to_hf_config(c: JambaConfig):
    from transformers import JambaConfig as HFJambaConfig

    period, offset = _period(c.pattern)
    return HFJambaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, intermediate_size=c.d_hidden, num_experts=c.n_experts,
        num_experts_per_tok=c.top_k, expert_layer_period=c.moe_period, expert_layer_offset=c.moe_offset,
        attn_layer_period=period, attn_layer_offset=offset, mamba_d_state=c.d_state, mamba_d_conv=c.d_conv,
        mamba_expand=c.expand, mamba_dt_rank=c.dt_rank, mamba_conv_bias=True, mamba_proj_bias=False,
        rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
    )


def from_hf_config(d: dict) -> JambaConfig:
    n, period, offset = d["num_hidden_layers"], d.get("attn_layer_period", 8), d.get("attn_layer_offset", 4)
    return JambaConfig(
        vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=n,
        pattern="".join("A" if i % period == offset else "M" for i in range(n)),
        n_heads=d["num_attention_heads"], n_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
        d_hidden=d["intermediate_size"], n_experts=d.get("num_experts", 16), top_k=d.get("num_experts_per_tok", 2),
        moe_period=d.get("expert_layer_period", 2), moe_offset=d.get("expert_layer_offset", 1),
        d_state=d.get("mamba_d_state", 16), d_conv=d.get("mamba_d_conv", 4), expand=d.get("mamba_expand", 2),
        dt_rank=d.get("mamba_dt_rank", 256), norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_embeddings=d.get("tie_word_embeddings", False),
    )
