"""Zamba2: a Mamba-2 backbone with shared attention blocks (Glorioso et al. 2024, arXiv:2411.15242;
Zamba, arXiv:2405.16712, fig. 2 and eq. 6).

The layer pattern has two letters. "M" is a Mamba-2 layer, x + Mamba2(RMSNorm(x)). "H" (hybrid) first
runs a shared transformer block on the concatenation of x with the original token embeddings e,

    t = RMSNorm_2d([x, e])                                   (B, T, 2 d)
    a = Attn(t)         q, k, v = (W + A_u) t, A_u a per-use LoRA adapter (optional); head_dim 2 d / H,
                        scale (head_dim / 2)^-1/2; optionally RoPE (Su et al. 2021) on q and k over the full head_dim
    s = MLP(RMSNorm(a)) gelu(gate) * up, with (W_gate_up + A'_u) a per-use adapter, then down

and adds the use's own linear map of s to the Mamba-2 layer's input: x + Mamba2(RMSNorm(x + L_u s)).
`n_shared` blocks are used in turn (use u runs block u mod n_shared); each use u has its own adapters
and its own KV cache, so the state of a hybrid layer is (KV cache of that use, Mamba-2 state). With RoPE,
the position of a token is the length of the KV cache before it, so positions carry across calls.

The released models differ in the shared block (their config.json): Zamba2-1.2B has one shared block,
attention adapters and RoPE; Zamba2-2.7B two shared blocks, adapters on the MLP only and no RoPE;
Zamba2-7B two shared blocks, adapters on the MLP only, RoPE, and two Mamba-2 B, C groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.errors import UserError
from altbench.models.attention import KVCache, attend
from altbench.models.base import LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import RotaryEmbedding, apply_rotary
from altbench.models.compose import Block, check_pattern
from altbench.models.mamba2 import Mamba2Config, Mamba2Mixer

MIXER_LETTERS = "MH"  # M: Mamba-2 layer, H: shared transformer block + Mamba-2 layer


@dataclass
class Zamba2Config(LMConfig):
    vocab_size: int = 32000
    d_model: int = 2560
    n_layers: int = 54
    pattern: str = "M" + "MMMMMH" * 7 + "MMMMH" + "MMMH" + "MM"  # transformers' Zamba2Config default layout
    n_heads: int = 32  # shared attention heads over the 2 d-wide input
    d_hidden: int = 0  # shared MLP width; 0 means 4 d_model
    n_shared: int = 1  # shared blocks, used in turn by the hybrid layers
    adapter_rank: int = 128  # rank of the per-use LoRA adapters
    attn_adapters: bool = True  # per-use adapters on q, k, v too (the MLP always has them)
    rope: bool = False  # RoPE on the shared attention's q and k
    rope_theta: float = 10000.0
    d_state: int = 64  # Mamba-2: N
    d_conv: int = 4
    expand: int = 2
    n_mamba_heads: int = 80  # Mamba-2 heads (head_dim = expand d_model / n_mamba_heads)
    n_groups: int = 1  # Mamba-2 B, C groups
    chunk_size: int = 256
    dt_min: float = 0.001  # also dt's floor (transformers' time_step_limit)
    dt_max: float = 0.1

    def __post_init__(self):
        check_pattern(self.pattern, self.n_layers, MIXER_LETTERS)
        self.d_hidden = self.d_hidden or 4 * self.d_model
        if (2 * self.d_model) % self.n_heads:
            raise UserError(f"n_heads = {self.n_heads} must divide 2 x d_model = {2 * self.d_model}")

    def mamba2(self) -> Mamba2Config:
        return Mamba2Config(
            d_model=self.d_model, norm_eps=self.norm_eps, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
            head_dim=self.expand * self.d_model // self.n_mamba_heads, n_heads=self.n_mamba_heads,
            n_groups=self.n_groups, chunk_size=self.chunk_size, dt_min=self.dt_min, dt_max=self.dt_max,
            dt_floor=self.dt_min,
        )


def _adapters(uses: list[bool], d_in: int, rank: int, d_out: int) -> nn.ModuleList:
    """One LoRA adapter x -> B (A x) per use this block serves, identity (no parameters) for the others."""
    return nn.ModuleList(
        nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False)) if mine else nn.Identity()
        for mine in uses
    )


class SharedAttention(nn.Module):
    """Causal attention over the 2 d-wide [x, e], with per-use LoRA on q, k and v and RoPE when configured."""

    def __init__(self, c: Zamba2Config, uses: list[bool]):
        super().__init__()
        width = 2 * c.d_model
        self.n_heads, self.head_dim = c.n_heads, width // c.n_heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, c.d_model, bias=False)
        for name in ("linear_q_adapter_list", "linear_k_adapter_list", "linear_v_adapter_list"):
            setattr(self, name, _adapters(uses, width, c.adapter_rank, width) if c.attn_adapters else None)
        self.rotary = RotaryEmbedding(self.head_dim, c.rope_theta) if c.rope else None

    def forward(self, t: torch.Tensor, use: int, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """t: (B, T, 2 d) -> (B, T, d); the tokens sit at positions cache.length .. cache.length + T - 1."""
        B, T, _ = t.shape

        def heads(proj, adapters):  # (B, T, 2 d) -> (B, T, H, D)
            y = proj(t) if adapters is None else proj(t) + adapters[use](t)
            return y.view(B, T, self.n_heads, self.head_dim)

        q = heads(self.q_proj, self.linear_q_adapter_list)
        k = heads(self.k_proj, self.linear_k_adapter_list)
        v = heads(self.v_proj, self.linear_v_adapter_list)
        if self.rotary is not None:
            cos, sin = self.rotary(cache.length if cache is not None else 0, T, t.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        o, cache = attend(q, k, v, cache, scale=(self.head_dim / 2) ** -0.5)  # (B, H, T, D)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), cache


class SharedMLP(nn.Module):
    """down( gelu(g) * u ), [g, u] = (W_gate_up + A_u) x with a per-use LoRA adapter A_u."""

    def __init__(self, c: Zamba2Config, uses: list[bool]):
        super().__init__()
        self.gate_up_proj = nn.Linear(c.d_model, 2 * c.d_hidden, bias=False)
        self.down_proj = nn.Linear(c.d_hidden, c.d_model, bias=False)
        self.gate_up_proj_adapter_list = _adapters(uses, c.d_model, c.adapter_rank, 2 * c.d_hidden)

    def forward(self, x: torch.Tensor, use: int) -> torch.Tensor:
        gate, up = (self.gate_up_proj(x) + self.gate_up_proj_adapter_list[use](x)).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate) * up)


class SharedTransformer(nn.Module):
    """The shared block: MLP(RMSNorm(Attn(RMSNorm([x, e])))), with no residual inside."""

    def __init__(self, c: Zamba2Config, uses: list[bool]):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(2 * c.d_model, eps=c.norm_eps)
        self.self_attn = SharedAttention(c, uses)
        self.pre_ff_layernorm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.feed_forward = SharedMLP(c, uses)

    def forward(self, x, emb, use, cache):
        """x, emb: (B, T, d) -> (B, T, d), and the use's KV cache."""
        a, cache = self.self_attn(self.input_layernorm(torch.cat([x, emb], dim=-1)), use, cache)
        return self.feed_forward(self.pre_ff_layernorm(a), use), cache


