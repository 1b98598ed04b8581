"""xLSTM: LSTM with exponential gating and matrix memory (Beck et al. 2024, arXiv:2405.04517), in the
xLSTM 7B block layout (Beck et al. 2025, arXiv:2503.13427) that transformers' `xLSTMForCausalLM` implements.

mLSTM cell (paper sec. 2.3, eqs. 19-27), per head; q_t, k_t: (K,), v_t: (V,), scalar gate pre-activations
i~_t (input, exponential) and f~_t (forget, sigmoid), q scaled by 1/sqrt(K):

    C_t = f_t C_{t-1} + i_t k_t v_t^T            matrix memory, stored (K, V): the paper's (v k^T)^T
    n_t = f_t n_{t-1} + i_t k_t                  normaliser
    h_t = C_t^T q_t / max(|n_t^T q_t|, 1)        i_t = exp(i~_t),  f_t = sigmoid(f~_t)

Stabilised in log space by a running max m_t (eqs. 15-17), so no exp() can overflow; C, n are kept as
the true C, n times exp(-m_t):

    m_t  = max(log f_t + m_{t-1}, i~_t)
    i'_t = exp(i~_t - m_t),   f'_t = exp(log f_t + m_{t-1} - m_t)
    C_t  = f'_t C_{t-1} + i'_t k_t v_t^T,   n_t = f'_t n_{t-1} + i'_t k_t
    h_t  = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps)

Exactly as transformers computes it: the state starts at C_0 = 0, n_0 = 0, m_0 = 0 (so the stabilised
h_t equals the unstabilised one above up to eps), eps = 1e-6 is added after the max, the gate
pre-activations are soft-capped, i~ = 15 tanh(W_i x / 15) (same for f~), and so are the output logits,
30 tanh(z / 30). (transformers' default mode="inference" runs its chunkwise kernel on the largest
multiple of chunk_size tokens and its recurrent one on the rest; `mlstm_chunked` pads the last chunk
instead, which gives the same values.) Three forms compute the same map: `mlstm_ref` (the loop above), `mlstm_chunked`
(chunkwise-parallel: a stabilised quadratic form inside each chunk plus the recurrent state carried
across chunks, O(T L) work for chunk length L) and `mlstm_step` (one token).

Block (xLSTM 7B, "post-up-projection", its Fig. 1), with RMSNorm pre-norms:

    x = x + W_out( sigmoid(W_o x^) * HeadNorm(mLSTM(W_q x^, W_k x^, W_v x^, i~, f~)) ),   x^ = RMSNorm(x)
    x = x + W_down( silu(W_gate x-) * W_up x- ),                                     x- = RMSNorm(x)

HeadNorm is a LayerNorm over each head's V channels (no bias); qk width d * qk_dim_factor, v width
d * v_dim_factor, SwiGLU width d * ffn_proj_factor rounded up to a multiple of 64.

sLSTM cell (paper sec. 2.2, eqs. 8-17): scalar memory per channel, exponential input gate, and
recurrent connections R h_{t-1} inside each head (block-diagonal R, memory mixing within a head only):

    z_t = tanh(z~_t + R_z h_{t-1}),  i_t = exp(i~_t + R_i h_{t-1}),  f_t = sigmoid(f~_t + R_f h_{t-1}),
    o_t = sigmoid(o~_t + R_o h_{t-1}),  c_t = f_t c_{t-1} + i_t z_t,  n_t = f_t n_{t-1} + i_t,  h_t = o_t c_t / n_t

stabilised the same way (c/n is invariant to the shared exp(-m_t) factor). It has no parallel form:
`slstm_ref` loops over time and `slstm_step` is one token. transformers' xLSTM 7B uses mLSTM blocks
only; `slstm_at` puts sLSTM blocks (the paper's xLSTM[a:b] mixtures, its Fig. 10 block: causal conv
feeding the i and f gates, head-wise norm, then the same SwiGLU) at chosen positions.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.errors import UserError
from altbench.models.base import LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import CausalConv1d, FusedLinear, SwiGLU
from altbench.models.compose import pattern_blocks


@dataclass
class XLSTMConfig(LMConfig):
    vocab_size: int = 50304  # GPT-NeoX tokenizer padded to a multiple of 64, as xLSTM 7B
    d_model: int = 4096
    n_layers: int = 32
    norm_eps: float = 1e-6  # RMSNorms and head-wise norms, as transformers' xLSTMConfig
    tie_embeddings: bool = False  # xLSTM 7B has a separate LM head
    n_heads: int = 8  # H, mLSTM / sLSTM heads
    qk_dim_factor: float = 0.5  # query/key width = d_model * this (H * K)
    v_dim_factor: float = 1.0  # value width = d_model * this (H * V)
    ffn_proj_factor: float = 2.667  # SwiGLU width = d_model * this, rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    gate_soft_cap: float = 15.0  # i~, f~ = cap * tanh(preact / cap)
    logit_soft_cap: float = 30.0  # logits = cap * tanh(z / cap)
    eps: float = 1e-6  # added to the mLSTM denominator max(|n^T q|, exp(-m))
    chunk_size: int = 64  # L of the chunkwise-parallel form
    igate_bias_init: float = -10.0  # xLSTM 7B sec. 3.2: negative input-gate bias for stable training
    slstm_at: tuple[int, ...] = ()  # block indices that are sLSTM blocks (empty: xLSTM 7B, all mLSTM)
    conv_kernel: int = 4  # width of the sLSTM block's causal convolution


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): smooth clipping to (-cap, cap) (xLSTM 7B sec. 3.2, as in Gemma 2)."""
    return cap * torch.tanh(x / cap)


