"""Mamba-2: the state-space dual (SSD) layer (Dao & Gu 2024, arXiv:2405.21060).

Per head h (H heads of width P), with a scalar decay per head and B, C shared by the H / G heads of
each of G groups (sec. 7.2, grouped heads), the SSM is (eq. 1 with A_t = exp(dt_t A_h) I):

    h_t = exp(dt_t A_h) h_{t-1} + dt_t B_t x_t^T        h: (N, P), x_t: (P,), B_t, C_t: (N,)
    y_t = C_t^T h_t + D_h x_t

The state is kept as h^T, (P, N) per head, the layout of mamba_ssm and transformers. Because the
decay is a scalar, the map x -> y is multiplication by a masked, attention-like matrix
M[t, s] = (C_t . B_s) exp(sum_{s<k<=t} dt_k A) dt_s (sec. 3-6), which gives the three forms here:
`ssd_ref` (the loop above), `ssd_chunked` (the SSD algorithm of sec. 6: quadratic M within chunks of
length L, the recurrence only across chunk boundaries) and `ssd_step` (one token; `ssd_conv_step`
is the block's decode step around it, from in_proj's outputs, the op a fused kernel replaces).

The block (sec. 7.1) projects x to (z, xBC, dt) in one matmul, runs a causal depthwise
conv over xBC, the SSM, then out_proj(RMSNorm(y * silu(z))). Its state is (conv window, h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import LanguageModel, LMConfig, linear_flops, swap_layer_op
from altbench.models.blocks import CausalConv1d, causal_conv_step
from altbench.models.compose import pattern_blocks


@dataclass
class Mamba2Config(LMConfig):
    d_state: int = 128  # N, state size per head (Mamba-2 grows it from Mamba's 16)
    d_conv: int = 4  # width of the causal depthwise convolution over (x, B, C)
    expand: int = 2  # d_inner = expand * d_model
    head_dim: int = 64  # P, channels per head
    n_heads: int = 0  # H; 0 means d_inner / head_dim
    n_groups: int = 1  # G, heads in a group share B and C (like grouped-query attention)
    chunk_size: int = 256  # L, chunk length of the SSD algorithm (no effect on the result)
    dt_min: float = 0.001  # dt initialised log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_floor: float = 0.0  # dt clamped to at least this after softplus (Zamba2: time_step_min); 0: no clamp

    def __post_init__(self):
        d_inner = self.expand * self.d_model
        if self.n_heads == 0:
            self.n_heads = d_inner // self.head_dim
        if self.n_heads * self.head_dim != d_inner or self.n_heads % self.n_groups:
            raise ValueError(
                f"Mamba2Config: n_heads ({self.n_heads}) x head_dim ({self.head_dim}) must equal expand x d_model "
                f"({d_inner}), and n_heads must be a multiple of n_groups ({self.n_groups})"
            )


# --- the SSD map in three forms -------------------------------------------------------------------


def ssd_ref(x, dt, A, B, C, D, h0=None):
    """The recurrence, one step at a time, in fp32; the ground truth for the other forms.

    x: (B, T, H, P)   dt: (B, T, H), after softplus   A: (H,), negative   B, C: (B, T, G, N)   D: (H,)
    h0: (B, H, P, N) or None
    returns y: (B, T, H, P) in x's dtype, h_T: (B, H, P, N) in fp32
    """
    dtype = x.dtype
    x, dt, A, D = x.float(), dt.float(), A.float(), D.float()
    heads_per_group = x.shape[2] // B.shape[2]
    B = B.float().repeat_interleave(heads_per_group, dim=2)  # (B, T, H, N)
    C = C.float().repeat_interleave(heads_per_group, dim=2)  # (B, T, H, N)
    h = h0.float() if h0 is not None else x.new_zeros(*x.shape[:1], *x.shape[2:], B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (B, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]  # (B, H, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]) + D[:, None] * x[:, t])  # (B, H, P)
    return torch.stack(ys, dim=1).to(dtype), h


def segsum(a: torch.Tensor) -> torch.Tensor:
    """S[..., i, j] = a_{j+1} + ... + a_i for i >= j (0 on the diagonal), -inf above it.

    exp(S) is the decay from step j to step i inside a chunk. Summing masked copies of `a` (rather
    than subtracting two cumulative sums) keeps the small differences exact in fp32.
    """
    L = a.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=a.device)
    s = a[..., :, None].expand(*a.shape, L).masked_fill(~ones.tril(-1), 0).cumsum(-2)  # (..., L, L): rows i, cols j
    return s.masked_fill(~ones.tril(0), -math.inf)


def ssd_chunked(x, dt, A, B, C, D, h0=None, chunk_size=256):
    """Same contract as `ssd_ref`, by the chunked SSD algorithm (sec. 6, Listing 1's four steps).

    T is padded up to a multiple of `chunk_size` with dt = 0: a padded step decays by exp(0) = 1 and
    adds nothing, so the final state is that of step T. The loop runs over chunks, not tokens.
    """
    dtype = x.dtype
    Bsz, T, H, P = x.shape
    N, L = B.shape[-1], chunk_size
    pad = -T % L
    x, dt, B, C = (F.pad(t.float(), (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    n_chunks = x.shape[1] // L
    B = B.repeat_interleave(H // B.shape[2], dim=2).reshape(Bsz, n_chunks, L, H, N)  # (B, c, L, H, N)
    C = C.repeat_interleave(H // C.shape[2], dim=2).reshape(Bsz, n_chunks, L, H, N)  # (B, c, L, H, N)
    xdt = (x * dt[..., None]).reshape(Bsz, n_chunks, L, H, P)  # dt_s x_s, (B, c, L, H, P)
    a = (dt * A.float()).reshape(Bsz, n_chunks, L, H).transpose(2, 3)  # log-decay per step, (B, c, H, L)
    decay = torch.exp(segsum(a))  # (B, c, H, L, L), decay from step s to step l of a chunk

    # 1. within each chunk (diagonal blocks): y_l = sum_{s<=l} (C_l . B_s) decay[l, s] dt_s x_s
    scores = torch.einsum("bclhn,bcshn->bchls", C, B) * decay  # (B, c, H, L, L)
    y = torch.einsum("bchls,bcshp->bclhp", scores, xdt)  # (B, c, L, H, P)

    # 2. each chunk's contribution to the state at its end: decay from step s to the chunk's last step
    chunk_states = torch.einsum("bchs,bcshn,bcshp->bchpn", decay[..., -1, :], B, xdt)  # (B, c, H, P, N)

    # 3. state passing across chunk boundaries: h_c = exp(sum of a over chunk c) h_{c-1} + chunk_states_c
    chunk_decay = torch.exp(a.sum(-1))[..., None, None]  # (B, c, H, 1, 1)
    h = h0.float() if h0 is not None else x.new_zeros(Bsz, H, P, N)
    starts = []
    for c in range(n_chunks):
        starts.append(h)
        h = chunk_decay[:, c] * h + chunk_states[:, c]
    starts = torch.stack(starts, dim=1)  # (B, c, H, P, N), state entering each chunk

    # 4. the entering state read out at step l, decayed from the chunk start through step l
    from_start = torch.exp(a.cumsum(-1)).transpose(2, 3)[..., None]  # (B, c, L, H, 1)
    y = y + torch.einsum("bclhn,bchpn->bclhp", C, starts) * from_start
    y = y.reshape(Bsz, n_chunks * L, H, P)[:, :T] + D.float()[:, None] * x[:, :T]
    return y.to(dtype), h


def ssd_step(x, dt, A, B, C, D, h):
    """One token: x: (B, H, P); dt: (B, H); B, C: (B, G, N); h: (B, H, P, N) fp32 -> y (B, H, P), h."""
    heads_per_group = x.shape[1] // B.shape[1]
    B = B.float().repeat_interleave(heads_per_group, dim=1)  # (B, H, N)
    C = C.float().repeat_interleave(heads_per_group, dim=1)  # (B, H, N)
    xf, dt = x.float(), dt.float()
    h = torch.exp(dt * A.float())[..., None, None] * h + (dt[..., None] * xf)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, C) + D.float()[:, None] * xf
    return y.to(x.dtype), h


def ssd_conv_step(xBC, dt, window, conv_weight, conv_bias, dt_bias, A, D, h, n_groups, dt_floor=0.0):
    """One token of the block from in_proj's outputs to the SSM's: the causal conv over (x, B, C) with
    its window, silu, dt = softplus(dt + dt_bias) (at least dt_floor when that is > 0), `ssd_step`.

    xBC: (B, H P + 2 G N)   dt: (B, H) before softplus   window: (B, K-1, H P + 2 G N)
    conv_weight: (H P + 2 G N, K)   conv_bias: (H P + 2 G N,)   dt_bias, A, D: (H,)   h: (B, H, P, N) fp32
    returns y: (B, H, P) in xBC's dtype, h: (B, H, P, N) fp32, the window after this token
    """
    H, P, N = h.shape[1], h.shape[2], h.shape[3]
    dt = F.softplus(dt.float() + dt_bias.float())
    dt = dt.clamp_min(dt_floor) if dt_floor else dt
    xBC, window = causal_conv_step(xBC, window, conv_weight, conv_bias)
    x, B, C = F.silu(xBC).split([H * P, n_groups * N, n_groups * N], dim=-1)
    y, h = ssd_step(x.unflatten(-1, (H, P)), dt, A, B.unflatten(-1, (n_groups, N)), C.unflatten(-1, (n_groups, N)), D, h)
    return y, h, window


# --- the block ------------------------------------------------------------------------------------


class GatedRMSNorm(nn.Module):
    """weight * RMSNorm(y * silu(z)), normalised over groups of `group_size` channels (one per B/C
    group, so the norm does not mix groups under tensor parallelism, sec. 8.1; mamba_ssm's RMSNormGated
    with norm_before_gate=False)."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps = group_size, eps

    def forward(self, y, z):
        g = (y.float() * F.silu(z.float())).unflatten(-1, (-1, self.group_size))  # (..., G, d_inner / G)
        g = F.rms_norm(g, (self.group_size,), eps=self.eps).flatten(-2)
        return self.weight * g.to(y.dtype)


class Mamba2Mixer(nn.Module):
    """in_proj -> (z, xBC, dt); xBC -> causal conv -> silu -> (x, B, C) -> SSD; norm(y * silu(z)) -> out_proj."""

    def __init__(self, c: Mamba2Config):
        super().__init__()
        self.c = c
        self.d_inner = di = c.expand * c.d_model
        self.conv_dim = di + 2 * c.n_groups * c.d_state  # channels of (x, B, C)
        self.in_proj = nn.Linear(c.d_model, di + self.conv_dim + c.n_heads, bias=False)
        self.conv1d = CausalConv1d(self.conv_dim, c.d_conv)
        self.dt_bias = nn.Parameter(torch.empty(c.n_heads))
        self.A_log = nn.Parameter(torch.empty(c.n_heads))
        self.D = nn.Parameter(torch.ones(c.n_heads))
        self.norm = GatedRMSNorm(di, di // c.n_groups, c.norm_eps)
        self.out_proj = nn.Linear(di, c.d_model, bias=False)
        # the chunked op and the decode step; `use_backend` swaps in kernels with the same contracts
        self.ssd, self.step_op = ssd_chunked, ssd_conv_step
        with torch.no_grad():  # A uniform in [1, 16] and dt log-uniform in [dt_min, dt_max], as mamba_ssm
            self.A_log.copy_(torch.log(torch.empty(c.n_heads).uniform_(1, 16)))
            dt = torch.exp(torch.rand(c.n_heads) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def _split(self, hidden):
        """hidden: (..., d_model) -> z (..., d_inner), xBC (..., conv_dim), dt (..., H) after softplus."""
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.c.n_heads], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        return z, xBC, dt.clamp_min(self.c.dt_floor) if self.c.dt_floor else dt

    def _ssm_inputs(self, xBC):
        """xBC: (..., conv_dim) after the conv -> x (..., H, P), B and C (..., G, N)."""
        c = self.c
        x, B, C = xBC.split([self.d_inner, c.n_groups * c.d_state, c.n_groups * c.d_state], dim=-1)
        return x.unflatten(-1, (c.n_heads, c.head_dim)), B.unflatten(-1, (c.n_groups, -1)), C.unflatten(-1, (c.n_groups, -1))

    def forward(self, hidden, state):
        """hidden: (B, T, d_model); state: (conv window (B, K-1, conv_dim), h (B, H, P, N)) or None."""
        z, xBC, dt = self._split(hidden)  # (B, T, Di), (B, T, conv_dim), (B, T, H)
        xBC, window = self.conv1d(xBC, state[0] if state is not None else None)  # (B, T, conv_dim)
        x, B, C = self._ssm_inputs(F.silu(xBC))  # (B, T, H, P), (B, T, G, N) x 2
        A = -torch.exp(self.A_log.float())  # (H,)
        h0 = state[1] if state is not None else None
        y, h = self.ssd(x, dt, A, B, C, self.D, h0, self.c.chunk_size)  # (B, T, H, P)
        return self.out_proj(self.norm(y.flatten(-2), z)), (window, h)

    def step(self, hidden, state):
        """hidden: (B, d_model) -> (B, d_model)."""
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.c.n_heads], dim=-1)
        y, h, window = self.step_op(
            xBC, dt, state[0], self.conv1d.weight[:, 0], self.conv1d.bias, self.dt_bias, -torch.exp(self.A_log.float()),
            self.D, state[1], self.c.n_groups, self.c.dt_floor,
        )  # (B, H, P)
        return self.out_proj(self.norm(y.flatten(-2), z)), (window, h)

    def init_state(self, batch, device, dtype, capacity=0):
        c = self.c
        h = torch.zeros(batch, c.n_heads, c.head_dim, c.d_state, device=device, dtype=torch.float32)
        return self.conv1d.init_state(batch, device, dtype), h

    def state_bytes(self, batch, context, dtype):
        c = self.c
        conv = (c.d_conv - 1) * self.conv_dim * torch.finfo(dtype).bits // 8
        return batch * (conv + c.n_heads * c.head_dim * c.d_state * 4)

    def flops_per_token(self, context):
        c, di, cd = self.c, self.d_inner, self.conv_dim
        proj = linear_flops(c.d_model, di + cd + c.n_heads) + linear_flops(di, c.d_model)
        # conv; recurrence per state element: decay mul, dt x B^T mul and add, C read-out mul-add
        return proj + self.conv1d.flops_per_token() + 5 * di * c.d_state


