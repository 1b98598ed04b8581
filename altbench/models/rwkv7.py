"""RWKV-7 "Goose": a generalized delta rule with vector-valued decay (Peng et al. 2025, arXiv:2503.14456).

Per head (head size K = V), with row vectors r, w, k, a, b in R^K and v in R^V, the wkv state S is a
(V x K) matrix that evolves, in the paper's convention (sec. 4, "wkv" update), as

    S_t = S_{t-1} (diag(w_t) + a_t^T b_t) + v_t^T k_t        o_t = S_t r_t^T  (a V-vector)

RWKV-7 sets a_t = -kappa_t and b_t = kappa_t * iclr_t, where kappa_t is the L2-normalised removal key and
iclr_t the in-context learning rate, so the transition diag(w_t) - kappa_t^T (iclr_t * kappa_t) erases a
learnt fraction of what the state holds along kappa_t before v_t^T k_t is written. The state is stored
as (B, H, V, K); fla keeps its transpose, (B, H, K, V).

The time-mix layer around it (the paper's eqs. for x^r ... x^g, a, k, v, w, r, g and p_t):

    x^c     = lerp(x_t, x_{t-1}, mu_c)                   token shift, c in {r, w, k, v, a, g}
    r, k    = x^r W_r, x^k W_k
    w_t     = exp(-e^{-0.5} sigmoid(LoRA_w(x^w)))       decay in (0.545, 1), LoRA with tanh
    iclr_t  = sigmoid(LoRA_a(x^a))
    v_t     = x^v W_v                                   in layer 0 (saved as v_first)
            = lerp(x^v W_v, v_first_t, sigmoid(LoRA_v(x^v)))   in later layers (value residual)
    g_t     = LoRA_g(x^g), sigmoid inside, no bias
    kappa_t = normalize_per_head(k_t * k_k);  k~_t = k_t * (1 + (iclr_t - 1) * k_a)
    p_t     = GroupNorm_per_head(o_t) + (sum_head(r_t * r_k * k~_t)) v_t      the "bonus" term
    out_t   = (g_t * p_t) W_o

and the channel mix is  out = W_value relu(W_key lerp(x_t, x_{t-1}, mu_k))^2.  A block is
x + TimeMix(LN(x)), then x + ChannelMix(LN(x)), with an extra LayerNorm ("ln0") on the embedding
inside the first block, and LayerNorm (with bias) as the final norm.

v_first_t depends only on the token at position t (layer 0's value projection of it), so it needs
no state across calls: a segmented forward or a `step` recomputes it from layer 0 for the tokens at
hand and threads it to the later layers. The state of a block is (time-mix shift token (B, d),
wkv state (B, H, V, K) fp32, channel-mix shift token (B, d)).

Three forms compute the wkv recurrence: `rwkv7_ref` (the loop above), `rwkv7_chunked` (a loop over
chunks; inside a chunk the product of transitions is solved in WY/UT form with one triangular solve)
and `rwkv7_step` (one token). Parameter names follow fla's `RWKV7ForCausalLM`, so loading its state
dict is a rename (`FLA_RENAMES`, `from_fla_state_dict`).
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import LanguageModel, LMConfig, linear_flops, swap_layer_op
from altbench.models.blocks import FusedLinear

LOG_DECAY_SCALE = math.exp(-0.5)  # w = exp(-e^{-0.5} sigmoid(d)) keeps w in (exp(-e^{-0.5}), 1)


@dataclass
class RWKV7Config(LMConfig):
    vocab_size: int = 65536  # the RWKV World tokenizer
    tie_embeddings: bool = False  # RWKV-7 keeps a separate head
    head_size: int = 64  # K = V per head; n_heads = d_model / head_size
    d_ffn: int = 0  # channel-mix width; 0 means 4 * d_model as in the paper
    decay_lora: int = 64  # rank of the LoRA that gives w
    a_lora: int = 64  # rank of the LoRA that gives the in-context learning rate
    v_lora: int = 32  # rank of the LoRA that gives the value-residual mix (layers > 0)
    gate_lora: int = 128  # rank of the LoRA that gives the output gate g
    chunk_size: int = 64  # chunk length of `rwkv7_chunked` in forward

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_size

    @property
    def ffn_dim(self) -> int:
        return self.d_ffn or 4 * self.d_model


# --- the wkv recurrence in three forms ------------------------------------------------------------


def rwkv7_ref(r, log_w, k, v, a, b, state=None):
    """S_t = S_{t-1} (diag(w_t) + a_t^T b_t) + v_t^T k_t, o_t = S_t r_t, one step at a time in fp32.

    r, log_w, k, a, b: (B, T, H, K)   v: (B, T, H, V)   state: (B, H, V, K) or None (zeros)
    log_w is log(w_t) <= 0.
    returns o: (B, T, H, V) in r's dtype, S_T: (B, H, V, K) in fp32
    """
    dtype = r.dtype
    r, w, k, v, a, b = r.float(), log_w.float().exp(), k.float(), v.float(), a.float(), b.float()
    Bsz, T, H, K = r.shape
    S = state.float() if state is not None else r.new_zeros(Bsz, H, v.shape[-1], K)
    outs = []
    for t in range(T):
        transition = torch.diag_embed(w[:, t]) + a[:, t, :, :, None] * b[:, t, :, None, :]  # (B, H, K, K)
        S = S @ transition + v[:, t, :, :, None] * k[:, t, :, None, :]  # (B, H, V, K)
        outs.append((S @ r[:, t, :, :, None])[..., 0])  # (B, H, V)
    return torch.stack(outs, dim=1).to(dtype), S


def rwkv7_step(r, log_w, k, v, a, b, state):
    """One token: r, log_w, k, a, b: (B, H, K); v: (B, H, V); state: (B, H, V, K) fp32 -> o (B, H, V), S."""
    dtype = r.dtype
    r, w, k, v, a, b = r.float(), log_w.float().exp(), k.float(), v.float(), a.float(), b.float()
    Sa = state @ a[..., None]  # (B, H, V, 1)
    S = state * w[:, :, None, :] + Sa * b[:, :, None, :] + v[..., None] * k[:, :, None, :]  # (B, H, V, K)
    return (S @ r[..., None])[..., 0].to(dtype), S


def rwkv7_chunked(r, log_w, k, v, a, b, state=None, chunk_size=64):
    """Same contract as `rwkv7_ref`, a loop over chunks of `chunk_size` tokens (T is zero-padded).

    Working with the transpose H = S^T (K x V), the recurrence is H_t = diag(w_t) H_{t-1} + b_t^T u_t
    + k_t^T v_t with u_t = a_t H_{t-1}. With G_t the cumulative log decay inside a chunk (Gamma_t =
    exp(G_t)) and H_0 the state entering it, unrolling gives for every position t of the chunk

        u_t = (a_t * Gamma_{t-1}) H_0 + sum_{i<t} [a_t Gamma_{t-1}/Gamma_i . b_i] u_i + [... . k_i] v_i
        o_t = (r_t * Gamma_t) H_0 + sum_{i<=t} [r_t Gamma_t/Gamma_i . b_i] u_i + [... . k_i] v_i

    so u = (I - M_ab)^{-1} ((a * Gamma_prev) H_0 + M_ak v) with M strictly lower triangular: the UT
    form of the product of the chunk's transitions, one triangular solve for all chunks at once.
    Only u, o and the next H_0 depend on H_0, so the loop over chunks is a few (C x K)(K x V) products.
    Decay ratios Gamma_t/Gamma_i are split around the chunk's middle position, so exp stays in fp32
    range while chunk_size * max|log w| / 2 < 80 (RWKV-7's |log w| < 0.61 allows chunks of 256).
    """
    dtype = r.dtype
    Bsz, T, H, K = r.shape
    V, C = v.shape[-1], chunk_size
    N = -(-T // C)

    def chunks(x):  # (B, T, H, D) -> (B, N, H, C, D); padded steps have w = 1 and write nothing
        x = F.pad(x.float(), (0, 0, 0, 0, 0, N * C - T))
        return x.view(Bsz, N, C, H, x.shape[-1]).transpose(2, 3)

    r, log_w, k, v, a, b = map(chunks, (r, log_w, k, v, a, b))
    G = log_w.cumsum(-2)  # (B, N, H, C, K) log Gamma_t
    G_prev = G - log_w  # log Gamma_{t-1}
    mid = G[..., (C - 1) // 2, None, :]  # (B, N, H, 1, K) reference point of the split
    to_mid = torch.exp(mid - G)  # Gamma_mid / Gamma_i
    b_in, k_in = b * to_mid, k * to_mid
    a_out, r_out = a * torch.exp(G_prev - mid), r * torch.exp(G - mid)
    strict = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=r.device).tril()
    M_ab = (a_out @ b_in.transpose(-1, -2)).masked_fill(~strict, 0)  # (B, N, H, C, C)
    M_ak = (a_out @ k_in.transpose(-1, -2)).masked_fill(~strict, 0)
    Q_rb = (r_out @ b_in.transpose(-1, -2)).masked_fill(~causal, 0)
    Q_rk = (r_out @ k_in.transpose(-1, -2)).masked_fill(~causal, 0)
    eye = torch.eye(C, device=r.device)
    rhs = torch.cat([M_ak @ v, a * torch.exp(G_prev)], dim=-1)  # (B, N, H, C, V + K)
    U_v, W = torch.linalg.solve_triangular(eye - M_ab, rhs, upper=False, unitriangular=True).split([V, K], -1)
    Q_rk_v = Q_rk @ v  # (B, N, H, C, V)
    r_dec = r * torch.exp(G)  # r_t * Gamma_t
    to_end = torch.exp(G[..., -1:, :] - G)  # Gamma_C / Gamma_i
    b_end, k_end = (b * to_end).transpose(-1, -2), (k * to_end).transpose(-1, -2)  # (B, N, H, K, C)
    chunk_decay = torch.exp(G[..., -1, :, None])  # (B, N, H, K, 1)

    h = state.float().transpose(-1, -2) if state is not None else r.new_zeros(Bsz, H, K, V)  # (B, H, K, V)
    outs = []
    for n in range(N):
        u = U_v[:, n] + W[:, n] @ h  # (B, H, C, V)
        outs.append(r_dec[:, n] @ h + Q_rb[:, n] @ u + Q_rk_v[:, n])  # (B, H, C, V)
        h = chunk_decay[:, n] * h + b_end[:, n] @ u + k_end[:, n] @ v[:, n]
    o = torch.stack(outs, dim=1).transpose(2, 3).reshape(Bsz, N * C, H, V)[:, :T]
    return o.to(dtype), h.transpose(-1, -2)


# --- the block ------------------------------------------------------------------------------------


class LoRA(nn.Module):
    """x -> up(act(down x)): the paper's loramlp, a low-rank MLP with an optional bias."""

    def __init__(self, d_in: int, rank: int, d_out: int, activation=None, bias: bool = True):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=bias)
        self.activation = activation
        self.d_in, self.rank, self.d_out, self.has_bias = d_in, rank, d_out, bias

    def forward(self, x):
        h = self.down(x)
        return self.up(self.activation(h) if self.activation is not None else h)

    def flops_per_token(self) -> int:
        return linear_flops(self.d_in, self.rank) + linear_flops(self.rank, self.d_out)