# --- the mLSTM cell in three forms ----------------------------------------------------------------


def _zero_mlstm_state(q, v):
    B, _, H, K = q.shape
    return q.new_zeros(B, H, K, v.shape[-1]), q.new_zeros(B, H, K), q.new_zeros(B, H)


def mlstm_ref(q, k, v, i, f, state=None, eps=1e-6):
    """The stabilised recurrence, one step at a time, in fp32; the ground truth for the other forms.

    q, k: (B, T, H, K)   v: (B, T, H, V)   i, f: (B, T, H) gate pre-activations (log i_t; f_t = sigmoid(f))
    state: (C (B, H, K, V), n (B, H, K), m (B, H)) or None for zeros
    returns h: (B, T, H, V) in q's dtype, (C, n, m) in fp32
    """
    dtype = q.dtype
    q, k, v, i, f = (x.float() for x in (q, k, v, i, f))
    C, n, m = (s.float() for s in state) if state is not None else _zero_mlstm_state(q, v)
    q = q * q.shape[-1] ** -0.5
    hs = []
    for t in range(q.shape[1]):
        log_f = F.logsigmoid(f[:, t])  # (B, H)
        m_new = torch.maximum(log_f + m, i[:, t])
        f_ = torch.exp(log_f + m - m_new)[..., None]  # (B, H, 1)
        i_ = torch.exp(i[:, t] - m_new)[..., None]
        C = f_[..., None] * C + i_[..., None] * k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        n = f_ * n + i_ * k[:, t]  # (B, H, K)
        m = m_new
        num = torch.einsum("bhk,bhkv->bhv", q[:, t], C)
        den = torch.maximum((q[:, t] * n).sum(-1).abs(), torch.exp(-m)) + eps  # (B, H)
        hs.append(num / den[..., None])
    return torch.stack(hs, dim=1).to(dtype), (C, n, m)


CHUNK_GROUP = 64  # chunks whose entering states one closed-form step computes (`_chunk_entry_states`)


