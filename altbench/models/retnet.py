"""RetNet: multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer
for Large Language Models", arXiv:2307.08621).

Each block is pre-norm (sec. 2.3, eq. 9):

    Y = X + MSR(RMSNorm(X)),    X' = Y + FFN(RMSNorm(Y)),    FFN(x) = gelu(x W_1) W_2

and multi-scale retention (sec. 2.1-2.2) runs in head h a linear recurrence on a matrix memory
S (d_k x d_v, the per-head key and value widths) with a fixed scalar decay gamma_h = 1 - 2^(-5-h):

    q_t = RoPE_t(x_t W_Q) / sqrt(d_k),   k_t = RoPE_t(x_t W_K),   v_t = x_t W_V
    S_t = gamma_h S_{t-1} + k_t^T v_t                                      (eq. 6)
    o_t = q_t S_t
    MSR(X) = (swish(X W_G) * GroupNorm_h(O)) W_O                           (eq. 8)

The rotation is the paper's Theta_n = e^{i n theta} (xPos without its extrapolation scale, whose
role gamma plays) applied as RoPE on channel pairs (models/blocks.py).

Four forms compute the same map and return (o, final state):
  `retention_ref`        the loop above in fp32: the ground truth
  `retention_parallel`   (Q K^T * D) V with D_nm = gamma^(n-m) for n >= m, else 0       (eq. 5)
  `retention_chunkwise`  parallel inside chunks, the state carried across chunks        (eq. 7)
  `retention_step`       one token

Normalisation (sec. 2.2): besides 1/sqrt(d_k), the paper divides the rows of D by
sqrt(sum_m D_nm) and the rows of the scores by max(|sum_m R_nm|, 1). Both multiply each head's o_t
by a positive number, which the per-head GroupNorm right after removes (up to its eps); they guard
fp16 ranges only. We keep 1/sqrt(d_k) on q and drop the other two, so every form carries the plain
S_t of eq. 6 and all forms give the same numbers.

Parameter allocation (sec. 3.1): key width d, value and gate width 2d, FFN width 2d, so a block holds
12 d^2 weights like a Transformer layer. The FFN is the paper's two-matrix GELU FFN (a SwiGLU of the
same size would be 4d/3 wide). Block norms are RMSNorm, as in torchscale's released RetNet and the
other altbench models, where the paper writes LayerNorm.

State of a block: (S: (B, H, d_k/H, d_v/H) in fp32, position: int). The position (tokens seen so
far) places the rotation of the next token; it is a Python int and holds no tensor memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.errors import UserError
from altbench.models.base import LanguageModel, LMConfig, linear_flops, swap_layer_op
from altbench.models.blocks import FusedLinear, GeluMLP, RotaryEmbedding, apply_rotary
from altbench.models.compose import pattern_blocks


@dataclass
class RetNetConfig(LMConfig):
    n_heads: int = 3  # retention heads; head h decays with gamma_h = 1 - 2^(-5-h)
    value_factor: int = 2  # value and gate width = value_factor * d_model (paper, sec. 3.1)
    d_hidden: int = 0  # FFN width; 0 means 2 * d_model, which keeps a block at 12 d^2 (sec. 3.1)
    chunk_size: int = 64  # chunk length of the chunkwise form
    retention_form: str = "chunkwise"  # form used by forward: "chunkwise" (O(T) memory) or "parallel" (T x T)
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.d_hidden == 0:
            self.d_hidden = 2 * self.d_model


def retention_gammas(n_heads: int, device=None) -> torch.Tensor:
    """gamma_h = 1 - 2^(-5-h) for h = 0 .. n_heads-1 (sec. 2.2), fp32: (H,).

    Computed when used rather than stored, so casting the model to bf16 cannot round it to 1.
    """
    return 1 - 2.0 ** (-5 - torch.arange(n_heads, device=device, dtype=torch.float32))


# --- retention in four forms --------------------------------------------------------------------


def retention_ref(q, k, v, gamma, state=None):
    """The recurrence, one token at a time, in fp32; the ground truth for the other forms.

    q, k: (B, T, H, K)   v: (B, T, H, V)   gamma: (H,)   state: (B, H, K, V) or None
    returns o: (B, T, H, V) in v's dtype, S_T: (B, H, K, V) in fp32
    """
    dtype = v.dtype
    q, k, v, gamma = q.float(), k.float(), v.float(), gamma.float()
    B, T, H, K = q.shape
    S = state.float() if state is not None else q.new_zeros(B, H, K, v.shape[-1])
    outputs = []
    for t in range(T):
        S = gamma[:, None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))  # (B, H, V)
    return torch.stack(outputs, dim=1).to(dtype), S


def retention_parallel(q, k, v, gamma, state=None):
    """Same contract as `retention_ref`: o = (Q K^T * D) V with the decay mask D (eq. 5).

    An initial state S_0 adds gamma^(n+1) q_n S_0 to o_n; the final state is
    S_T = gamma^T S_0 + sum_m gamma^(T-1-m) k_m^T v_m. Memory grows as T^2.
    """
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    T = q.shape[1]
    log_gamma = torch.log(gamma.float())  # (H,)
    pos = torch.arange(T, device=q.device, dtype=torch.float32)  # (T,)
    distance = pos[:, None] - pos[None, :]  # (T, T): n - m
    exponent = (distance * log_gamma[:, None, None]).masked_fill(distance < 0, -math.inf)  # (H, T, T)
    D = torch.exp(exponent)  # (H, T, T): gamma^(n-m) below the diagonal, 0 above
    scores = torch.einsum("bnhk,bmhk->bhnm", q, k) * D  # (B, H, T, T)
    o = torch.einsum("bhnm,bmhv->bnhv", scores, v)  # (B, T, H, V)
    to_end = torch.exp((T - 1 - pos) * log_gamma[:, None])  # (H, T): gamma^(T-1-m)
    S = torch.einsum("bmhk,hm,bmhv->bhkv", k, to_end, v)  # (B, H, K, V)
    if state is not None:
        from_start = torch.exp((pos + 1) * log_gamma[:, None])  # (H, T): gamma^(n+1)
        o = o + torch.einsum("bnhk,hn,bhkv->bnhv", q, from_start, state.float())
        S = S + torch.exp(T * log_gamma)[:, None, None] * state.float()
    return o.to(dtype), S


def retention_chunkwise(q, k, v, gamma, state=None, chunk_size=64):
    """Same contract as `retention_ref`, chunk by chunk (eq. 7): inside a chunk the parallel form,
    across chunks the state. T need not be a multiple of `chunk_size`: the padded tail neither
    decays nor writes, so the final state is exact. Memory grows as T * chunk_size.
    """
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    B, T, H, K = q.shape
    V, C = v.shape[-1], chunk_size
    N = -(-T // C)  # number of chunks
    pad = N * C - T
    q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)).view(B, N, C, H, -1) for x in (q, k, v))  # (B, N, C, H, .)
    log_decay = torch.log(gamma.float()).expand(T, H)  # (T, H): log gamma at every real position
    log_decay = F.pad(log_decay, (0, 0, 0, pad)).view(N, C, H)  # the padded tail does not decay
    b = log_decay.cumsum(dim=1)  # (N, C, H): log of the decay from the chunk start through position i

    # inside each chunk: D_ij = exp(b_i - b_j) = gamma^(i-j) for i >= j
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # (C, C)
    exponent = (b[:, :, None] - b[:, None, :]).masked_fill(~causal[None, :, :, None], -math.inf)  # (N, C, C, H)
    D = torch.exp(exponent).permute(0, 3, 1, 2)  # (N, H, C, C)
    scores = torch.einsum("bnihk,bnjhk->bnhij", q, k) * D  # (B, N, H, C, C)
    o = torch.einsum("bnhij,bnjhv->bnihv", scores, v)  # (B, N, C, H, V)

    # across chunks: position i reads gamma^(i+1) S_prev; the chunk writes sum_j gamma^(C-1-j) k_j^T v_j
    q_decayed = q * torch.exp(b)[..., None]  # (B, N, C, H, K)
    k_decayed = k * torch.exp(b[:, -1:] - b)[..., None]  # (B, N, C, H, K)
    written = torch.einsum("bnjhk,bnjhv->bnhkv", k_decayed, v)  # (B, N, H, K, V)
    chunk_decay = torch.exp(b[:, -1])  # (N, H)
    S = state.float() if state is not None else q.new_zeros(B, H, K, V)
    cross = []
    for n in range(N):
        cross.append(torch.einsum("bihk,bhkv->bihv", q_decayed[:, n], S))  # (B, C, H, V)
        S = chunk_decay[n, :, None, None] * S + written[:, n]  # (B, H, K, V)
    o = o + torch.stack(cross, dim=1)
    return o.reshape(B, N * C, H, V)[:, :T].to(dtype), S


def retention_step(q, k, v, gamma, state):
    """One token: q, k: (B, H, K); v: (B, H, V); state: (B, H, K, V) fp32 -> o (B, H, V), state."""
    S = gamma.float()[:, None, None] * state + k.float()[..., None] * v.float()[:, :, None, :]
    return torch.einsum("bhk,bhkv->bhv", q.float(), S).to(v.dtype), S


RETENTION_FORMS = {"chunkwise": retention_chunkwise, "parallel": retention_parallel}


# --- the block ----------------------------------------------------------------------------------


class MultiScaleRetention(nn.Module):
    """q, k (rotated), v -> retention per head -> GroupNorm per head -> * swish(gate) -> out_proj."""

    def __init__(self, c: RetNetConfig):
        super().__init__()
        self.chunkwise = retention_chunkwise  # `use_backend` swaps in a kernel with the same contract
        if c.retention_form not in RETENTION_FORMS:
            raise UserError(f"unknown retention_form '{c.retention_form}'; known: {', '.join(RETENTION_FORMS)}")
        self.c = c
        self.n_heads = c.n_heads
        self.key_dim, self.value_dim = c.d_model // c.n_heads, c.value_factor * c.d_model // c.n_heads  # per head
        dv = self.n_heads * self.value_dim
        pieces = {"q_proj": c.d_model, "k_proj": c.d_model, "v_proj": dv, "g_proj": dv}
        FusedLinear(c.d_model, pieces, bias=False).attach(self, "qkvg_proj")  # the four maps of x in one matmul
        self.o_proj = nn.Linear(dv, c.d_model, bias=False)
        self.group_norm = nn.GroupNorm(self.n_heads, dv, eps=c.norm_eps)
        self.rotary = RotaryEmbedding(self.key_dim, c.rope_theta)

    def _qkvg(self, x, start):
        """x: (B, T, d_model) at positions start.. -> q, k: (B, T, H, K) rotated, q scaled; v: (B, T, H, V);
        the output gate's input g: (B, T, H V)."""
        B, T, _ = x.shape
        q, k, v, g = self.qkvg_proj(x)
        q = q.view(B, T, self.n_heads, self.key_dim) * self.key_dim**-0.5  # (B, T, H, K)
        k = k.view(B, T, self.n_heads, self.key_dim)  # (B, T, H, K)
        v = v.view(B, T, self.n_heads, self.value_dim)  # (B, T, H, V)
        cos, sin = self.rotary(start, T, x.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, g

    def _output(self, g, o):
        """g: (..., H V) the output gate's input; o: (..., H, V) -> (..., d_model)."""
        dv = self.n_heads * self.value_dim
        o = self.group_norm(o.reshape(-1, dv)).view(*g.shape[:-1], dv)  # normalised per head
        return self.o_proj(F.silu(g) * o)

    def forward(self, x, state):
        """x: (B, T, d_model); state: (S (B, H, K, V) fp32, position) or None."""
        S, start = state if state is not None else (None, 0)
        q, k, v, g = self._qkvg(x, start)
        gamma = retention_gammas(self.n_heads, x.device)
        if self.c.retention_form == "chunkwise":
            o, S = self.chunkwise(q, k, v, gamma, S, self.c.chunk_size)
        else:
            o, S = retention_parallel(q, k, v, gamma, S)
        return self._output(g, o), (S, start + x.shape[1])

    def step(self, x, state):
        """x: (B, d_model) -> (B, d_model)."""
        S, position = state
        q, k, v, g = self._qkvg(x[:, None], position)
        o, S = retention_step(q[:, 0], k[:, 0], v[:, 0], retention_gammas(self.n_heads, x.device), S)
        return self._output(g[:, 0], o), (S, position + 1)

    def init_state(self, batch, device, dtype, capacity=0):
        return torch.zeros(batch, self.n_heads, self.key_dim, self.value_dim, device=device, dtype=torch.float32), 0

    def state_bytes(self, batch, context, dtype):
        return batch * self.n_heads * self.key_dim * self.value_dim * 4  # fp32 whatever the model's dtype

    def flops_per_token(self, context):
        d, dv = self.c.d_model, self.n_heads * self.value_dim
        proj = linear_flops(d, 2 * d + 2 * dv) + linear_flops(dv, d)
        return proj + 5 * self.n_heads * self.key_dim * self.value_dim  # decay S, add k^T v (2), read q S (2)


class RetNet(LanguageModel):
    def __init__(self, c: RetNetConfig):
        blocks = pattern_blocks(
            "R" * c.n_layers,
            mixers={"R": lambda i: MultiScaleRetention(c)},
            mlp=lambda i: GeluMLP(c.d_model, c.d_hidden, bias=False),
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)


# Sun et al. 2023, Table 2 (sizes 1.3B / 2.7B / 6.7B: width, depth, heads; head key width 256), with
# altbench's vocabulary and tied embeddings (the paper does not state its vocabulary). "130m" is matched
# to altbench's transformer 130m: same width and depth, FFN 2.5 d wide so that a block holds 13 d^2
# like that transformer's layer (4 d^2 attention + a 3d-wide SwiGLU).
SIZES = {
    "tiny": RetNetConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, chunk_size=16),
    "130m": RetNetConfig(d_model=768, n_layers=12, n_heads=3, d_hidden=1920),
    "1.3b": RetNetConfig(d_model=2048, n_layers=24, n_heads=8),
    "2.7b": RetNetConfig(d_model=2560, n_layers=32, n_heads=10),
    "6.7b": RetNetConfig(d_model=4096, n_layers=32, n_heads=16),
}
MODEL = RetNet