def _ramp(d_model: int, power: float) -> torch.Tensor:
    """1 - (i / d)^power over channels i: RWKV's initial token-shift mix, ~1 early, fading across channels."""
    return 1.0 - (torch.arange(d_model, dtype=torch.float32) / d_model) ** power


class RWKV7TimeMix(nn.Module):
    """Token shift -> r, w, k, v, a, g -> wkv (generalized delta rule) -> GroupNorm + bonus -> gate -> out."""

    def __init__(self, c: RWKV7Config, layer_idx: int):
        super().__init__()
        self.c, self.layer_idx = c, layer_idx
        self.chunked = rwkv7_chunked  # `use_backend` swaps in a kernel with the same contract
        d, H, K = c.d_model, c.n_heads, c.head_size
        depth = layer_idx / max(c.n_layers - 1, 1)  # 0 .. 1
        fade = 1.0 - layer_idx / c.n_layers  # 1 .. ~0
        mix = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}  # ramp exponents (paper's init)
        for name, power in mix.items():
            setattr(self, f"x_{name}", nn.Parameter(_ramp(d, power * fade).view(1, 1, d)))
        self.k_k = nn.Parameter(torch.full((d,), 0.85))  # removal key = k * k_k, then normalised
        self.k_a = nn.Parameter(torch.ones(d))  # replacement key = k * lerp(1, iclr, k_a)
        self.r_k = nn.Parameter(torch.full((H, K), -0.04))  # bonus weight rho
        # r, k, v: three maps of three token-shifted mixes, one batched matmul (`FusedLinear.per_piece`)
        FusedLinear(d, {"r_proj": d, "k_proj": d, "v_proj": d}, bias=False).attach(self, "rkv_proj")
        self.o_proj = nn.Linear(d, d, bias=False)
        self.w_lora = LoRA(d, c.decay_lora, d, activation=torch.tanh)
        self.a_lora = LoRA(d, c.a_lora, d)
        if layer_idx > 0:
            self.v_lora = LoRA(d, c.v_lora, d)
        self.g_lora = LoRA(d, c.gate_lora, d, activation=torch.sigmoid, bias=False)
        self.g_norm = nn.GroupNorm(H, d, eps=K * c.norm_eps)  # eps scaled by head size, as RWKV-7 and fla
        with torch.no_grad():  # decay speeds from fast (w ~ 0.55) to slow (w ~ 1) across channels
            ramp = torch.arange(d, dtype=torch.float32) / max(d - 1, 1)
            self.w_lora.up.bias.copy_(-6 + 6 * ramp ** (1 + depth**0.3) + 0.5)

    def _inputs(self, x, x_prev, v_first):
        """x, x_prev: (B, T, d) -> r, log_w, k, a, b (B, T, H, K), v (B, T, H, V), g (B, T, d), v_first."""
        Bsz, T, d = x.shape
        H, K = self.c.n_heads, self.c.head_size
        delta = x_prev - x
        xr, xw, xk, xv, xa, xg = (x + delta * mu for mu in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = self.rkv_proj.per_piece(torch.stack([xr, xk, xv]))  # (B, T, d) each
        log_w = -LOG_DECAY_SCALE * torch.sigmoid(self.w_lora(xw))  # (B, T, d)
        if self.layer_idx == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, torch.sigmoid(self.v_lora(xv)))
        iclr = torch.sigmoid(self.a_lora(xa))  # (B, T, d)
        g = self.g_lora(xg)
        kappa = F.normalize((k * self.k_k).view(Bsz, T, H, K), dim=-1)  # (B, T, H, K)
        k = k * (1 + (iclr - 1) * self.k_a)
        r, log_w, k, v, iclr = (t.view(Bsz, T, H, K) for t in (r, log_w, k, v, iclr))  # (B, T, H, K)
        return r, log_w, k, v, -kappa, kappa * iclr, g, v_first

    def _output(self, o, r, k, v, g):
        """o, r, k, v: (B, T, H, K), g: (B, T, d) -> (B, T, d)."""
        Bsz, T, H, K = o.shape
        p = self.g_norm(o.reshape(Bsz * T, H * K)).view(Bsz, T, H, K)
        p = p + (r * k * self.r_k).sum(-1, keepdim=True) * v  # bonus: (r . (rho * k~)) v per head
        return self.o_proj(p.reshape(Bsz, T, H * K) * g)

    def forward(self, x, state, v_first):
        """x: (B, T, d); state: (shift (B, d), S (B, H, V, K)) or None; v_first: (B, T, d) or None."""
        shift = state[0] if state is not None else x.new_zeros(x.shape[0], x.shape[2])
        x_prev = torch.cat([shift[:, None], x[:, :-1]], dim=1)  # (B, T, d)
        r, log_w, k, v, a, b, g, v_first = self._inputs(x, x_prev, v_first)
        o, S = self.chunked(r, log_w, k, v, a, b, state[1] if state is not None else None, self.c.chunk_size)
        return self._output(o, r, k, v, g), (x[:, -1], S), v_first

    def step(self, x, state, v_first):
        """x: (B, d); v_first: (B, d) or None -> (B, d)."""
        r, log_w, k, v, a, b, g, v_first = self._inputs(x[:, None], state[0][:, None], v_first)
        o, S = rwkv7_step(r[:, 0], log_w[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0], state[1])
        return self._output(o[:, None], r, k, v, g)[:, 0], (x, S), v_first

    def flops_per_token(self) -> int:
        c, d = self.c, self.c.d_model
        loras = self.w_lora.flops_per_token() + self.a_lora.flops_per_token() + self.g_lora.flops_per_token()
        loras += self.v_lora.flops_per_token() if self.layer_idx > 0 else 0
        wkv = 9 * d * c.head_size  # per head V x K: decay 1, S a 2, rank-1 update 2, v^T k 2, S r 2
        return 4 * linear_flops(d, d) + loras + wkv


