"""Griffin and Hawk: gated linear recurrences mixed with local attention (De et al. 2024, arXiv:2402.19427).

Every layer is a pre-norm residual block (sec. 2.1): x + Temporal(RMSNorm(x)), then + MLP(RMSNorm(.)),
with a gated GeLU MLP of width 3 D (sec. 2.2). The temporal-mixing block is either the recurrent
block (sec. 2.3, fig. 2c)

    linear_out( RG-LRU(Conv1D(linear_x u)) * gelu(linear_y u) )

or local multi-query attention over a sliding window. Hawk uses only recurrent blocks; Griffin
cycles (recurrent, recurrent, attention). The RG-LRU (sec. 2.4, eqs. 1-4), per channel:

    r_t = sigma(W_a x_t + b_a)                      recurrence gate
    i_t = sigma(W_x x_t + b_x)                      input gate
    a_t = a^(c r_t),  a = sigma(Lambda),  c = 8     computed in log space (appendix A)
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)

W_a and W_x are block-diagonal (sec. 4.1). Three forms compute it: `rglru_ref` (the loop above),
`rglru_scan` (a parallel prefix scan over time) and `rglru_step` (one token). A recurrent block's
state is (conv window, h, tokens seen); a local attention block's is the keys and values of at
most `window - 1` past tokens, so its size stops growing once the context passes the window.

RecurrentGemma (Botev et al. 2024, arXiv:2404.07839) is Griffin with Gemma's conventions, which
the config can switch on: RMSNorm scaling by (1 + weight), embeddings times sqrt(D), logits
soft-capped by cap * tanh(logits / cap). Its transformers class is RecurrentGemmaForCausalLM.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import CausalConv1d, GeGLU, GemmaRMSNorm, RotaryEmbedding, apply_rotary
from altbench.models.compose import pattern_blocks
from altbench.models.mamba import linear_scan

C = 8.0  # the constant c of a_t = a^(c r_t) (sec. 2.4)
BLOCK_TYPES = ("recurrent", "attention")


@dataclass
class GriffinConfig(LMConfig):
    vocab_size: int = 256000  # Gemma's SentencePiece vocabulary: the official code's default for every preset
    norm_eps: float = 1e-6
    lru_width: int = 0  # D_RNN, width of the recurrent branch; 0 means d_model
    lru_blocks: int = 16  # diagonal blocks of W_a and W_x: 16 in the paper (sec. 4.1)
    conv_width: int = 4  # temporal filter width of the Conv1D (sec. 2.3)
    d_hidden: int = 0  # MLP width M D; 0 means 3 d_model (M = 3, sec. 2.2)
    n_heads: int = 12  # attention heads, head_dim = d_model / n_heads (128 in the paper)
    n_kv_heads: int = 1  # multi-query attention (Shazeer 2019)
    attention_window: int = 1024  # keys a query sees, its own included (1024 in the paper, sec. 3)
    rope_theta: float = 10000.0
    rope_fraction: float = 0.5  # share of each head's channels RoPE rotates (the official code: half)
    block_types: tuple[str, ...] = ("recurrent", "recurrent", "attention")  # cycled over the layers
    embed_scale: bool = False  # multiply embeddings by sqrt(d_model) (RecurrentGemma)
    logits_soft_cap: float = 0.0  # cap * tanh(logits / cap); 0 means no cap (RecurrentGemma: 30)

    def __post_init__(self):
        self.lru_width = self.lru_width or self.d_model
        self.d_hidden = self.d_hidden or 3 * self.d_model
        self.block_types = tuple(self.block_types)
        unknown = set(self.block_types) - set(BLOCK_TYPES)
        if unknown:
            raise ValueError(f"unknown block types {sorted(unknown)}; known: {', '.join(BLOCK_TYPES)}")
        if self.lru_width % self.lru_blocks:
            raise ValueError(f"lru_width {self.lru_width} is not a multiple of lru_blocks {self.lru_blocks}")

    def layer_types(self) -> list[str]:
        return [self.block_types[i % len(self.block_types)] for i in range(self.n_layers)]


# --- the RG-LRU in three forms ------------------------------------------------------------------


MAX_SQRT_GRAD = 1000.0  # the cap on d sqrt(u) / du of the official RecurrentGemma code


class _SqrtCappedGrad(torch.autograd.Function):
    """sqrt(u), with the derivative 1 / (2 sqrt(u)) capped at MAX_SQRT_GRAD so that it stays finite at u = 0."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return u.sqrt()

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * 0.5 / u.clamp_min(0.25 / MAX_SQRT_GRAD**2).sqrt()