def mlstm_chunked(q, k, v, i, f, state=None, chunk_size=64, eps=1e-6):
    """Same contract as `mlstm_ref`, chunkwise-parallel (the form of the xLSTM 7B kernels).

    Inside a chunk, with b_t = sum of log f over the chunk up to t, the output is a masked quadratic form
    with log weights D[t, s] = b_t - b_s + i_s (s <= t) plus the state entering the chunk decayed by b_t;
    both share the stabiliser m_t = max(b_t + m_0, max_s D[t, s]), which equals the recurrent m_t.
    The states entering the chunks come from the recurrence over chunks, unrolled in closed form for
    CHUNK_GROUP chunks at a time (`_chunk_entry_states`): one Python step per group, not per chunk, so
    a long prefill is not bound by kernel launches. T is padded to a multiple of L with log f = 0 and
    log i = -inf, steps that leave the state unchanged.
    """
    dtype = q.dtype
    B, T, H, K = q.shape
    L = chunk_size
    q, k, v, i = (x.float() for x in (q, k, v, i))
    log_f = F.logsigmoid(f.float())
    C, n, m = (s.float() for s in state) if state is not None else _zero_mlstm_state(q, v)
    pad = -T % L
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        i = F.pad(i, (0, 0, 0, pad), value=-math.inf)
        log_f = F.pad(log_f, (0, 0, 0, pad), value=0.0)
    N = (T + pad) // L
    q = (q * K**-0.5).view(B, N, L, H, K)
    k = k.view(B, N, L, H, K)
    v = v.view(B, N, L, H, -1)  # (B, N, L, H, V)
    i = i.view(B, N, L, H)
    b = log_f.view(B, N, L, H).cumsum(2)  # (B, N, L, H)

    # 1. the state entering each chunk, by the recurrence over chunks (in closed form per group)
    C_in, n_in, m_in, (C, n, m) = _chunk_entry_states(k, v, i, b, (C, n, m))

    # 2. outputs: intra-chunk quadratic form + the entering state, under one stabiliser per step
    log_D = b[:, :, :, None] - b[:, :, None, :] + i[:, :, None, :]  # (B, N, L_t, L_s, H)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()[:, :, None]  # (L, L, 1)
    log_D = log_D.masked_fill(~causal, -math.inf)
    m_inter = b + m_in[:, :, None]  # (B, N, L, H)
    m_t = torch.maximum(m_inter, log_D.max(3).values)  # (B, N, L, H)
    S = torch.einsum("bnthk,bnshk->bntsh", q, k) * torch.exp(log_D - m_t[:, :, :, None])  # (B, N, L, L, H)
    inter = torch.exp(m_inter - m_t)  # (B, N, L, H)
    num = torch.einsum("bntsh,bnshv->bnthv", S, v)
    num = num + inter[..., None] * torch.einsum("bnthk,bnhkv->bnthv", q, C_in)  # (B, N, L, H, V)
    den = S.sum(3) + inter * torch.einsum("bnthk,bnhk->bnth", q, n_in)  # (B, N, L, H)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_t)) + eps)[..., None]
    return h.reshape(B, N * L, H, -1)[:, :T].to(dtype), (C, n, m)


def _chunk_entry_states(k, v, i, b, state, group=CHUNK_GROUP):
    """The state entering each chunk and the final state, `group` chunks at a time in closed form.

    k: (B, N, L, H, K)  v: (B, N, L, H, V)  i: (B, N, L, H)  b: (B, N, L, H) cumulative log f in a chunk
    With g_j = b_j[-1] the log decay across chunk j, a chunk adds, relative to its end,
    dC_j = sum_s exp(g_j - b_j[s] + i_j[s] - u_j) k v^T under its own stabiliser u_j (and dn_j alike).
    Entering chunk c of a group whose start state is (C, n, m), with G_c = g_0 + ... + g_{c-1}:
        m_c = max(G_c + m, max_{j<c} G_c - G_{j+1} + u_j)
        C_c = exp(G_c + m - m_c) C + sum_{j<c} exp(G_c - G_{j+1} + u_j - m_c) dC_j
    which unrolls the recurrence over chunks exactly (max distributes over +); c = group gives the
    group's end state. One iteration per group instead of one per chunk.
    """
    C, n, m = state
    N = k.shape[1]
    g = b[:, :, -1]  # (B, N, H)
    a = g[:, :, None] - b + i  # (B, N, L, H) log weight of step s at its chunk's end
    u = a.max(2).values  # (B, N, H)
    w = torch.exp(a - u[:, :, None])  # (B, N, L, H)
    C_in, n_in, m_in = [], [], []
    for s in range(0, N, group):
        e = min(s + group, N)
        dC = torch.einsum("bjlh,bjlhk,bjlhv->bjhkv", w[:, s:e], k[:, s:e], v[:, s:e])  # (B, G, H, K, V)
        dn = torch.einsum("bjlh,bjlhk->bjhk", w[:, s:e], k[:, s:e])  # (B, G, H, K)
        G_end = g[:, s:e].cumsum(1)  # (B, G, H) G_{j+1}
        G_start = F.pad(G_end, (0, 0, 1, 0))  # (B, G + 1, H) G_c for c = 0..G
        log_w = G_start[:, :, None] - G_end[:, None] + u[:, None, s:e]  # (B, G + 1, G, H)
        earlier = torch.ones(e - s + 1, e - s, dtype=torch.bool, device=k.device).tril(-1)[:, :, None]
        log_w = log_w.masked_fill(~earlier, -math.inf)
        log_0 = G_start + m[:, None]  # (B, G + 1, H)
        m_c = torch.maximum(log_0, log_w.max(2).values)  # (B, G + 1, H)
        W = torch.exp(log_w - m_c[:, :, None])  # (B, G + 1, G, H)
        w_0 = torch.exp(log_0 - m_c)  # (B, G + 1, H)
        C_c = torch.einsum("bcjh,bjhkv->bchkv", W, dC) + w_0[..., None, None] * C[:, None]
        n_c = torch.einsum("bcjh,bjhk->bchk", W, dn) + w_0[..., None] * n[:, None]
        C_in.append(C_c[:, :-1]), n_in.append(n_c[:, :-1]), m_in.append(m_c[:, :-1])
        C, n, m = C_c[:, -1], n_c[:, -1], m_c[:, -1]
    return torch.cat(C_in, 1), torch.cat(n_in, 1), torch.cat(m_in, 1), (C, n, m)