class RWKV7ChannelMix(nn.Module):
    """value( relu(key(lerp(x_t, x_{t-1}, mu_k)))^2 )."""

    def __init__(self, c: RWKV7Config, layer_idx: int):
        super().__init__()
        fade = 1.0 - layer_idx / c.n_layers
        self.x_k = nn.Parameter(_ramp(c.d_model, fade**4))
        self.key = nn.Linear(c.d_model, c.ffn_dim, bias=False)
        self.value = nn.Linear(c.ffn_dim, c.d_model, bias=False)

    def forward(self, x, x_prev):
        return self.value(torch.relu(self.key(x + (x_prev - x) * self.x_k)) ** 2)


class RWKV7Block(nn.Module):
    """x + TimeMix(LN(x)), then + ChannelMix(LN(x)); block 0 first applies ln0 to the embedding.

    forward(x, state, v_first) -> (x, state, v_first): v_first is layer 0's value, threaded by the model.
    """

    def __init__(self, c: RWKV7Config, layer_idx: int):
        super().__init__()
        self.c, self.layer_idx = c, layer_idx
        if layer_idx == 0:
            self.pre_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)  # ln0
        self.attn_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.attn = RWKV7TimeMix(c, layer_idx)
        self.ffn_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.ffn = RWKV7ChannelMix(c, layer_idx)

    def mix(self, x, state):
        """The sequence mixer alone (no norm, residual or channel mixing): the `kernel` measurement."""
        return self.attn(x, state, None)[:2]

    def forward(self, x, state, v_first=None):
        """x: (B, T, d); state: (attn shift (B, d), S (B, H, V, K), ffn shift (B, d)) or None."""
        if self.layer_idx == 0:
            x = self.pre_norm(x)
        y, (attn_shift, S), v_first = self.attn(self.attn_norm(x), state[:2] if state is not None else None, v_first)
        x = x + y
        h = self.ffn_norm(x)
        ffn_shift = state[2] if state is not None else h.new_zeros(h.shape[0], h.shape[2])
        x = x + self.ffn(h, torch.cat([ffn_shift[:, None], h[:, :-1]], dim=1))
        return x, (attn_shift, S, h[:, -1]), v_first

    def step(self, x, state, v_first=None):
        """x: (B, d) -> (B, d)."""
        if self.layer_idx == 0:
            x = self.pre_norm(x)
        y, (attn_shift, S), v_first = self.attn.step(self.attn_norm(x), state[:2], v_first)
        x = x + y
        h = self.ffn_norm(x)
        return x + self.ffn(h, state[2]), (attn_shift, S, h), v_first

    def init_state(self, batch, device, dtype, capacity=0):
        c = self.c
        shift = torch.zeros(batch, c.d_model, device=device, dtype=dtype)
        wkv = torch.zeros(batch, c.n_heads, c.head_size, c.head_size, device=device, dtype=torch.float32)
        return shift, wkv, shift.clone()

    def state_bytes(self, batch, context, dtype):
        c = self.c
        return batch * (2 * c.d_model * torch.finfo(dtype).bits // 8 + c.n_heads * c.head_size**2 * 4)

    def flops_per_token(self, context):
        c = self.c
        return self.attn.flops_per_token() + 2 * linear_flops(c.d_model, c.ffn_dim)


class RWKV7(LanguageModel):
    """Embedding -> RWKV-7 blocks (v_first threaded from block 0) -> LayerNorm -> head."""

    def __init__(self, config: RWKV7Config):
        super().__init__(config, [RWKV7Block(config, i) for i in range(config.n_layers)])
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)  # RWKV-7's ln_out, with a bias

    def forward(self, input_ids, state=None, last_only=False):
        """input_ids: (B, T) -> logits (B, T, V) (or (B, 1, V) with `last_only`), state after the last token."""
        x = self.embed(input_ids)  # (B, T, d)
        state = state if state is not None else [None] * len(self.layers)
        v_first, new_state = None, []
        for layer, s in zip(self.layers, state):
            x, s, v_first = layer(x, s, v_first)
            new_state.append(s)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)), new_state

    def step(self, tokens, state):
        """tokens: (B,) or (B, 1) -> logits (B, V) of the next token, and the advanced state."""
        x = self.embed(tokens.reshape(-1))  # (B, d)
        v_first, new_state = None, []
        for layer, s in zip(self.layers, state):
            x, s, v_first = layer.step(x, s, v_first)
            new_state.append(s)
        return self.lm_head(self.norm(x)), new_state