class HybridLayer(nn.Module):
    """x + Mamba2(RMSNorm(x + linear(shared(x, e)))), for use `use` of its shared block."""

    def __init__(self, c: Zamba2Config, shared: SharedTransformer, use: int):
        super().__init__()
        self.c, self.use = c, use
        self.shared_transformer = shared
        self.linear = nn.Linear(c.d_model, c.d_model, bias=False)
        self.mamba = Block(Mamba2Mixer(c.mamba2()), None, lambda: nn.RMSNorm(c.d_model, eps=c.norm_eps))

    def forward(self, x, emb, state):
        """x, emb: (B, T, d); state: (KV cache, Mamba-2 state) or None."""
        kv, ssm = state if state is not None else (None, None)
        s, kv = self.shared_transformer(x, emb, self.use, kv)
        y, ssm = self.mamba.mixer(self.mamba.mixer_norm(x + self.linear(s)), ssm)
        return x + y, (kv, ssm)

    def step(self, x, emb, state):
        """x, emb: (B, d) -> (B, d)."""
        y, state = self(x[:, None], emb[:, None], state)
        return y[:, 0], state

    def init_state(self, batch, device, dtype, capacity=0):
        attn = self.shared_transformer.self_attn
        kv = KVCache.empty(batch, attn.n_heads, attn.head_dim, capacity, device, dtype)
        return kv, self.mamba.init_state(batch, device, dtype)

    def state_bytes(self, batch, context, dtype):
        kv = 2 * batch * context * 2 * self.c.d_model * torch.finfo(dtype).bits // 8  # keys and values, 2 d wide
        return kv + self.mamba.state_bytes(batch, context, dtype)

    def flops_per_token(self, context):
        c, width, r = self.c, 2 * self.c.d_model, self.c.adapter_rank
        attn = linear_flops(width, 3 * width)
        if c.attn_adapters:
            attn += 3 * (linear_flops(width, r) + linear_flops(r, width))
        attn += linear_flops(width, c.d_model) + 2 * 2 * width * (context + 1)  # o_proj; q.k and p.v
        mlp = linear_flops(c.d_model, 2 * c.d_hidden) + linear_flops(c.d_model, r) + linear_flops(r, 2 * c.d_hidden)
        mlp += linear_flops(c.d_hidden, c.d_model)
        return attn + mlp + linear_flops(c.d_model, c.d_model) + self.mamba.flops_per_token(context)