def mlstm_step(q, k, v, i, f, state, eps=1e-6):
    """One token: q, k: (B, H, K); v: (B, H, V); i, f: (B, H); state (C, n, m) fp32 -> h (B, H, V), state."""
    C, n, m = state
    log_f = F.logsigmoid(f.float())
    m_new = torch.maximum(log_f + m, i.float())
    f_ = torch.exp(log_f + m - m_new)[..., None]  # (B, H, 1)
    i_ = torch.exp(i.float() - m_new)[..., None]
    C = f_[..., None] * C + i_[..., None] * k.float()[..., :, None] * v.float()[..., None, :]  # (B, H, K, V)
    n = f_ * n + i_ * k.float()
    qs = q.float() * q.shape[-1] ** -0.5
    den = torch.maximum((qs * n).sum(-1).abs(), torch.exp(-m_new)) + eps  # (B, H)
    h = torch.einsum("bhk,bhkv->bhv", qs, C) / den[..., None]
    return h.to(q.dtype), (C, n, m_new)


# --- the sLSTM cell -------------------------------------------------------------------------------


def _slstm_update(pre, R, state):
    """pre: (B, 4, H, D) input pre-activations (z, i, f, o); R: (4, H, D, D); state (c, n, m, h) fp32."""
    c, n, m, h = state
    z, i, f, o = (pre.float() + torch.einsum("bhd,ghde->bghe", h, R.float())).unbind(1)  # (B, H, D) each
    log_f = F.logsigmoid(f)
    m_new = torch.where(n == 0, i, torch.maximum(log_f + m, i))  # a fresh state starts at m = i~
    i_ = torch.exp(i - m_new)
    f_ = torch.exp(log_f + m - m_new)
    c = f_ * c + i_ * torch.tanh(z)
    n = f_ * n + i_
    h = torch.sigmoid(o) * c / n
    return c, n, m_new, h


def _zero_slstm_state(pre):
    B, _, _, H, D = pre.shape
    return tuple(pre.new_zeros(B, H, D, dtype=torch.float32) for _ in range(4))


def slstm_ref(pre, R, state=None):
    """The sLSTM recurrence over time in fp32 (there is no parallel form: h_{t-1} feeds every gate).

    pre: (B, T, 4, H, D) input pre-activations W x + b of (z, i, f, o)   R: (4, H, D, D) head-wise recurrent
    weights, gate_g += h_{t-1} @ R[g] per head   state: (c, n, m, h), each (B, H, D), or None for zeros
    returns h: (B, T, H, D) in pre's dtype, (c, n, m, h) in fp32
    """
    state = tuple(s.float() for s in state) if state is not None else _zero_slstm_state(pre)
    hs = []
    for t in range(pre.shape[1]):
        state = _slstm_update(pre[:, t], R, state)
        hs.append(state[3])
    return torch.stack(hs, dim=1).to(pre.dtype), state


def slstm_step(pre, R, state):
    """One token: pre (B, 4, H, D), state (c, n, m, h) fp32 -> h (B, H, D), state."""
    state = _slstm_update(pre, R, state)
    return state[3].to(pre.dtype), state


# --- the blocks -----------------------------------------------------------------------------------


class HeadNorm(nn.Module):
    """LayerNorm over each head's channels (no bias), then one weight over all heads: (..., H, D) -> (..., H*D)."""

    def __init__(self, n_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_heads * head_dim))

    def forward(self, h):
        y = F.layer_norm(h.float(), h.shape[-1:], eps=self.eps).to(h.dtype)
        return y.flatten(-2) * self.weight