# Peng et al. 2025 (arXiv:2503.14456), the RWKV7-World3 models: depth and width per size, head size 64,
# World tokenizer (65536). LoRA ranks as in the released checkpoints (their w1/a1/v1/g1 shapes, also
# fla-hub's config.json files): 64/64/32/128 at 0.1b and 0.4b, 96/96/64/256 at 1.5b, 96/96/64/320 at 2.9b.
SIZES = {
    "tiny": RWKV7Config(
        vocab_size=256, d_model=64, n_layers=2, head_size=16, decay_lora=16, a_lora=16, v_lora=8, gate_lora=32,
        chunk_size=16,
    ),
    "0.1b": RWKV7Config(d_model=768, n_layers=12),
    "0.4b": RWKV7Config(d_model=1024, n_layers=24),
    "1.5b": RWKV7Config(d_model=2048, n_layers=24, decay_lora=96, a_lora=96, v_lora=64, gate_lora=256),
    "2.9b": RWKV7Config(d_model=2560, n_layers=32, decay_lora=96, a_lora=96, v_lora=64, gate_lora=320),
}
MODEL = RWKV7


# --- fla mapping (fla.models.RWKV7ForCausalLM, flash-linear-attention 0.6) ------------------------
FLA_RENAMES = [
    (r"model\.embeddings\.(.*)", r"embed.\1"),
    (r"model\.layers\.(\d+)\.attn\.(\w)_lora\.lora\.0\.(.*)", r"layers.\1.attn.\2_lora.down.\3"),
    (r"model\.layers\.(\d+)\.attn\.(\w)_lora\.lora\.2\.(.*)", r"layers.\1.attn.\2_lora.up.\3"),
    (r"model\.(.*)", r"\1"),
]


