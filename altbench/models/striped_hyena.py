"""StripedHyena: Hyena blocks with a modal (state-space) long filter, striped with attention blocks
(Poli et al. 2023, "StripedHyena: Moving Beyond Transformers with Hybrid Signal Processing Models";
togethercomputer/stripedhyena, configs/7b-sh-32k-v0.1.yml).

The Hyena mixer, per channel c (D channels, S states each):

    x2, x1, v = split(shortconv(W x))                     a depthwise FIR of width 3 on the projections
    u_t = x1_t * v_t
    h_c(t) = sum_n R_{c,n} exp(p_{c,n} t)                 the modal filter: S decaying modes (p < 0)
    y_t = x2_t * ( (h_c * u)_t + D_c u_t )                causal long convolution, then the gate
    out = W_out y

Because h is a sum of exponentials, the convolution is a diagonal linear recurrence,
s_{t,n} = exp(p_n) s_{t-1,n} + u_t and (h * u)_t = sum_n R_n s_{t,n}, so decoding holds S numbers per
channel, O(1) in the context. Three forms compute it: `modal_ref` (that loop), `modal_fft` (the
filter materialised, an FFT convolution for prefill, the entering state's decay added in closed
form) and `modal_step` (one token). Blocks are pre-norm residuals with a SwiGLU MLP; StripedHyena-7B
stripes 16 Hyena and 16 attention layers ("HA" * 16), attention with RoPE and grouped KV heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from altbench.models.attention import Attention, AttentionConfig
from altbench.models.base import LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import CausalConv1d, SwiGLU
from altbench.models.compose import check_pattern, pattern_blocks
from altbench.models.hyena import fft_size

MIXER_LETTERS = "HA"  # H: Hyena with the modal filter, A: attention


@dataclass
class StripedHyenaConfig(LMConfig):
    vocab_size: int = 32000
    d_model: int = 4096
    n_layers: int = 32
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    pattern: str = "HA" * 16  # Hyena at even layers, attention at odd ones
    n_heads: int = 32
    n_kv_heads: int = 8  # 32 heads in 4 projection groups
    d_hidden: int = 14336  # MLP width
    rope_theta: float = 500000.0
    state_size: int = 2  # S, modes of each channel's modal filter
    short_conv: int = 3  # width of the FIR on the projections

    def __post_init__(self):
        check_pattern(self.pattern, self.n_layers, MIXER_LETTERS)


# --- the modal long convolution in three forms ----------------------------------------------------


def modal_ref(u, log_poles, residues, s0=None):
    """The recurrence s_t = exp(p) s_{t-1} + u_t, y_t = sum_n R_n s_{t,n}, one step at a time in fp32.

    u: (B, T, D)   log_poles p, residues R: (D, S)   s0: (B, D, S) fp32 or None
    returns y: (B, T, D) in u's dtype (without the D u skip term), s_T: (B, D, S) fp32
    """
    decay, R = log_poles.float().exp(), residues.float()
    s = s0 if s0 is not None else u.new_zeros(u.shape[0], u.shape[2], R.shape[1], dtype=torch.float32)
    ys = []
    for t in range(u.shape[1]):
        s = decay * s + u[:, t, :, None].float()  # (B, D, S)
        ys.append((s * R).sum(-1))
    return torch.stack(ys, 1).to(u.dtype), s


def modal_fft(u, log_poles, residues, s0=None):
    """Same contract as `modal_ref`: y = h * u by real FFTs of size n >= 2T - 1 (a linear convolution),
    with h(t) = sum_n R_n exp(p_n t) for t < T; an entering state adds sum_n R_n exp(p_n (t + 1)) s0_n,
    and s_T,n = exp(p_n T) s0_n + sum_t exp(p_n (T - 1 - t)) u_t."""
    B, T, D = u.shape
    p, R = log_poles.float(), residues.float()
    t = torch.arange(T, device=u.device, dtype=torch.float32)[:, None]  # (T, 1)
    uf, n = u.float(), fft_size(2 * T - 1)
    h, carried, states = 0.0, 0.0, []
    for m in range(p.shape[1]):  # one mode at a time: memory O(T D), not O(T D S)
        mode = torch.exp(p[:, m] * t)  # (T, D): exp(p_m t)
        h = h + R[:, m] * mode
        states.append(torch.einsum("btd,td->bd", uf, mode.flip(0)))  # sum_t exp(p_m (T - 1 - t)) u_t
        if s0 is not None:
            carried = carried + (R[:, m] * torch.exp(p[:, m]) * mode) * s0[:, None, :, m]  # R exp(p (t + 1)) s0
    y = torch.fft.irfft(torch.fft.rfft(uf, n=n, dim=1) * torch.fft.rfft(h, n=n, dim=0), n=n, dim=1)[:, :T]  # (B, T, D)
    s = torch.stack(states, dim=-1)  # (B, D, S)
    if s0 is not None:
        y, s = y + carried, s + torch.exp(p * T) * s0
    return y.to(u.dtype), s


def modal_step(u, log_poles, residues, s):
    """One token: u: (B, D); s: (B, D, S) fp32 -> y (B, D) in u's dtype, s."""
    s = log_poles.float().exp() * s + u[..., None].float()
    return (s * residues.float()).sum(-1).to(u.dtype), s