class MLSTMLayer(nn.Module):
    """q, k, v, output gate and the two scalar-per-head gates from x; mLSTM; head norm; gate; out_proj."""

    def __init__(self, c: XLSTMConfig):
        super().__init__()
        self.c = c
        d, H = c.d_model, c.n_heads
        self.qk_dim, self.v_dim = int(d * c.qk_dim_factor), int(d * c.v_dim_factor)
        pieces = {"q": self.qk_dim, "k": self.qk_dim, "v": self.v_dim, "ogate_preact": self.v_dim,
                  "igate_preact": H, "fgate_preact": H}
        FusedLinear(d, pieces, bias=("igate_preact", "fgate_preact")).attach(self, "in_proj")  # the maps of x, one matmul
        self.multihead_norm = HeadNorm(H, self.v_dim // H, c.norm_eps)
        self.out_proj = nn.Linear(self.v_dim, d, bias=False)
        self.chunked = mlstm_chunked  # `use_backend` swaps in a kernel with the same contract
        with torch.no_grad():  # xLSTM 7B sec. 3.2: i bias negative, f bias spread over [3, 6] across heads
            biases = self.in_proj.biases()
            biases["igate_preact"].fill_(c.igate_bias_init)
            biases["fgate_preact"].copy_(torch.linspace(3.0, 6.0, H))

    def _cell_inputs(self, projections):
        """The maps of x (`in_proj`'s pieces) -> q, k (..., H, K), v (..., H, V), i, f (..., H) soft-capped,
        and the output gate's pre-activation (..., H * V)."""
        H, cap = self.c.n_heads, self.c.gate_soft_cap
        q, k, v, o, i, f = projections
        q, k, v = (t.unflatten(-1, (H, -1)) for t in (q, k, v))
        return (q, k, v, soft_cap(i, cap), soft_cap(f, cap)), o

    def _out(self, o, h):
        return self.out_proj(torch.sigmoid(o) * self.multihead_norm(h))

    def forward(self, x, state):
        """x: (B, T, d); state: (C, n, m) or None."""
        cell, o = self._cell_inputs(self.in_proj.separately(x))  # many tokens: bound by FLOPs, not kernels
        h, state = self.chunked(*cell, state, self.c.chunk_size, self.c.eps)  # (B, T, H, V)
        return self._out(o, h), state

    def step(self, x, state):
        """x: (B, d) -> (B, d)."""
        cell, o = self._cell_inputs(self.in_proj(x))  # one token: one matmul
        h, state = mlstm_step(*cell, state, eps=self.c.eps)
        return self._out(o, h), state

    def init_state(self, batch, device, dtype, capacity=0):
        H = self.c.n_heads
        K, V = self.qk_dim // H, self.v_dim // H
        return (
            torch.zeros(batch, H, K, V, device=device),
            torch.zeros(batch, H, K, device=device),
            torch.zeros(batch, H, device=device),
        )

    def state_bytes(self, batch, context, dtype):
        H = self.c.n_heads
        K, V = self.qk_dim // H, self.v_dim // H
        return batch * H * (K * V + K + 1) * 4  # C, n, m in fp32

    def flops_per_token(self, context):
        """Projections + the recurrent cell: C update (4 K V), C^T q (2 K V), n update and n.q (6 K)."""
        d, H = self.c.d_model, self.c.n_heads
        K, V = self.qk_dim // H, self.v_dim // H
        proj = linear_flops(d, 2 * self.qk_dim + 2 * self.v_dim + 2 * H) + linear_flops(self.v_dim, d)
        return proj + H * (6 * K * V + 6 * K)


class SLSTMLayer(nn.Module):
    """x -> causal conv -> silu feeds the i, f gates; x feeds z, o; sLSTM with head-wise R; head norm."""

    def __init__(self, c: XLSTMConfig):
        super().__init__()
        self.c = c
        d, H = c.d_model, c.n_heads
        self.conv1d = CausalConv1d(d, c.conv_kernel)
        self.zo_preact = nn.Linear(d, 2 * d, bias=True)
        self.if_preact = nn.Linear(d, 2 * d, bias=True)
        self.R = nn.Parameter(torch.randn(4, H, d // H, d // H) * (d // H) ** -0.5)
        self.multihead_norm = HeadNorm(H, d // H, c.norm_eps)
        with torch.no_grad():
            self.if_preact.bias[d:].copy_(torch.linspace(3.0, 6.0, d))  # forget gates open at init

    def _pre(self, x, xc):
        """x, conv output xc: (..., d) -> (..., 4, H, D) pre-activations of (z, i, f, o)."""
        z, o = self.zo_preact(x).chunk(2, dim=-1)
        i, f = self.if_preact(F.silu(xc)).chunk(2, dim=-1)
        return torch.stack([z, i, f, o], dim=-2).unflatten(-1, (self.c.n_heads, -1))

    def forward(self, x, state):
        """x: (B, T, d); state: (conv window (B, K-1, d), (c, n, m, h)) or None."""
        xc, window = self.conv1d(x, state[0] if state is not None else None)  # (B, T, d)
        h, cell = slstm_ref(self._pre(x, xc), self.R, state[1] if state is not None else None)  # (B, T, H, D)
        return self.multihead_norm(h), (window, cell)

    def step(self, x, state):
        """x: (B, d) -> (B, d)."""
        xc, window = self.conv1d.step(x, state[0])
        h, cell = slstm_step(self._pre(x, xc), self.R, state[1])
        return self.multihead_norm(h), (window, cell)

    def init_state(self, batch, device, dtype, capacity=0):
        c, H = self.c, self.c.n_heads
        cell = tuple(torch.zeros(batch, H, c.d_model // H, device=device) for _ in range(4))
        return self.conv1d.init_state(batch, device, dtype), cell

    def state_bytes(self, batch, context, dtype):
        c = self.c  # conv window in dtype; c, n, m, h in fp32
        return batch * c.d_model * ((c.conv_kernel - 1) * torch.finfo(dtype).bits // 8 + 4 * 4)

    def flops_per_token(self, context):
        """Conv, projections, R h per head, ~20 pointwise ops per channel."""
        d, H = self.c.d_model, self.c.n_heads
        proj = 2 * linear_flops(d, 2 * d) + 4 * H * linear_flops(d // H, d // H)
        return self.conv1d.flops_per_token() + proj + 20 * d


class CappedHead(nn.Linear):
    """The LM head with soft-capped logits, cap * tanh(W x / cap)."""

    def __init__(self, d_model: int, vocab_size: int, cap: float):
        super().__init__(d_model, vocab_size, bias=False)
        self.cap = cap

    def forward(self, x):
        return soft_cap(super().forward(x), self.cap)


class XLSTM(LanguageModel):
    def __init__(self, config: XLSTMConfig):
        bad = [i for i in config.slstm_at if not 0 <= i < config.n_layers]
        if bad:
            raise UserError(f"slstm_at {bad} is outside the {config.n_layers} blocks")
        c = config
        d_ffn = math.ceil(c.d_model * c.ffn_proj_factor / c.ffn_multiple_of) * c.ffn_multiple_of
        blocks = pattern_blocks(
            "".join("S" if i in c.slstm_at else "M" for i in range(c.n_layers)),
            mixers={"M": lambda i: MLSTMLayer(c), "S": lambda i: SLSTMLayer(c)},
            mlp=lambda i: SwiGLU(c.d_model, d_ffn),
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)
        self.lm_head = CappedHead(config.d_model, config.vocab_size, config.logit_soft_cap)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def activation_bytes(self, batch: int, tokens: int, dtype: torch.dtype) -> int:
        """The generic bound plus one mLSTM layer's chunked workspace (fp32): the state entering every
        chunk, (K V + K + 1) per head, and three L x L tensors per chunk and head (log D, its exp, S)."""
        c = self.config
        generic = super().activation_bytes(batch, tokens, dtype)
        if len(c.slstm_at) == c.n_layers:
            return generic
        H, L = c.n_heads, c.chunk_size
        K, V = int(c.d_model * c.qk_dim_factor) // H, int(c.d_model * c.v_dim_factor) // H
        return generic + batch * math.ceil(tokens / L) * H * (K * V + K + 1 + 3 * L * L) * 4


# xLSTM 7B (arXiv:2503.13427) and the smaller models of the same architecture trained for "xLSTM
# Scaling Laws" (Beck et al. 2025, arXiv:2510.02228): blocks, width and heads, and the parameter counts
# (untied embedding and head both counted), from the model configs in its code,
# github.com/NX-AI/xlstm_scaling_laws (`get_model_config_df_dict`; it also lists 4-head variants of
# 830m and 1.4b, 841,496,256 and 1,420,839,104 parameters).
PUBLISHED_PARAMS = {
    "160m": 164_110_224,
    "400m": 406_856_896,
    "830m": 841_643_808,
    "1.4b": 1_421_232_512,
    "2.7b": 2_780_449_600,
    "7b": 6_865_424_896,
}
SIZES = {
    "tiny": XLSTMConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, chunk_size=16, igate_bias_init=0.0),
    "160m": XLSTMConfig(d_model=768, n_layers=12, n_heads=6),
    "400m": XLSTMConfig(d_model=1024, n_layers=24, n_heads=4),
    "830m": XLSTMConfig(d_model=1536, n_layers=24, n_heads=6),
    "1.4b": XLSTMConfig(d_model=2048, n_layers=24, n_heads=8),
    "2.7b": XLSTMConfig(d_model=2560, n_layers=32, n_heads=5),
    "7b": XLSTMConfig(d_model=4096, n_layers=32, n_heads=8),
}
MODEL = XLSTM


# --- Hugging Face mapping (xLSTMForCausalLM, weight_mode="single"), see models/hf.py --------------
HF_CLASS = "xLSTMForCausalLM"
HF_RENAMES = [
    (r"backbone\.embeddings\.(.*)", r"embed.\1"),
    (r"backbone\.out_norm\.(.*)", r"norm.\1"),
    (r"backbone\.blocks\.(\d+)\.norm_mlstm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"backbone\.blocks\.(\d+)\.mlstm_layer\.(.*)", r"layers.\1.mixer.\2"),
    (r"backbone\.blocks\.(\d+)\.norm_ffn\.(.*)", r"layers.\1.mlp_norm.\2"),
    (r"backbone\.blocks\.(\d+)\.ffn\.proj_up_gate\.(.*)", r"layers.\1.mlp.gate_proj.\2"),
    (r"backbone\.blocks\.(\d+)\.ffn\.proj_up\.(.*)", r"layers.\1.mlp.up_proj.\2"),
    (r"backbone\.blocks\.(\d+)\.ffn\.proj_down\.(.*)", r"layers.\1.mlp.down_proj.\2"),
]


def to_hf_config(c: XLSTMConfig):
    from transformers import xLSTMConfig as HFxLSTMConfig

    if c.slstm_at:
        raise UserError("transformers' xLSTM has mLSTM blocks only; this config has sLSTM blocks (slstm_at)")
    return HFxLSTMConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_heads=c.n_heads,
        qk_dim_factor=c.qk_dim_factor, v_dim_factor=c.v_dim_factor, ffn_proj_factor=c.ffn_proj_factor,
        ffn_round_up_to_multiple_of=c.ffn_multiple_of, gate_soft_cap=c.gate_soft_cap,
        output_logit_soft_cap=c.logit_soft_cap, norm_eps=c.norm_eps, eps=c.eps, chunk_size=c.chunk_size,
        tie_word_embeddings=c.tie_embeddings, use_bias=False, weight_mode="single", mode="inference",
        inference_state_dtype="float32",
    )


def from_hf_config(d: dict) -> XLSTMConfig:
    if d.get("weight_mode", "single") != "single" or d.get("use_bias", False):
        raise UserError(
            "only xLSTM checkpoints with weight_mode='single' and use_bias=false map onto altbench's xLSTM "
            f"(this one has weight_mode={d.get('weight_mode')!r}, use_bias={d.get('use_bias')})"
        )
    return XLSTMConfig(
        vocab_size=d["vocab_size"], d_model=d.get("hidden_size") or d["embedding_dim"],
        n_layers=d.get("num_hidden_layers") or d["num_blocks"], n_heads=d.get("num_heads", 8),
        qk_dim_factor=d.get("qk_dim_factor", 0.5), v_dim_factor=d.get("v_dim_factor", 1.0),
        ffn_proj_factor=d.get("ffn_proj_factor", 2.667), ffn_multiple_of=d.get("ffn_round_up_to_multiple_of", 64),
        gate_soft_cap=d.get("gate_soft_cap", 15.0), logit_soft_cap=d.get("output_logit_soft_cap", 30.0),
        norm_eps=d.get("norm_eps", 1e-6), eps=d.get("eps", 1e-6), chunk_size=d.get("chunk_size", 64),
        tie_embeddings=d.get("tie_word_embeddings", False),
    )

# --- mlstm_kernels backend (NX-AI's official Triton kernels, github.com/NX-AI/mlstm_kernels) -------------

KERNEL_CHUNK = 64  # chunk of the xl_chunk kernel, as xLSTM 7B trains (the xlstm package's xLSTMLargeConfig)
PAD_LOG_I, PAD_F = -1e4, 1e4  # a padded step: i' = exp(log i - m) = 0 and log f = log sigmoid(f) = 0 in fp32


def _kernel_length(T: int) -> int:
    """The shortest length >= T that the xl_chunk kernel takes: a power of two from 16 to 64, else a
    multiple of its chunk."""
    if T <= KERNEL_CHUNK:
        return max(16, 1 << (T - 1).bit_length())
    return -(-T // KERNEL_CHUNK) * KERNEL_CHUNK


def mlstm_kernels_chunked(q, k, v, i, f, state=None, chunk_size=64, eps=1e-6):
    """`mlstm_chunked`'s contract through mlstm_kernels' `chunkwise--triton_xl_chunk` kernel, forward and
    backward.

    Its equations are ours term by term (see its reference step, `mlstm_recurrent_step__native_fw`): i and
    f are the gate pre-activations (log i_t = i, log f_t = log sigmoid f), q is scaled by K^-1/2 inside,
    m starts at 0, and h = C^T q / (max(|n^T q|, exp(-m)) + eps). Only the layout differs: (B, H, T, K)
    and m (B, H, 1). The kernel takes its own chunk (KERNEL_CHUNK; `chunk_size`, the torch form's, does
    not change the result) and lengths in multiples of 16 (`_kernel_length`): T is padded at the end with
    steps that leave the state unchanged (PAD_LOG_I, PAD_F). It runs with autocast off: q, k, v in q's
    dtype, gates and state in fp32, as the torch form keeps them.

    The forward is exact; the backward is NX-AI's, not autograd's: it holds the stabiliser m and the
    normaliser max(|n^T q|, exp(-m)) + eps constant (mlstm_kernels' `mlstm_parallel_bw`: dh / den), as
    xLSTM 7B is trained, so dq, dk, di, df differ from the torch form's exact gradients wherever the
    normaliser's own gradient matters (dv is the same). It also gives no gradient to the entering n and
    takes none from the final n and m: a state that needs a gradient is refused, and the final state
    comes back detached.
    """
    if state is not None and torch.is_grad_enabled() and any(s.requires_grad for s in state):
        raise NotImplementedError(
            "mlstm_kernels' backward gives no gradient to the entering state's normaliser n; "
            "backpropagate through a carried state on the torch backend"
        )
    from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk

    B, T, H, K = q.shape
    pad = _kernel_length(T) - T
    q, k, v = (F.pad(x.to(q.dtype), (0, 0, 0, 0, 0, pad)).transpose(1, 2).contiguous() for x in (q, k, v))
    i = F.pad(i.float(), (0, 0, 0, pad), value=PAD_LOG_I).transpose(1, 2).contiguous()  # (B, H, T)
    f = F.pad(f.float(), (0, 0, 0, pad), value=PAD_F).transpose(1, 2).contiguous()
    C0, n0, m0 = (state[0].float(), state[1].float(), state[2].float()[..., None]) if state is not None else (None,) * 3
    with torch.autocast(q.device.type, enabled=False):
        h, (C, n, m) = mlstm_chunkwise__xl_chunk(
            q, k, v, i, f, C0, n0, m0, return_last_states=True, eps=eps, chunk_size=KERNEL_CHUNK,
            autocast_kernel_dtype=q.dtype,
        )  # h (B, H, T, V) in q's dtype; C (B, H, K, V), n (B, H, K), m (B, H, 1) fp32
    return h.transpose(1, 2)[:, :T], (C.detach(), n.detach(), m[..., 0].detach())


def _use_mlstm_op(op):
    """A `BACKENDS` entry: every mLSTM block's chunked op becomes `op` (sLSTM blocks have none)."""

    def apply(model: XLSTM) -> None:
        for layer in model.layers:
            if isinstance(layer.mixer, MLSTMLayer):
                layer.mixer.chunked = op

    return apply


BACKENDS = {"mlstm_kernels": _use_mlstm_op(mlstm_kernels_chunked)}


# Matched to the altbench 130m baselines (transformer, mamba, mamba2): GPT-NeoX vocabulary, ~130M parameters.
SIZES["130m"] = dataclasses.replace(SIZES["160m"], vocab_size=50280, tie_embeddings=True)