def from_fla_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fla RWKV7ForCausalLM parameter names -> altbench names (shapes are the same)."""
    from altbench.models.hf import rename

    return rename(state_dict, FLA_RENAMES)


def to_fla_config(c: RWKV7Config):
    """The fla RWKV7Config of the same model (needs fla installed)."""
    from fla.models import RWKV7Config as FlaRWKV7Config

    return FlaRWKV7Config(
        hidden_size=c.d_model, num_hidden_layers=c.n_layers, head_dim=c.head_size, vocab_size=c.vocab_size,
        intermediate_size=c.ffn_dim, decay_low_rank_dim=c.decay_lora, a_low_rank_dim=c.a_lora,
        v_low_rank_dim=c.v_lora, gate_low_rank_dim=c.gate_lora, norm_eps=c.norm_eps, norm_first=True,
        norm_bias=True, tie_word_embeddings=c.tie_embeddings, fuse_cross_entropy=False,
    )

# Matched to the altbench 130m baselines (transformer, mamba, mamba2): GPT-NeoX vocabulary, ~130M parameters.
SIZES["130m"] = dataclasses.replace(SIZES["0.1b"], vocab_size=50280, tie_embeddings=True)


# --- backends: the same chunked op from other implementations (see registry.use_backend) -----------


def rwkv7_fla(r, log_w, k, v, a, b, state=None, chunk_size=64):
    """`rwkv7_chunked`'s contract through fla's `chunk_rwkv7` (its diagonal-plus-low-rank delta rule kernel).

    fla carries our state's transpose h = S^T (B, H, K, V) and runs our recurrence transposed, term by term:
    h_t = diag(exp w_t) h_{t-1} + b_t^T (a_t h_{t-1}) + k_t^T v_t, o_t = scale * r_t h_t, with w the log
    decay. So r, log_w, k, v, a, b pass unchanged, scale is 1, and only the state is transposed in and out.
    fla takes chunks of 64 with the gate bound log w >= -e^{-0.5} of its own RWKV-7 layer, which the
    model's decay satisfies; `chunk_size` (the torch form's) does not apply.
    """
    from fla.ops.rwkv7 import chunk_rwkv7

    h0 = state.transpose(-1, -2).float().contiguous() if state is not None else None  # (B, H, K, V)
    o, h = chunk_rwkv7(
        r, log_w, k, v, a, b, scale=1.0, initial_state=h0, output_final_state=True,
        chunk_size=64, lower_bound=-LOG_DECAY_SCALE,
    )
    return o, h.transpose(-1, -2)  # (B, T, H, V) in r's dtype, (B, H, V, K) fp32


BACKENDS = {"fla": swap_layer_op("attn.chunked", rwkv7_fla)}