class ModalHyena(nn.Module):
    """in_proj -> short FIR -> (x2, x1, v); x2 * (modal(x1 v) + D x1 v) -> out_proj."""

    def __init__(self, c: StripedHyenaConfig):
        super().__init__()
        self.c, d = c, c.d_model
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.short_conv = CausalConv1d(3 * d, c.short_conv)
        self.log_poles = nn.Parameter(torch.empty(d, c.state_size))
        self.residues = nn.Parameter(torch.randn(d, c.state_size) / math.sqrt(c.state_size))
        self.D = nn.Parameter(torch.zeros(d))
        self.out_proj = nn.Linear(d, d, bias=False)
        with torch.no_grad():  # decays exp(p) in [0.9, 0.999]: memories of ~10 to ~1000 tokens
            self.log_poles.copy_(torch.empty(d, c.state_size).uniform_(0.9, 0.999).log())

    op = staticmethod(modal_fft)  # the prefill op; `modal_ref` has the same contract

    def _gate_inputs(self, q):
        """(..., 3 D) after the FIR -> the gate x2 and the long convolution's input u = x1 v."""
        x2, x1, v = q.chunk(3, dim=-1)
        return x2, x1 * v

    def forward(self, x, state):
        """x: (B, T, d); state: (FIR window (B, K-1, 3 d), modal state (B, d, S) fp32) or None."""
        q, window = self.short_conv(self.in_proj(x), state[0] if state is not None else None)
        x2, u = self._gate_inputs(q)  # (B, T, d) each
        y, s = self.op(u, self.log_poles, self.residues, state[1] if state is not None else None)
        return self.out_proj(x2 * (y + self.D * u)), (window, s)

    def step(self, x, state):
        """x: (B, d) -> (B, d)."""
        q, window = self.short_conv.step(self.in_proj(x), state[0])
        x2, u = self._gate_inputs(q)
        y, s = modal_step(u, self.log_poles, self.residues, state[1])
        return self.out_proj(x2 * (y + self.D * u)), (window, s)

    def init_state(self, batch, device, dtype, capacity=0):
        s = torch.zeros(batch, self.c.d_model, self.c.state_size, device=device, dtype=torch.float32)
        return self.short_conv.init_state(batch, device, dtype), s

    def state_bytes(self, batch, context, dtype):
        c = self.c
        window = (c.short_conv - 1) * 3 * c.d_model * torch.finfo(dtype).bits // 8
        return batch * (window + c.d_model * c.state_size * 4)

    def flops_per_token(self, context):
        """A decode step: projections, FIR, gates, and per mode a decay, an add and a read-out multiply-add."""
        d = self.c.d_model
        proj = linear_flops(d, 3 * d) + linear_flops(d, d)
        return proj + self.short_conv.flops_per_token() + 5 * d + 4 * d * self.c.state_size


class StripedHyena(LanguageModel):
    def __init__(self, c: StripedHyenaConfig):
        attention = AttentionConfig(c.d_model, c.n_heads, c.n_kv_heads, c.rope_theta)
        blocks = pattern_blocks(
            c.pattern,
            mixers={"H": lambda i: ModalHyena(c), "A": lambda i: Attention(attention)},
            mlp=lambda i: SwiGLU(c.d_model, c.d_hidden),
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)


# "7b": the shape of configs/7b-sh-32k-v0.1.yml (32 layers striped "HA", d 4096, 32 heads in 4 KV groups,
# MLP 14336, state size 2, short FIR 3, RoPE base 500000, 32K vocabulary, untied). "130m" is matched to
# altbench's 130m baselines: the transformer 130m's width, depth and MLP, half of its layers Hyena.
SIZES = {
    "tiny": StripedHyenaConfig(
        vocab_size=256, d_model=64, n_layers=4, pattern="HAHA", n_heads=4, n_kv_heads=2, d_hidden=192,
        rope_theta=10000.0,
    ),
    "130m": StripedHyenaConfig(
        vocab_size=50280, d_model=768, n_layers=12, pattern="HA" * 6, n_heads=12, n_kv_heads=3, d_hidden=2304,
        tie_embeddings=True,
    ),
    "7b": StripedHyenaConfig(),
}
MODEL = StripedHyena