class Mamba2(LanguageModel):
    """Mamba-2 blocks only: each layer is x + Mamba2Mixer(RMSNorm(x)), no MLP (sec. 7.1)."""

    def __init__(self, c: Mamba2Config):
        blocks = pattern_blocks(
            "M" * c.n_layers,
            mixers={"M": lambda i: Mamba2Mixer(c)},
            mlp=lambda i: None,
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)


# Dao & Gu 2024 (sec. 9.2) and the state-spaces/mamba2-* config.json files: width and depth per size,
# d_state 128, head_dim 64, expand 2, one group; the GPT-NeoX vocabulary (50277) padded to a multiple
# of 16 (`pad_vocab_size_multiple`), so the checkpoints' embeddings have 50288 rows.
SIZES = {
    "tiny": Mamba2Config(
        vocab_size=256, d_model=64, n_layers=2, d_state=16, head_dim=16, n_groups=2, chunk_size=8
    ),  # 8 heads in 2 groups, so the tests exercise shared B/C and the per-group norm
    "130m": Mamba2Config(vocab_size=50288, d_model=768, n_layers=24),
    "370m": Mamba2Config(vocab_size=50288, d_model=1024, n_layers=48),
    "780m": Mamba2Config(vocab_size=50288, d_model=1536, n_layers=48),
    "1.3b": Mamba2Config(vocab_size=50288, d_model=2048, n_layers=48),
    "2.7b": Mamba2Config(vocab_size=50288, d_model=2560, n_layers=64),
}
MODEL = Mamba2