# --- backends: the same chunkwise op from other implementations (see registry.use_backend) ---------


def retention_triton(q, k, v, gamma, state=None, chunk_size=64):
    """`retention_chunkwise`'s contract through altbench's Triton kernel (g = log gamma, scale 1:
    q arrives already scaled)."""
    from altbench.kernels.chunk_scalar_decay import chunk_scalar_decay

    B, T, H, _ = q.shape
    g = torch.log(gamma.float()).expand(B, T, H).contiguous()  # (B, T, H)
    o, S = chunk_scalar_decay(q, k.to(q.dtype), v.to(q.dtype), g, state, scale=1.0, chunk_size=64)
    return o.to(v.dtype), S


def retention_fla(q, k, v, gamma, state=None, chunk_size=64):
    """`retention_chunkwise`'s contract through fla's `chunk_simple_gla` with a constant decay per head
    (g_gamma = log gamma), the kernel fla's own RetNet trains with; scale 1 (q arrives scaled), the
    state in our (B, H, K, V) layout in fp32. fla picks its own chunk size."""
    from fla.ops.simple_gla import chunk_simple_gla

    S0 = state.float() if state is not None else None
    o, S = chunk_simple_gla(q, k.to(q.dtype), v.to(q.dtype), g_gamma=torch.log(gamma.float()), scale=1.0,
                            initial_state=S0, output_final_state=True)
    return o.to(v.dtype), S


BACKENDS = {"triton": swap_layer_op("mixer.chunkwise", retention_triton),
            "fla": swap_layer_op("mixer.chunkwise", retention_fla)}
