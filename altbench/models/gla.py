"""GLA: gated linear attention (Yang et al. 2023, "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635).

Linear attention whose matrix memory S (d_k x d_v per head) forgets along each key channel with a
data-dependent gate (sec. 4.1-4.2):

    alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1/tau)      low rank 16, tau = 16          (sec. 4.4)
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t
    o_t = q_t S_t,        q_t = x_t W_Q / sqrt(d_k / H),  k_t = x_t W_K,  v_t = x_t W_V
    y_t = (swish(x_t W_r) * GroupNorm_h(o_t)) W_O

and a block is  h = x + GLA(RMSNorm(x)),  y = h + SwiGLU(RMSNorm(h))  (the GLA Transformer, sec. 4.4).

Three forms compute the same map and return (o, final state); the gate enters as log alpha <= 0:
  `gla_ref`      the loop above in fp32: the ground truth
  `gla_chunked`  the chunkwise form (sec. 4.2-4.3): inside a chunk, b_i = sum of log alpha up to i and
                 P_ij = sum_k q_ik k_jk exp(b_ik - b_jk); across chunks, the state. P is built on a
                 secondary level of sub-chunks: blocks below the diagonal as matmuls after both sides
                 are rescaled to the sub-chunk's start (all exponents <= 0), diagonal blocks
                 pairwise in log space. No exponent is ever positive, so no decay can overflow.
  `gla_step`     one token

Widths (sec. 4.4): 4 heads, key width d/2, value and output-gate width d; the SwiGLU MLP is 8d/3 wide
rounded up to a multiple of 256, and the per-head norm is a GroupNorm, as in fla's GLA models
(github.com/fla-org/flash-linear-attention). There is no short convolution: the state of a block is the
matrix memory S: (B, H, d_k/H, d_v/H) in fp32, nothing else.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import LanguageModel, LMConfig, linear_flops, swap_layer_op
from altbench.models.blocks import FusedLinear, SwiGLU
from altbench.models.compose import pattern_blocks


@dataclass
class GLAConfig(LMConfig):
    n_heads: int = 4  # paper, sec. 4.4
    expand_k: float = 0.5  # key width d_k = expand_k * d_model
    expand_v: float = 1.0  # value (and output gate) width d_v = expand_v * d_model
    gate_rank: int = 16  # alpha_t from the rank-16 product x W_a1 W_a2
    gate_temperature: float = 16.0  # tau in alpha_t = sigmoid(.)^(1/tau): alpha starts near 1
    d_hidden: int = 0  # SwiGLU width; 0 means 8 d / 3 rounded up to a multiple of 256
    chunk_size: int = 64  # chunk length of the chunked form
    sub_chunk_size: int = 16  # secondary level inside a chunk; divides chunk_size

    def __post_init__(self):
        if self.d_hidden == 0:
            self.d_hidden = 256 * math.ceil(int(8 * self.d_model / 3) / 256)


# --- gated linear attention in three forms ------------------------------------------------------


def gla_ref(q, k, v, log_alpha, state=None):
    """The recurrence, one token at a time, in fp32; the ground truth for the other forms.

    q, k, log_alpha: (B, T, H, K)   v: (B, T, H, V)   state: (B, H, K, V) or None
    returns o: (B, T, H, V) in v's dtype, S_T: (B, H, K, V) in fp32
    """
    dtype = v.dtype
    q, k, v, alpha = q.float(), k.float(), v.float(), log_alpha.float().exp()
    B, T, H, K = q.shape
    S = state.float() if state is not None else q.new_zeros(B, H, K, v.shape[-1])
    outputs = []
    for t in range(T):
        S = alpha[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))  # (B, H, V)
    return torch.stack(outputs, dim=1).to(dtype), S


def _intra_chunk_scores(q, k, b, sub_chunk_size):
    """P_ij = sum_k q_ik k_jk exp(b_ik - b_jk) for i >= j, else 0, inside every chunk.

    q, k, b: (B, N, C, H, K) with b the running sum of log alpha inside the chunk (non-increasing).
    returns P: (B, N, H, C, C)
    """
    B, N, C, H, K = q.shape
    c = sub_chunk_size
    n = C // c
    qs, ks, bs = (x.view(B, N, n, c, H, K) for x in (q, k, b))  # (B, N, n, c, H, K)

    # blocks below the diagonal: row i of sub-chunk a against every j before a, through r_a = b at
    # a's first position, so that b_i - r_a <= 0 and r_a - b_j <= 0 (two matmul operands)
    r = bs[:, :, :, :1]  # (B, N, n, 1, H, K)
    q_in = qs * torch.exp(bs - r)  # (B, N, n, c, H, K)
    before = torch.arange(C, device=q.device)[None, :] < c * torch.arange(n, device=q.device)[:, None]  # (n, C)
    key_exponent = (r - b[:, :, None]).masked_fill(~before[:, :, None, None], -math.inf)  # (B, N, n, C, H, K)
    k_in = k[:, :, None] * torch.exp(key_exponent)  # (B, N, n, C, H, K): zero at and after sub-chunk a
    P = torch.einsum("bnaihk,bnajhk->bnhaij", q_in, k_in)  # (B, N, H, n, c, C)

    # diagonal blocks: pairwise in log space, exp(b_i - b_j) for i >= j within the sub-chunk
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()  # (c, c)
    pair_exponent = (bs[:, :, :, :, None] - bs[:, :, :, None, :]).masked_fill(~causal[:, :, None, None], -math.inf)
    P_diag = torch.einsum("bnaihk,bnajhk,bnaijhk->bnhaij", qs, ks, torch.exp(pair_exponent))  # (B, N, H, n, c, c)
    eye = torch.eye(n, device=q.device, dtype=q.dtype)  # places sub-chunk a's block at columns of a
    P = P + torch.einsum("bnhaij,ae->bnhaiej", P_diag, eye).reshape(B, N, H, n, c, C)
    return P.reshape(B, N, H, C, C)


def gla_chunked(q, k, v, log_alpha, state=None, chunk_size=64, sub_chunk_size=16):
    """Same contract as `gla_ref`, chunk by chunk. T need not be a multiple of `chunk_size`: the
    padded tail has alpha = 1 and k = v = 0, so it neither decays nor writes the final state.
    """
    assert chunk_size % sub_chunk_size == 0, f"sub_chunk_size {sub_chunk_size} must divide chunk_size {chunk_size}"
    dtype = v.dtype
    B, T, H, K = q.shape
    V, C = v.shape[-1], chunk_size
    N = -(-T // C)  # number of chunks
    pad = N * C - T
    q, k, v, g = (F.pad(x.float(), (0, 0, 0, 0, 0, pad)).view(B, N, C, H, -1) for x in (q, k, v, log_alpha))
    b = g.cumsum(dim=2)  # (B, N, C, H, K): log of the decay from the chunk start through position i

    P = _intra_chunk_scores(q, k, b, sub_chunk_size)  # (B, N, H, C, C)
    o = torch.einsum("bnhij,bnjhv->bnihv", P, v)  # (B, N, C, H, V)

    # across chunks: position i reads exp(b_i) * S_prev; the chunk writes sum_j exp(b_last - b_j) k_j^T v_j
    q_decayed = q * torch.exp(b)  # (B, N, C, H, K)
    k_decayed = k * torch.exp(b[:, :, -1:] - b)  # (B, N, C, H, K)
    written = torch.einsum("bnjhk,bnjhv->bnhkv", k_decayed, v)  # (B, N, H, K, V)
    chunk_decay = torch.exp(b[:, :, -1])  # (B, N, H, K)
    S = state.float() if state is not None else q.new_zeros(B, H, K, V)
    cross = []
    for i in range(N):
        cross.append(torch.einsum("bchk,bhkv->bchv", q_decayed[:, i], S))  # (B, C, H, V)
        S = chunk_decay[:, i, :, :, None] * S + written[:, i]  # (B, H, K, V)
    o = o + torch.stack(cross, dim=1)
    return o.reshape(B, N * C, H, V)[:, :T].to(dtype), S


def gla_step(q, k, v, log_alpha, state):
    """One token: q, k, log_alpha: (B, H, K); v: (B, H, V); state: (B, H, K, V) fp32 -> o (B, H, V), state."""
    S = log_alpha.float().exp()[..., None] * state + k.float()[..., None] * v.float()[:, :, None, :]
    return torch.einsum("bhk,bhkv->bhv", q.float(), S).to(v.dtype), S


# --- the block ----------------------------------------------------------------------------------


class GatedLinearAttention(nn.Module):
    """q, k, v, alpha -> GLA per head -> GroupNorm per head -> * swish(x W_r) -> out_proj."""

    def __init__(self, c: GLAConfig):
        super().__init__()
        self.chunked = gla_chunked  # `use_backend` swaps in a kernel with the same contract
        self.c = c
        self.n_heads = c.n_heads
        dk, dv = int(c.expand_k * c.d_model), int(c.expand_v * c.d_model)
        self.key_dim, self.value_dim = dk // c.n_heads, dv // c.n_heads  # per head
        pieces = {"q_proj": dk, "k_proj": dk, "v_proj": dv, "gate_down": c.gate_rank}  # gate_down: W_a1
        FusedLinear(c.d_model, pieces, bias=False).attach(self, "qkva_proj")  # the maps of x in one matmul
        self.gate_up = nn.Linear(c.gate_rank, dk, bias=True)  # W_a2, b_a
        self.g_proj = nn.Linear(c.d_model, dv, bias=False)  # W_r, the output gate
        self.o_proj = nn.Linear(dv, c.d_model, bias=False)
        self.group_norm = nn.GroupNorm(c.n_heads, dv, eps=c.norm_eps)

    def _qkv_alpha(self, x):
        """x: (..., d_model) -> q, k: (..., H, K), q scaled; v: (..., H, V); log alpha: (..., H, K) in fp32,
        alpha = sigmoid(x W_a1 W_a2 + b_a)^(1/tau)."""
        q, k, v, a = self.qkva_proj(x)
        q = q.unflatten(-1, (self.n_heads, self.key_dim)) * self.key_dim**-0.5
        k = k.unflatten(-1, (self.n_heads, self.key_dim))
        v = v.unflatten(-1, (self.n_heads, self.value_dim))
        log_alpha = F.logsigmoid(self.gate_up(a).float()) / self.c.gate_temperature
        return q, k, v, log_alpha.unflatten(-1, (self.n_heads, self.key_dim))

    def _output(self, x, o):
        """x: (..., d_model) the mixer input; o: (..., H, V) -> (..., d_model)."""
        dv = self.n_heads * self.value_dim
        o = self.group_norm(o.reshape(-1, dv)).view(*x.shape[:-1], dv)  # normalised per head
        return self.o_proj(F.silu(self.g_proj(x)) * o)

    def forward(self, x, state):
        """x: (B, T, d_model); state: S (B, H, K, V) fp32 or None."""
        q, k, v, log_alpha = self._qkv_alpha(x)  # (B, T, H, K), (B, T, H, K), (B, T, H, V), (B, T, H, K)
        o, S = self.chunked(q, k, v, log_alpha, state, self.c.chunk_size, self.c.sub_chunk_size)
        return self._output(x, o), S

    def step(self, x, state):
        """x: (B, d_model) -> (B, d_model)."""
        q, k, v, log_alpha = self._qkv_alpha(x)  # (B, H, K), (B, H, K), (B, H, V), (B, H, K)
        o, S = gla_step(q, k, v, log_alpha, state)
        return self._output(x, o), S

    def init_state(self, batch, device, dtype, capacity=0):
        return torch.zeros(batch, self.n_heads, self.key_dim, self.value_dim, device=device, dtype=torch.float32)

    def state_bytes(self, batch, context, dtype):
        return batch * self.n_heads * self.key_dim * self.value_dim * 4  # fp32 whatever the model's dtype

    def flops_per_token(self, context):
        c, dk, dv = self.c, self.n_heads * self.key_dim, self.n_heads * self.value_dim
        proj = linear_flops(c.d_model, 2 * dk + 2 * dv + c.gate_rank) + linear_flops(c.gate_rank, dk)
        proj += linear_flops(dv, c.d_model)
        return proj + 5 * self.n_heads * self.key_dim * self.value_dim  # decay S, add k^T v (2), read q S (2)


class GLA(LanguageModel):
    def __init__(self, c: GLAConfig):
        blocks = pattern_blocks(
            "G" * c.n_layers,
            mixers={"G": lambda i: GatedLinearAttention(c)},
            mlp=lambda i: SwiGLU(c.d_model, c.d_hidden),
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)


LLAMA_VOCAB = 32000  # Llama tokenizer, fla's GLA default; tied, it gives the paper's 340M and 1.3B totals

# Yang et al. 2023, language-modelling experiments (sec. 5): 340M (d 1024, 24 layers) and 1.3B
# (d 2048, 24 layers), 4 heads.
SIZES = {
    "tiny": GLAConfig(vocab_size=256, d_model=64, n_layers=2, d_hidden=192, chunk_size=16, sub_chunk_size=4),
    "340m": GLAConfig(vocab_size=LLAMA_VOCAB, d_model=1024, n_layers=24),
    "1.3b": GLAConfig(vocab_size=LLAMA_VOCAB, d_model=2048, n_layers=24),
}
MODEL = GLA

# Matched to the altbench 130m baselines (transformer, mamba, mamba2): GPT-NeoX vocabulary, ~130M parameters.
SIZES["130m"] = dataclasses.replace(SIZES["340m"], vocab_size=50280, d_model=768, n_layers=12, d_hidden=2304)


# --- backends: the same chunked op from other implementations (see registry.use_backend) -----------


def gla_fla(q, k, v, log_alpha, state=None, chunk_size=64, sub_chunk_size=16):
    """`gla_chunked`'s contract through fla's `chunk_gla`: g is log alpha, the state keeps our (K, V)
    layout in fp32, and scale is 1 because q arrives already scaled. fla picks its own chunk size."""
    from fla.ops.gla import chunk_gla

    S0 = state.float() if state is not None else None  # (B, H, K, V)
    return chunk_gla(q, k, v, log_alpha, scale=1.0, initial_state=S0, output_final_state=True)  # o in v's dtype


BACKENDS = {"fla": swap_layer_op("mixer.chunked", gla_fla)}