# --- Hugging Face mapping (Mamba2ForCausalLM), see models/hf.py -----------------------------------
HF_CLASS = "Mamba2ForCausalLM"
HF_RENAMES = [
    (r"backbone\.embeddings?\.(.*)", r"embed.\1"),  # transformers: embeddings; mamba_ssm: embedding
    (r"backbone\.norm_f\.(.*)", r"norm.\1"),
    (r"backbone\.layers\.(\d+)\.norm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"backbone\.(.*)", r"\1"),
]


def to_hf_config(c: Mamba2Config):
    from transformers import Mamba2Config as HFMamba2Config

    return HFMamba2Config(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, state_size=c.d_state,
        num_heads=c.n_heads, head_dim=c.head_dim, n_groups=c.n_groups, expand=c.expand, conv_kernel=c.d_conv,
        chunk_size=c.chunk_size, layer_norm_epsilon=c.norm_eps, time_step_min=c.dt_min, time_step_max=c.dt_max,
        use_bias=False, use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=c.tie_embeddings,
    )


def from_hf_config(d: dict) -> Mamba2Config:
    """config.json of a transformers Mamba2 checkpoint; missing keys take transformers' defaults."""
    return Mamba2Config(
        vocab_size=d.get("vocab_size", 32768), d_model=d.get("hidden_size", 4096),
        n_layers=d.get("num_hidden_layers", 64), d_state=d.get("state_size", 128), d_conv=d.get("conv_kernel", 4),
        expand=d.get("expand", 2), head_dim=d.get("head_dim", 64), n_heads=d.get("num_heads", 128),
        n_groups=d.get("n_groups", 8), chunk_size=d.get("chunk_size", 256), norm_eps=d.get("layer_norm_epsilon", 1e-5),
        dt_min=d.get("time_step_min", 0.001), dt_max=d.get("time_step_max", 0.1),
        tie_embeddings=d.get("tie_word_embeddings", False),
    )


# --- backends: the same chunked op from other implementations (see registry.use_backend) -----------


def ssd_triton(x, dt, A, B, C, D, h0=None, chunk_size=256):
    """`ssd_chunked`'s contract through altbench's Triton kernel: SSD is linear attention with a
    scalar decay per head, q = C, k = B (shared by the heads of a group), v = dt x, g = dt A."""
    from altbench.kernels.chunk_scalar_decay import chunk_scalar_decay

    v = (x.float() * dt[..., None]).to(x.dtype)  # (B, T, H, P)
    g = (dt * A).float()  # (B, T, H)
    h0 = h0.transpose(-1, -2).float().contiguous() if h0 is not None else None  # (B, H, N, P)
    y, h = chunk_scalar_decay(C.to(x.dtype), B.to(x.dtype), v, g, h0, scale=1.0, chunk_size=64)
    return (y.float() + x.float() * D.float()[:, None]).to(x.dtype), h.transpose(-1, -2)


def ssd_mamba_ssm(x, dt, A, B, C, D, h0=None, chunk_size=256):
    """`ssd_chunked`'s contract through mamba_ssm's Triton SSD kernel (`mamba_chunk_scan_combined`)."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    y, h = mamba_chunk_scan_combined(
        x, dt, A, B.to(x.dtype), C.to(x.dtype), chunk_size, D=D.float(), initial_states=h0, return_final_states=True
    )
    return y, h.float()


def ssd_conv_step_triton(xBC, dt, window, conv_weight, conv_bias, dt_bias, A, D, h, n_groups, dt_floor=0.0):
    """`ssd_conv_step`'s contract in one Triton kernel (kernels/ssd_step.py)."""
    from altbench.kernels.ssd_step import ssd_conv_step as triton_ssd_conv_step

    return triton_ssd_conv_step(xBC, dt, window, conv_weight, conv_bias, dt_bias, A, D, h, n_groups, dt_floor)


def use_triton(model) -> None:
    """The chunked op and the decode step from altbench's Triton kernels."""
    swap_layer_op("mixer.ssd", ssd_triton)(model)
    swap_layer_op("mixer.step_op", ssd_conv_step_triton)(model)


BACKENDS = {"triton": use_triton, "mamba_ssm": swap_layer_op("mixer.ssd", ssd_mamba_ssm)}