class Zamba2(LanguageModel):
    """Embedding -> Mamba-2 and hybrid layers by the pattern -> RMSNorm -> head; hybrid layers also see
    the embeddings."""

    def __init__(self, c: Zamba2Config):
        n_uses = c.pattern.count("H")
        shared = [
            SharedTransformer(c, [u % c.n_shared == b for u in range(n_uses)]) for b in range(min(c.n_shared, n_uses))
        ]
        layers, use = [], 0
        for letter in c.pattern:
            if letter == "H":
                layers.append(HybridLayer(c, shared[use % c.n_shared], use))
                use += 1
            else:
                layers.append(Block(Mamba2Mixer(c.mamba2()), None, lambda: nn.RMSNorm(c.d_model, eps=c.norm_eps)))
        super().__init__(c, layers)

    def _run(self, x, state, method: str):
        emb = x
        new_state = []
        for layer, s in zip(self.layers, state):
            if isinstance(layer, HybridLayer):
                x, s = getattr(layer, method)(x, emb, s)
            else:
                x, s = getattr(layer, method)(x, s)
            new_state.append(s)
        return x, new_state

    def forward(self, input_ids, state=None, last_only=False):
        """input_ids: (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`; state after the last token."""
        state = state if state is not None else [None] * len(self.layers)
        x, state = self._run(self.embed(input_ids), state, "forward")
        return self.lm_head(self.norm(x[:, -1:] if last_only else x)), state

    def step(self, tokens, state):
        """tokens: (B,) or (B, 1) -> logits (B, V) of the next token, and the advanced state."""
        x, state = self._run(self.embed(tokens.reshape(-1)), state, "step")
        return self.lm_head(self.norm(x)), state