def input_norm(log_a_t):
    """sqrt(1 - a_t^2) of eq. 4 from log a_t. A closed recurrence gate (r_t -> 0) gives a_t = 1 in
    floating point and 1 - a_t^2 = 0, where the plain sqrt's gradient is infinite and training turns
    to NaN (Griffin and Hawk did on MQAR on an H100); hence the capped derivative."""
    return _SqrtCappedGrad.apply(-torch.expm1(2 * log_a_t))


def rglru_ref(x, gate_a, gate_x, log_a, h0=None):
    """The RG-LRU recurrence (eqs. 1-4), one step at a time, in fp32; the ground truth for the other forms.

    x: (B, T, W)                 the layer's input (the Conv1D output)
    gate_a, gate_x: (B, T, W)    the gates' pre-activations W_a x_t + b_a and W_x x_t + b_x
    log_a: (W,)                  log a = log sigma(Lambda) <= 0
    h0: (B, W) or None           the state before x; None means x starts a sequence
    returns y = h: (B, T, W) in x's dtype, h_T: (B, W) in fp32

    At a sequence start the official code (and transformers) resets the recurrence: a_0 is taken as
    0 and the normalisation sqrt(1 - a_0^2) as 1, so h_0 = i_0 * x_0.
    """
    dtype = x.dtype
    x, gate_a, gate_x = x.float(), gate_a.float(), gate_x.float()
    h = h0.float() if h0 is not None else None
    ys = []
    for t in range(x.shape[1]):
        r = torch.sigmoid(gate_a[:, t])  # (B, W) recurrence gate, eq. 1
        i = torch.sigmoid(gate_x[:, t])  # (B, W) input gate, eq. 2
        log_a_t = C * r * log_a  # log a_t = c r_t log a, eq. 3
        if h is None:
            h = i * x[:, t]
        else:
            h = torch.exp(log_a_t) * h + input_norm(log_a_t) * (i * x[:, t])  # eq. 4
        ys.append(h)
    return torch.stack(ys, dim=1).to(dtype), h


def rglru_scan(x, gate_a, gate_x, log_a, h0=None):
    """Same contract as `rglru_ref`, through a parallel prefix scan over time (`linear_scan`)."""
    dtype = x.dtype
    x, gate_a, gate_x = x.float(), gate_a.float(), gate_x.float()
    log_a_t = C * torch.sigmoid(gate_a) * log_a  # (B, T, W)
    a = torch.exp(log_a_t)
    norm = input_norm(log_a_t)  # (B, T, W)
    if h0 is None:  # sequence start: h_0 = i_0 x_0
        norm = torch.cat([torch.ones_like(norm[:, :1]), norm[:, 1:]], dim=1)
    b = norm * (torch.sigmoid(gate_x) * x)  # (B, T, W)
    if h0 is not None:
        b[:, 0] += a[:, 0] * h0.float()
    h = linear_scan(a, b)  # (B, T, W)
    return h.to(dtype), h[:, -1]


def rglru_step(x, gate_a, gate_x, log_a, h):
    """One token: x, gate_a, gate_x: (B, W); h: (B, W) fp32, or None at a sequence start -> y (B, W), h."""
    log_a_t = C * torch.sigmoid(gate_a.float()) * log_a
    ix = torch.sigmoid(gate_x.float()) * x.float()
    h = ix if h is None else torch.exp(log_a_t) * h + input_norm(log_a_t) * ix
    return h.to(x.dtype), h


# --- local attention in two forms ---------------------------------------------------------------


