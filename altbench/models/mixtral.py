"""Mixtral: a Llama-style decoder whose MLP is a sparse Mixture of Experts (Jiang et al. 2024,
arXiv:2401.04088). Every layer is

    h = x + Attn(RMSNorm(x))          causal attention with RoPE and grouped KV heads (models/attention.py)
    y = h + MoE(RMSNorm(h))           top-2 of 8 SwiGLU experts, weights renormalised (models/moe.py)

so a token uses 2 of the 8 experts' parameters: Mixtral 8x7B holds 46.7B parameters and uses 12.9B
per token (sec. 2.1). `active_params()` counts that from the modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from altbench.errors import UserError
from altbench.models.base import LanguageModel, LMConfig
from altbench.models.moe import MoE, MoEConfig
from altbench.models.transformer import LLAMA_DECODER_RENAMES, llama_blocks


@dataclass
class MixtralConfig(LMConfig):
    vocab_size: int = 32000  # Mistral's SentencePiece vocabulary
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8  # grouped-query attention
    d_expert: int = 14336  # hidden width of each SwiGLU expert
    n_experts: int = 8
    top_k: int = 2
    rope_theta: float = 1e6
    tie_embeddings: bool = False

    def moe(self) -> MoEConfig:
        return MoEConfig(self.d_model, self.d_expert, self.n_experts, self.top_k)


class Mixtral(LanguageModel):
    def __init__(self, c: MixtralConfig):
        moe = c.moe()
        super().__init__(c, llama_blocks(c, mlp=lambda i: MoE(moe)))


# Jiang et al. 2024, Table 1 (8x7B) and the mistralai/Mixtral-8x22B-v0.1 config.json. `130m` is matched
# to altbench's transformer 130m in *active* parameters: same attention, and 2 of 8 experts of half
# its SwiGLU width, so a token uses the same MLP width (2 x 1152 = 2304); it holds ~2.5x as many in total.
SIZES = {
    "tiny": MixtralConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_expert=96, n_experts=4, top_k=2
    ),
    "130m": MixtralConfig(
        vocab_size=50280, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_expert=1152, rope_theta=10000.0,
        tie_embeddings=True,
    ),
    "8x7b": MixtralConfig(),
    "8x22b": MixtralConfig(vocab_size=32768, d_model=6144, n_layers=56, n_heads=48, d_expert=16384),
}
MODEL = Mixtral


# --- Hugging Face mapping (MixtralForCausalLM), see models/hf.py ----------------------------------
HF_CLASS = "MixtralForCausalLM"
HF_RENAMES = [
    *LLAMA_DECODER_RENAMES,
    # the published files: block_sparse_moe with experts.E.w1 (gate), w3 (up), w2 (down)
    (r"model\.layers\.(\d+)\.block_sparse_moe\.gate\.(.*)", r"layers.\1.mlp.gate.\2"),
    (r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w1\.(.*)", r"layers.\1.mlp.experts.\2.gate_proj.\3"),
    (r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w3\.(.*)", r"layers.\1.mlp.experts.\2.up_proj.\3"),
    (r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w2\.(.*)", r"layers.\1.mlp.experts.\2.down_proj.\3"),
    (r"model\.(.*)", r"\1"),
]


def to_hf_config(c: MixtralConfig):
    from transformers import MixtralConfig as HFMixtralConfig

    return HFMixtralConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, intermediate_size=c.d_expert, num_local_experts=c.n_experts,
        num_experts_per_tok=c.top_k, rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings, max_position_embeddings=1 << 20, sliding_window=None,
    )


def from_hf_config(d: dict) -> MixtralConfig:
    rope = d.get("rope_parameters") or {}
    if d.get("sliding_window"):
        raise UserError("this Mixtral checkpoint uses sliding-window attention, which altbench's Mixtral lacks")
    return MixtralConfig(
        vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"], n_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
        d_expert=d["intermediate_size"], n_experts=d.get("num_local_experts", 8), top_k=d.get("num_experts_per_tok", 2),
        norm_eps=d.get("rms_norm_eps", 1e-5), rope_theta=rope.get("rope_theta", d.get("rope_theta", 1e6)),
        tie_embeddings=d.get("tie_word_embeddings", False),
    )