SIZES = {
    "tiny": Zamba2Config(
        vocab_size=256, d_model=64, n_layers=6, pattern="MMHMMH", n_heads=4, d_hidden=128, n_shared=2, adapter_rank=8,
        d_state=16, n_mamba_heads=8, chunk_size=8,
    ),
    "130m": Zamba2Config(
        vocab_size=50280, d_model=768, n_layers=20, pattern="MMMMH" * 4, n_heads=12, d_hidden=2048, n_shared=1,
        adapter_rank=64, n_mamba_heads=24,
    ),
    # The released checkpoints, from their config.json (Zyphra/Zamba2-1.2B, Zyphra/Zamba2-2.7B, Zyphra/Zamba2-7B);
    # all have Mamba-2 head_dim 64 and a 32000-token vocabulary with tied embeddings.
    "1.2b": Zamba2Config(
        vocab_size=32000, d_model=2048, n_layers=38, pattern="MMMMMH" * 6 + "MM", n_heads=32, d_hidden=8192,
        n_shared=1, adapter_rank=128, attn_adapters=True, rope=True, d_state=128, n_mamba_heads=64,
    ),
    "2.7b": Zamba2Config(
        vocab_size=32000, d_model=2560, n_layers=54, pattern="M" + "MMMMMH" * 7 + "MMMMH" + "MMMH" + "MM", n_heads=32,
        d_hidden=10240, n_shared=2, adapter_rank=128, attn_adapters=False, rope=False, d_state=64, n_mamba_heads=80,
    ),
    "7b": Zamba2Config(
        vocab_size=32000, d_model=3584, n_layers=81, pattern="MMMMMMH" + "MMMMH" + "MMMMMH" * 11 + "MMM", n_heads=32,
        d_hidden=14336, n_shared=2, adapter_rank=128, attn_adapters=False, rope=True, d_state=64, n_mamba_heads=112,
        n_groups=2,
    ),
}
MODEL = Zamba2


# --- Hugging Face mapping (Zamba2ForCausalLM), see models/hf.py -----------------------------------
HF_CLASS = "Zamba2ForCausalLM"
HF_RENAMES = [
    (r"model\.embed_tokens\.(.*)", r"embed.\1"),
    (r"model\.final_layernorm\.(.*)", r"norm.\1"),
    (r"model\.layers\.(\d+)\.mamba_decoder\.mamba\.(.*)", r"layers.\1.mamba.mixer.\2"),
    (r"model\.layers\.(\d+)\.mamba_decoder\.input_layernorm\.(.*)", r"layers.\1.mamba.mixer_norm.\2"),
    (r"model\.layers\.(\d+)\.mamba\.(.*)", r"layers.\1.mixer.\2"),
    (r"model\.layers\.(\d+)\.input_layernorm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"model\.(.*)", r"\1"),
]


def to_hf_config(c: Zamba2Config):
    from transformers import Zamba2Config as HFZamba2Config

    return HFZamba2Config(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
        layers_block_type=["hybrid" if letter == "H" else "mamba" for letter in c.pattern],
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads, intermediate_size=c.d_hidden,
        num_mem_blocks=c.n_shared, use_shared_attention_adapter=c.attn_adapters, adapter_rank=c.adapter_rank,
        use_mem_rope=c.rope, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        mamba_d_state=c.d_state, mamba_d_conv=c.d_conv, mamba_expand=c.expand, n_mamba_heads=c.n_mamba_heads,
        mamba_ngroups=c.n_groups, chunk_size=c.chunk_size, time_step_min=c.dt_min, time_step_max=c.dt_max,
        rms_norm_eps=c.norm_eps, hidden_act="gelu", add_bias_linear=False, use_conv_bias=True,
        tie_word_embeddings=c.tie_embeddings,
    )


def from_hf_config(d: dict) -> Zamba2Config:
    kinds = d.get("layers_block_type") or d.get("layer_types")
    rope = d.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(
            f"rope_parameters.rope_type = '{rope['rope_type']}': altbench's Zamba2 has the default (unscaled) RoPE only"
        )
    return Zamba2Config(
        vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
        pattern="".join("H" if k == "hybrid" else "M" for k in kinds), n_heads=d["num_attention_heads"],
        d_hidden=d.get("intermediate_size") or 4 * d["hidden_size"], n_shared=d.get("num_mem_blocks", 1),
        adapter_rank=d.get("adapter_rank", 128), attn_adapters=d.get("use_shared_attention_adapter", False),
        rope=d.get("use_mem_rope", False), rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
        d_state=d.get("mamba_d_state", 64), d_conv=d.get("mamba_d_conv", 4), expand=d.get("mamba_expand", 2),
        n_mamba_heads=d.get("n_mamba_heads", 8), n_groups=d.get("mamba_ngroups", 1),
        chunk_size=d.get("chunk_size", 256),
        dt_min=d.get("time_step_min", 0.001), dt_max=d.get("time_step_max", 0.1), norm_eps=d.get("rms_norm_eps", 1e-5),
        tie_embeddings=d.get("tie_word_embeddings", True),
    )