def local_attention_ref(q, k, v, window):
    """Causal sliding-window attention, one query at a time, in fp32; the ground truth for `local_attention`.

    q: (B, T, H, D)       queries of the last T key positions
    k, v: (B, S, Hkv, D)  S >= T keys and values, Hkv dividing H (multi-query when Hkv = 1)
    returns (B, T, H, D) in q's dtype: query t, at key position S - T + t, attends to the `window`
    keys ending at its own position (fewer at the start).
    """
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    T, H, D = q.shape[1], q.shape[2], q.shape[3]
    S = k.shape[1]
    k, v = k.repeat_interleave(H // k.shape[2], dim=2), v.repeat_interleave(H // v.shape[2], dim=2)  # (B, S, H, D)
    out = []
    for t in range(T):
        end = S - T + t + 1
        keys, values = k[:, max(0, end - window) : end], v[:, max(0, end - window) : end]  # (B, L, H, D)
        p = torch.softmax(torch.einsum("bhd,blhd->bhl", q[:, t], keys) / math.sqrt(D), dim=-1)  # (B, H, L)
        out.append(torch.einsum("bhl,blhd->bhd", p, values))
    return torch.stack(out, dim=1).to(dtype)


def local_attention(q, k, v, window):
    """Same contract as `local_attention_ref`, in blocks of `window` queries through SDPA: O(T window) work.

    The first block attends to all keys up to its last query under an explicit band mask (at a
    sequence start it sees fewer than `window` keys). Every later block sees exactly the
    2 window - 1 keys ending at its last query under one shared band mask, so all go in one call.
    """
    B, T, H, D = q.shape
    S, Hkv, W = k.shape[1], k.shape[2], window
    P, gqa = S - T, Hkv != H
    n0 = min(T, W)
    qpos = torch.arange(P, P + n0, device=q.device)[:, None]
    kpos = torch.arange(P + n0, device=q.device)[None, :]
    band = (kpos <= qpos) & (kpos > qpos - W)  # (n0, P + n0)
    first = F.scaled_dot_product_attention(
        q[:, :n0].transpose(1, 2), k[:, : P + n0].transpose(1, 2), v[:, : P + n0].transpose(1, 2),
        attn_mask=band, enable_gqa=gqa,
    ).transpose(1, 2)  # (B, n0, H, D)
    if T == n0:
        return first
    # query W + m W + a (block m of n) sees keys P + 1 + m W + a .. P + W + m W + a: b in [a, a + W)
    # within the 2 W - 1 keys starting at key P + 1 + m W
    n = -(-(T - W) // W)
    pad = n * W - (T - W)
    qb = F.pad(q[:, W:], (0, 0, 0, 0, 0, pad)).view(B, n, W, H, D).transpose(2, 3).reshape(B * n, H, W, D)

    def windows(t):  # (B, S, Hkv, D) -> (B n, Hkv, 2 W - 1, D)
        t = F.pad(t[:, P + 1 :], (0, 0, 0, 0, 0, pad)).unfold(1, 2 * W - 1, W)  # (B, n, Hkv, D, 2W-1)
        return t.permute(0, 1, 2, 4, 3).reshape(B * n, Hkv, 2 * W - 1, D)

    a = torch.arange(W, device=q.device)[:, None]
    b = torch.arange(2 * W - 1, device=q.device)[None, :]
    rest = F.scaled_dot_product_attention(
        qb, windows(k), windows(v), attn_mask=(b >= a) & (b < a + W), enable_gqa=gqa
    )  # (B n, H, W, D)
    rest = rest.view(B, n, H, W, D).transpose(2, 3).reshape(B, n * W, H, D)[:, : T - W]
    return torch.cat([first, rest], dim=1)


# --- blocks ---------------------------------------------------------------------------------------


class RGLRU(nn.Module):
    """The RG-LRU's parameters: block-diagonal gate weights and Lambda, stored as -Lambda so that
    log a = log sigma(Lambda) = -softplus(recurrent_param), as in the official code."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.blocks, self.block_width = blocks, width // blocks
        shape = (blocks, self.block_width, self.block_width)
        self.input_gate_weight = nn.Parameter(torch.empty(shape))  # W_x
        self.input_gate_bias = nn.Parameter(torch.zeros(blocks, self.block_width))  # b_x
        self.recurrent_gate_weight = nn.Parameter(torch.empty(shape))  # W_a
        self.recurrent_gate_bias = nn.Parameter(torch.zeros(blocks, self.block_width))  # b_a
        self.recurrent_param = nn.Parameter(torch.empty(width))  # -Lambda
        with torch.no_grad():  # LeCun init of the gates; a in [0.9, 0.999], uniform in a^2 (official code)
            nn.init.normal_(self.input_gate_weight, std=self.block_width**-0.5)
            nn.init.normal_(self.recurrent_gate_weight, std=self.block_width**-0.5)
            a = torch.empty_like(self.recurrent_param).uniform_(0.9**2, 0.999**2).sqrt()
            self.recurrent_param.copy_(torch.log(1 / a - 1))

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (..., W) -> the pre-activations W_a x + b_a and W_x x + b_x, (..., W) each."""
        xb = x.unflatten(-1, (self.blocks, self.block_width))  # (..., blocks, bw)
        gate_a = torch.einsum("...hi,hij->...hj", xb, self.recurrent_gate_weight) + self.recurrent_gate_bias
        gate_x = torch.einsum("...hi,hij->...hj", xb, self.input_gate_weight) + self.input_gate_bias
        return gate_a.flatten(-2), gate_x.flatten(-2)

    def log_a(self) -> torch.Tensor:
        return -F.softplus(self.recurrent_param.float())  # (W,)


class RecurrentBlock(nn.Module):
    """The recurrent block (fig. 2c): linear_out( RG-LRU(conv(linear_x u)) * gelu(linear_y u) )."""

    def __init__(self, c: GriffinConfig):
        super().__init__()
        w = c.lru_width
        self.c, self.width = c, w
        self.linear_y = nn.Linear(c.d_model, w)
        self.linear_x = nn.Linear(c.d_model, w)
        self.linear_out = nn.Linear(w, c.d_model)
        self.conv_1d = CausalConv1d(w, c.conv_width)
        self.rg_lru = RGLRU(w, c.lru_blocks)

    def forward(self, u, state, scan=rglru_scan):
        """u: (B, T, d_model); state: (conv window (B, K-1, W), h (B, W) fp32, tokens seen) or None."""
        gate = F.gelu(self.linear_y(u), approximate="tanh")  # (B, T, W)
        x, window = self.conv_1d(self.linear_x(u), state[0] if state is not None else None)  # (B, T, W)
        seen = state[2] if state is not None else 0
        y, h = scan(x, *self.rg_lru.gates(x), self.rg_lru.log_a(), state[1] if seen else None)  # (B, T, W)
        return self.linear_out(y * gate), (window, h, seen + u.shape[1])

    def step(self, u, state):
        """u: (B, d_model) -> (B, d_model)."""
        gate = F.gelu(self.linear_y(u), approximate="tanh")  # (B, W)
        x, window = self.conv_1d.step(self.linear_x(u), state[0])  # (B, W)
        y, h = rglru_step(x, *self.rg_lru.gates(x), self.rg_lru.log_a(), state[1] if state[2] else None)
        return self.linear_out(y * gate), (window, h, state[2] + 1)

    def init_state(self, batch, device, dtype, capacity=0):
        h = torch.zeros(batch, self.width, device=device, dtype=torch.float32)
        return self.conv_1d.init_state(batch, device, dtype), h, 0

    def state_bytes(self, batch, context, dtype):
        return batch * self.width * ((self.c.conv_width - 1) * torch.finfo(dtype).bits // 8 + 4)

    def flops_per_token(self, context):
        d, w, bw = self.c.d_model, self.width, self.rg_lru.block_width
        proj = 2 * linear_flops(d, w) + linear_flops(w, d) + 2 * linear_flops(bw, w)  # x, y, out; two gates
        return proj + self.conv_1d.flops_per_token() + 10 * w  # gates, a_t, sqrt, eq. 4, gelu branch


class LocalAttention(nn.Module):
    """Local multi-query attention (sec. 2.3) with RoPE on part of each head; the state keeps the keys
    and values of the last `window - 1` tokens, all a next query can see."""

    def __init__(self, c: GriffinConfig):
        super().__init__()
        self.c, self.window = c, c.attention_window
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.d_model // c.n_heads
        self.q_proj = nn.Linear(c.d_model, c.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * self.head_dim, c.d_model, bias=True)
        self.rotary = RotaryEmbedding(int(self.head_dim * c.rope_fraction), c.rope_theta)

    def _rope(self, x, cos, sin):
        r = cos.shape[-1]
        return torch.cat([apply_rotary(x[..., :r], cos, sin), x[..., r:]], dim=-1)

    def forward(self, u, state):
        """u: (B, T, d_model); state: (keys, values (B, <= window-1, Hkv, D), tokens seen) or None."""
        B, T, _ = u.shape
        q = self.q_proj(u).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(u).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(u).view(B, T, self.n_kv_heads, self.head_dim)
        start = state[2] if state is not None else 0
        cos, sin = self.rotary(start, T, u.dtype)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        if state is not None:
            k, v = torch.cat([state[0], k], dim=1), torch.cat([state[1], v], dim=1)  # (B, P+T, Hkv, D)
        o = local_attention(q, k, v, self.window)  # (B, T, H, D)
        keep = max(0, k.shape[1] - (self.window - 1))
        return self.o_proj(o.reshape(B, T, -1)), (k[:, keep:].clone(), v[:, keep:].clone(), start + T)

    def step(self, u, state):
        y, state = self(u[:, None], state)
        return y[:, 0], state

    def init_state(self, batch, device, dtype, capacity=0):
        empty = torch.zeros(batch, 0, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
        return empty, empty.clone(), 0

    def state_bytes(self, batch, context, dtype):
        cached = min(context, self.window - 1)
        return 2 * batch * cached * self.n_kv_heads * self.head_dim * torch.finfo(dtype).bits // 8

    def flops_per_token(self, context):
        d, hd = self.c.d_model, self.head_dim
        proj = linear_flops(d, hd * (2 * self.n_heads + 2 * self.n_kv_heads))
        return proj + 2 * 2 * self.n_heads * hd * min(context + 1, self.window)  # q.k, then p.v


class Griffin(LanguageModel):
    """Griffin, or Hawk when `block_types` holds only "recurrent": the base contract with Gemma-style
    norms, and RecurrentGemma's optional embedding scale and logit soft-cap."""

    def __init__(self, config: GriffinConfig):
        c = config
        pattern = "".join("A" if kind == "attention" else "R" for kind in c.layer_types())
        blocks = pattern_blocks(
            pattern,
            mixers={"R": lambda i: RecurrentBlock(c), "A": lambda i: LocalAttention(c)},
            mlp=lambda i: GeGLU(c.d_model, c.d_hidden),
            norm=lambda: GemmaRMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)
        self.norm = GemmaRMSNorm(config.d_model, config.norm_eps)
        # sqrt(d) rounded to bfloat16, the factor the released checkpoints were trained with (and transformers uses)
        root = torch.tensor(config.d_model**0.5, dtype=torch.bfloat16, device="cpu")
        self.embed_scale = float(root) if config.embed_scale else 1.0

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(x))  # (..., V)
        cap = self.config.logits_soft_cap
        return cap * torch.tanh(logits / cap) if cap else logits

    def forward(
        self, input_ids: torch.Tensor, state: list | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, list]:
        """input_ids: (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`; state after the last token."""
        x = self.embed(input_ids) * self.embed_scale  # (B, T, d)
        state = state if state is not None else [None] * len(self.layers)
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer(x, s)
            new_state.append(s)
        return self._logits(x[:, -1:] if last_only else x), new_state

    def step(self, tokens: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """tokens: (B,) or (B, 1) -> logits (B, V) of the next token, and the advanced state."""
        x = self.embed(tokens.reshape(-1)) * self.embed_scale  # (B, d)
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new_state.append(s)
        return self._logits(x), new_state

    def activation_bytes(self, batch, tokens, dtype):
        """The parallel scan keeps ~6 fp32 (B, T, lru_width) tensors alive per recurrent block call."""
        scan = 6 * batch * tokens * self.config.lru_width * 4
        return super().activation_bytes(batch, tokens, dtype) + scan


# De et al. 2024, Table 2 (appendix C), shared by Hawk and Griffin: width D, RNN width D_RNN, depth,
# attention heads (head dim 128); M = 3. The paper states no vocabulary; the official presets
# (google-deepmind/recurrentgemma, common.py) default to 256k.
PAPER_SIZES = {
    "100m": (768, 1024, 12, 6),
    "200m": (1024, 1536, 12, 8),
    "400m": (1536, 2048, 12, 12),
    "1.3b": (2048, 2560, 24, 16),
    "3b": (3072, 4096, 24, 24),
    "7b": (4096, 5632, 32, 32),
    "14b": (5120, 8192, 40, 40),
}
SIZES = {
    "tiny": GriffinConfig(
        vocab_size=256, d_model=128, n_layers=3, n_heads=4, lru_blocks=4, attention_window=8,
        embed_scale=True, logits_soft_cap=30.0,
    ),
    **{
        name: GriffinConfig(d_model=d, lru_width=d_rnn, n_layers=depth, n_heads=heads)
        for name, (d, d_rnn, depth, heads) in PAPER_SIZES.items()
    },
    # RecurrentGemma-2B (Botev et al. 2024, Table 1; the official RECURRENT_GEMMA_2B_V1 preset)
    "recurrentgemma-2b": GriffinConfig(
        d_model=2560, lru_width=2560, n_layers=26, n_heads=10, lru_blocks=10, attention_window=2048,
        embed_scale=True, logits_soft_cap=30.0,
    ),
}
MODEL = Griffin


# --- Hugging Face mapping (RecurrentGemmaForCausalLM), see models/hf.py ---------------------------
HF_CLASS = "RecurrentGemmaForCausalLM"
HF_RENAMES = [
    (r"model\.embed_tokens\.(.*)", r"embed.\1"),
    (r"model\.final_norm\.(.*)", r"norm.\1"),
    (r"model\.layers\.(\d+)\.temporal_pre_norm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"model\.layers\.(\d+)\.temporal_block\.(.*)", r"layers.\1.mixer.\2"),
    (r"model\.layers\.(\d+)\.channel_pre_norm\.(.*)", r"layers.\1.mlp_norm.\2"),
    (r"model\.layers\.(\d+)\.mlp_block\.(.*)", r"layers.\1.mlp.\2"),
    (r"model\.(.*)", r"\1"),
]


def to_hf_config(c: GriffinConfig):
    """transformers ties the RG-LRU's gate blocks to the attention heads and always scales and caps."""
    from transformers import RecurrentGemmaConfig

    if "attention" in c.block_types and c.lru_blocks != c.n_heads:
        raise ValueError(f"RecurrentGemma needs lru_blocks == n_heads, got {c.lru_blocks} and {c.n_heads}")
    if not c.embed_scale or not c.logits_soft_cap:
        raise ValueError("RecurrentGemma always scales embeddings by sqrt(d) and soft-caps logits")
    return RecurrentGemmaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
        num_attention_heads=c.lru_blocks, num_key_value_heads=c.n_kv_heads, lru_width=c.lru_width,
        intermediate_size=2 * c.d_hidden,  # transformers halves it: the official MLP fuses gate and up
        attention_window_size=c.attention_window, conv1d_width=c.conv_width, logits_soft_cap=c.logits_soft_cap,
        rms_norm_eps=c.norm_eps, block_types=list(c.block_types), tie_word_embeddings=c.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": c.rope_fraction},
        hidden_activation="gelu_pytorch_tanh", attention_bias=False,
    )


def from_hf_config(d: dict) -> GriffinConfig:
    rope = d.get("rope_parameters") or {}
    heads = d["num_attention_heads"]
    return GriffinConfig(
        vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=heads,
        n_kv_heads=d.get("num_key_value_heads") or heads, lru_width=d.get("lru_width") or d["hidden_size"],
        lru_blocks=heads, d_hidden=d["intermediate_size"] // 2, attention_window=d.get("attention_window_size", 2048),
        conv_width=d.get("conv1d_width", 4), logits_soft_cap=d.get("logits_soft_cap", 30.0),
        norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
        rope_fraction=rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 0.5)),
        block_types=tuple(d.get("block_types", ("recurrent", "recurrent", "attention"))), embed_scale=True,
        tie_embeddings=d.get("tie_word_embeddings", True),
    )

# Matched to the altbench 130m baselines (transformer, mamba, mamba2): GPT-NeoX vocabulary, ~130M parameters.
SIZES["130m"] = dataclasses.replace(SIZES["100m"], vocab_size=50280)
