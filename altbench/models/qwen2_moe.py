"""Qwen2-MoE (Qwen1.5-MoE): a decoder whose MLP is fine-grained routed experts plus a gated shared
expert (Qwen team 2024, "Qwen1.5-MoE: Matching 7B Model Performance with 1/3 Activated Parameters";
the fine-grained + shared design of DeepSeek-MoE, Dai et al. 2024, arXiv:2401.06066). Every layer is

    h = x + Attn(RMSNorm(x))          RoPE, grouped KV heads, biases on q, k, v (models/attention.py)
    y = h + MoE(RMSNorm(h))           top-4 of 60 narrow SwiGLU experts, weights not renormalised,
                                      + sigmoid(x w_g) * SwiGLU_shared(x) (models/moe.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from altbench.errors import UserError
from altbench.models.base import LanguageModel, LMConfig
from altbench.models.moe import MoE, MoEConfig
from altbench.models.transformer import LLAMA_DECODER_RENAMES, llama_blocks


@dataclass
class Qwen2MoEConfig(LMConfig):
    vocab_size: int = 151936
    d_model: int = 2048
    n_layers: int = 24
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    n_heads: int = 16
    n_kv_heads: int = 16
    d_expert: int = 1408  # width of one routed expert
    n_experts: int = 60
    top_k: int = 4
    d_shared: int = 5632  # width of the shared expert
    rope_theta: float = 1e6

    def moe(self) -> MoEConfig:
        return MoEConfig(
            self.d_model, self.d_expert, self.n_experts, self.top_k, norm_topk=False, d_shared=self.d_shared,
            shared_gate=True,
        )


class Qwen2MoE(LanguageModel):
    def __init__(self, c: Qwen2MoEConfig):
        moe = c.moe()
        super().__init__(c, llama_blocks(c, qkv_bias=True, mlp=lambda i: MoE(moe)))


# "a2.7b": Qwen1.5-MoE-A2.7B, the shape of transformers' Qwen2MoeConfig defaults (documented against
# that checkpoint). "130m" is matched to altbench's 130m baselines in active parameters.
SIZES = {
    "tiny": Qwen2MoEConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_expert=32, n_experts=8, top_k=4, d_shared=96,
        rope_theta=10000.0,
    ),
    "130m": Qwen2MoEConfig(
        vocab_size=50280, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_expert=384, n_experts=16, top_k=4,
        d_shared=768, tie_embeddings=True, rope_theta=10000.0,
    ),
    "a2.7b": Qwen2MoEConfig(),
}
MODEL = Qwen2MoE


# --- Hugging Face mapping (Qwen2MoeForCausalLM), see models/hf.py ---------------------------------
HF_CLASS = "Qwen2MoeForCausalLM"
HF_RENAMES = [
    *LLAMA_DECODER_RENAMES,
    (r"model\.(.*)", r"\1"),
]


def to_hf_config(c: Qwen2MoEConfig):
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, moe_intermediate_size=c.d_expert, num_experts=c.n_experts,
        num_experts_per_tok=c.top_k, shared_expert_intermediate_size=c.d_shared, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[], qkv_bias=True, use_sliding_window=False, rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, tie_word_embeddings=c.tie_embeddings,
        max_position_embeddings=1 << 20,
    )


def from_hf_config(d: dict) -> Qwen2MoEConfig:
    rope = d.get("rope_parameters") or {}
    if d.get("decoder_sparse_step", 1) != 1 or d.get("mlp_only_layers") or d.get("use_sliding_window"):
        raise UserError("altbench's Qwen2-MoE has MoE MLPs in every layer and full attention; this checkpoint has not")
    return Qwen2MoEConfig(
        vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"], n_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
        d_expert=d["moe_intermediate_size"], n_experts=d["num_experts"], top_k=d["num_experts_per_tok"],
        d_shared=d["shared_expert_intermediate_size"], norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", d.get("rope_theta", 1e6)), tie_embeddings=d.get("tie_word_embeddings", False),
    )
