"""Mamba: a selective state-space model (Gu & Dao 2023, arXiv:2312.00752).

Each block is  x + out_proj( SSM(silu(conv(W_x x))) * silu(W_z x) )  with the selective SSM, per
channel d and state index n (A diagonal, Delta, B, C functions of the input, eq. 2 and Alg. 2):

    h_t = exp(Delta_t A) * h_{t-1} + Delta_t B_t x_t        (zero-order-hold discretisation of A,
    y_t = C_t . h_t + D x_t                                    the simplified Euler one of B)

Three forms compute the same map: `selective_scan_ref` (the loop above), `selective_scan`
(a parallel prefix scan over time, O(T log T) work, no loop over T) and `selective_scan_step`
(one token). The state of a block is (conv window, h). With `selective = False` Delta, B and C
are learned constants instead (the LTI ablation, registered as `mamba-lti`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import LanguageModel, LMConfig, linear_flops, swap_layer_op
from altbench.models.blocks import CausalConv1d
from altbench.models.compose import pattern_blocks


@dataclass
class MambaConfig(LMConfig):
    d_state: int = 16  # N, state size per channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # d_inner = expand * d_model
    dt_rank: int = 0  # rank of the Delta projection; 0 means ceil(d_model / 16) as in the paper
    dt_min: float = 0.001  # Delta initialised log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    selective: bool = True  # False: Delta, B, C are learned constants, not functions of x (an LTI SSM)
    inner_norms: bool = False  # RMSNorm dt, B and C after x_proj (Jamba, for stability at scale)

    def __post_init__(self):
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.d_model / 16)


# --- the selective scan in three forms ----------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D, h0=None):
    """The recurrence, one step at a time, in fp32; the ground truth for the other forms.

    u, delta: (B, T, Di)   A: (Di, N)   B, C: (B, T, N)   D: (Di,)   h0: (B, Di, N) or None
    returns y: (B, T, Di) in u's dtype, h_T: (B, Di, N) in fp32
    """
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    h = h0.float() if h0 is not None else u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        dA = torch.exp(delta[:, t, :, None] * A)  # (B, Di, N)
        dBu = delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]  # (B, Di, N)
        h = dA * h + dBu
        ys.append((h * C[:, t, None, :]).sum(-1))  # (B, Di)
    y = torch.stack(ys, dim=1) + u * D
    return y.to(dtype), h


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All prefixes of h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim 1, by Hillis-Steele doubling.

    The pairs (a, b) compose associatively: (a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2), so after
    step k every position holds the composition of the 2^k steps ending there. log2(T) passes.
    """
    T, offset = a.shape[1], 1
    while offset < T:
        b = torch.cat([b[:, :offset], b[:, offset:] + a[:, offset:] * b[:, :-offset]], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b


def selective_scan(u, delta, A, B, C, D, h0=None, chunk_size=256):
    """Same contract as `selective_scan_ref`: a parallel prefix scan inside chunks of `chunk_size`
    tokens, the state carried from chunk to chunk. Memory is O(chunk_size * Di * N), not O(T * ...)."""
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    h = h0.float() if h0 is not None else u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (B, Di, N)
    ys = []
    for t in range(0, u.shape[1], chunk_size):
        dt, x = delta[:, t : t + chunk_size], u[:, t : t + chunk_size]  # (B, c, Di)
        dA = torch.exp(dt[..., None] * A)  # (B, c, Di, N)
        dBu = (dt * x)[..., None] * B[:, t : t + chunk_size, None, :]  # (B, c, Di, N)
        dBu[:, 0] += dA[:, 0] * h
        hs = linear_scan(dA, dBu)  # (B, c, Di, N)
        ys.append(torch.einsum("btdn,btn->btd", hs, C[:, t : t + chunk_size]))
        h = hs[:, -1]
    y = torch.cat(ys, dim=1) + u * D
    return y.to(dtype), h


def selective_scan_step(u, delta, A, B, C, D, h):
    """One token: u, delta: (B, Di); B, C: (B, N); h: (B, Di, N) fp32 -> y (B, Di), h."""
    dA = torch.exp(delta.float()[..., None] * A)
    h = dA * h + (delta * u).float()[..., None] * B.float()[:, None, :]
    y = (h * C.float()[:, None, :]).sum(-1) + u.float() * D
    return y.to(u.dtype), h


def selective_step(u, z, dt, dt_weight, dt_bias, A, B, C, D, h):
    """One token of the selective SSM with Delta from its low-rank input, gated (sec. 3.4, Fig. 3):
    Delta = softplus(dt W^T + bias), then `selective_scan_step`, then y * silu(z).

    u, z: (B, Di)   dt: (B, R)   dt_weight: (Di, R)   dt_bias: (Di,)   A: (Di, N)   B, C: (B, N)
    D: (Di,)   h: (B, Di, N) fp32   ->   y * silu(z): (B, Di) in u's dtype, h: (B, Di, N) fp32
    """
    delta = F.softplus(F.linear(dt, dt_weight, dt_bias))
    y, h = selective_scan_step(u, delta, A, B, C, D, h)
    return y * F.silu(z), h


# --- the block ----------------------------------------------------------------------------------


class MambaMixer(nn.Module):
    """in_proj -> (x, z); x -> causal conv -> silu -> selective SSM; y * silu(z) -> out_proj."""

    def __init__(self, c: MambaConfig):
        super().__init__()
        self.c = c
        di, n = c.expand * c.d_model, c.d_state
        self.d_inner = di
        self.in_proj = nn.Linear(c.d_model, 2 * di, bias=False)
        self.conv1d = CausalConv1d(di, c.d_conv)
        if c.selective:
            self.x_proj = nn.Linear(di, c.dt_rank + 2 * n, bias=False)
            self.dt_proj = nn.Linear(c.dt_rank, di, bias=True)
        else:  # the same scan with input-independent parameters: Delta = softplus(dt_bias), B, C constants
            self.dt_bias = nn.Parameter(torch.empty(di))
            self.B = nn.Parameter(torch.randn(n) / math.sqrt(n))
            self.C = nn.Parameter(torch.randn(n) / math.sqrt(n))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))  # S4D-real
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, c.d_model, bias=False)
        with torch.no_grad():  # Delta = softplus(bias) log-uniform in [dt_min, dt_max] (paper, sec. 3.6)
            dt = torch.exp(torch.rand(di) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
            (self.dt_proj.bias if c.selective else self.dt_bias).copy_(dt + torch.log(-torch.expm1(-dt)))
        if c.inner_norms:
            self.dt_layernorm = nn.RMSNorm(c.dt_rank, eps=c.norm_eps)
            self.b_layernorm = nn.RMSNorm(n, eps=c.norm_eps)
            self.c_layernorm = nn.RMSNorm(n, eps=c.norm_eps)

    def _x_proj(self, x):
        """x: (..., Di) after the conv -> Delta's low-rank input dt (..., R), B (..., N), C (..., N)."""
        dt, B, C = self.x_proj(x).split([self.c.dt_rank, self.c.d_state, self.c.d_state], dim=-1)
        if self.c.inner_norms:
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        return dt, B, C

    def _ssm_inputs(self, x):
        """x: (..., Di) after the conv -> delta (..., Di), B (..., N), C (..., N)."""
        if not self.c.selective:
            lead = x.shape[:-1]
            return F.softplus(self.dt_bias).expand(*lead, -1), self.B.expand(*lead, -1), self.C.expand(*lead, -1)
        dt, B, C = self._x_proj(x)
        return F.softplus(self.dt_proj(dt)), B, C

    # the scan and the decode step; `use_backend` swaps in kernels with the same contracts
    scan = staticmethod(selective_scan)
    step_op = staticmethod(selective_step)

    def forward(self, hidden, state):
        """hidden: (B, T, d_model); state: (conv window (B, K-1, Di), h (B, Di, N)) or None."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, T, Di) each
        x, window = self.conv1d(x, state[0] if state is not None else None)
        x = F.silu(x)  # (B, T, Di)
        delta, B, C = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.float())  # (Di, N)
        y, h = self.scan(x, delta, A, B, C, self.D.float(), state[1] if state is not None else None)
        return self.out_proj(y * F.silu(z)), (window, h)

    def step(self, hidden, state):
        """hidden: (B, d_model) -> (B, d_model)."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, Di)
        x, window = self.conv1d.step(x, state[0])
        x = F.silu(x)  # (B, Di)
        A = -torch.exp(self.A_log.float())  # (Di, N)
        if self.c.selective:
            dt, B, C = self._x_proj(x)  # (B, R), (B, N), (B, N)
            y, h = self.step_op(x, z, dt, self.dt_proj.weight, self.dt_proj.bias, A, B, C, self.D.float(), state[1])
        else:
            delta, B, C = self._ssm_inputs(x)
            y, h = selective_scan_step(x, delta, A, B, C, self.D.float(), state[1])
            y = y * F.silu(z)
        return self.out_proj(y), (window, h)

    def init_state(self, batch, device, dtype, capacity=0):
        h = torch.zeros(batch, self.d_inner, self.c.d_state, device=device, dtype=torch.float32)
        return self.conv1d.init_state(batch, device, dtype), h

    def state_bytes(self, batch, context, dtype):
        c, di = self.c, self.d_inner
        return batch * di * ((c.d_conv - 1) * torch.finfo(dtype).bits // 8 + c.d_state * 4)

    def flops_per_token(self, context):
        c, di, n = self.c, self.d_inner, self.c.d_state
        proj = linear_flops(c.d_model, 2 * di) + linear_flops(di, c.d_model)
        if c.selective:
            proj += linear_flops(di, c.dt_rank + 2 * n) + linear_flops(c.dt_rank, di)
        return proj + self.conv1d.flops_per_token() + 9 * di * n  # scan: exp, 2 mul + add for h, 2 for y


class Mamba(LanguageModel):
    """Mamba blocks only: each layer is x + MambaMixer(RMSNorm(x)), no MLP (sec. 3.4)."""

    def __init__(self, c: MambaConfig):
        blocks = pattern_blocks(
            "M" * c.n_layers,
            mixers={"M": lambda i: MambaMixer(c)},
            mlp=lambda i: None,
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)

    def activation_bytes(self, batch, tokens, dtype):
        """The PyTorch chunked scan keeps ~8 fp32 (B, chunk, d_inner, N) tensors alive per layer call;
        a kernel backend (its scan swapped by `use_backend`) keeps its states in registers."""
        c = self.config
        torch_scan = self.layers[0].mixer.scan is selective_scan
        scan = 8 * batch * min(tokens, 256) * c.expand * c.d_model * c.d_state * 4 if torch_scan else 0
        return super().activation_bytes(batch, tokens, dtype) + scan


# Gu & Dao 2023, Table 12 (and the state-spaces/mamba-* model cards): width and depth per size.
SIZES = {
    "tiny": MambaConfig(vocab_size=256, d_model=64, n_layers=2, d_state=8),
    "130m": MambaConfig(d_model=768, n_layers=24),
    "370m": MambaConfig(d_model=1024, n_layers=48),
    "790m": MambaConfig(d_model=1536, n_layers=48),
    "1.4b": MambaConfig(d_model=2048, n_layers=48),
    "2.8b": MambaConfig(d_model=2560, n_layers=64),
}
MODEL = Mamba


# --- Hugging Face mapping (MambaForCausalLM), see models/hf.py ------------------------------------
HF_CLASS = "MambaForCausalLM"
HF_RENAMES = [
    (r"backbone\.embeddings\.(.*)", r"embed.\1"),
    (r"backbone\.norm_f\.(.*)", r"norm.\1"),
    (r"backbone\.layers\.(\d+)\.norm\.(.*)", r"layers.\1.mixer_norm.\2"),
    (r"backbone\.(.*)", r"\1"),
]


def to_hf_config(c: MambaConfig):
    from transformers import MambaConfig as HFMambaConfig

    return HFMambaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, state_size=c.d_state, num_hidden_layers=c.n_layers,
        layer_norm_epsilon=c.norm_eps, expand=c.expand, conv_kernel=c.d_conv, time_step_rank=c.dt_rank,
        use_bias=False, use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=c.tie_embeddings,
    )


def from_hf_config(d: dict) -> MambaConfig:
    rank = d.get("time_step_rank", "auto")
    return MambaConfig(
        vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
        d_state=d.get("state_size", 16), d_conv=d.get("conv_kernel", 4), expand=d.get("expand", 2),
        dt_rank=0 if rank == "auto" else rank, norm_eps=d.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=d.get("tie_word_embeddings", True),
    )


# --- backends: the same scan from other implementations (see registry.use_backend) ---------------


def selective_scan_triton(u, delta, A, B, C, D, h0=None):
    """`selective_scan_ref`'s contract through altbench's Triton kernel (kernels/selective_scan.py)."""
    from altbench.kernels.selective_scan import selective_scan as triton_selective_scan

    return triton_selective_scan(u, delta, A, B, C, D, h0)


def selective_scan_mamba_ssm(u, delta, A, B, C, D, h0=None):
    """`selective_scan_ref`'s contract through mamba_ssm's CUDA kernel (`selective_scan_fn`).

    mamba_ssm works in (B, Di, T) and (B, N, T): u, Delta, B, C are transposed into that layout and
    y back (copies the official Mamba block avoids by keeping (B, Di, T) throughout). Its scan takes
    no initial state, so this backend serves only calls that start from zero: a prefill in one
    segment, or a training step. A segmented prefill carries h into its second segment, and the
    decode scenario prefills from `init_state` (zeros, but a state), so both raise
    NotImplementedError, which the harness records as a skipped row.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as e:
        if e.name != "selective_scan_cuda":
            raise
        raise NotImplementedError(
            "mamba_ssm is installed without its CUDA extension selective_scan_cuda (build mamba_ssm from source with CUDA)"
        ) from e
    if h0 is not None:
        raise NotImplementedError(
            "mamba_ssm's selective_scan_fn takes no initial state; carried-state prefill needs the torch or triton backend"
        )
    dtype = u.dtype
    y, h = selective_scan_fn(
        u.transpose(1, 2), delta.to(dtype).transpose(1, 2), A.float(), B.to(dtype).transpose(1, 2), C.to(dtype).transpose(1, 2),
        D.float(), return_last_state=True,
    )  # y (B, Di, T), h (B, Di, N) fp32
    return y.transpose(1, 2), h.contiguous()  # contiguous: h is a view into the kernel's per-chunk states


def selective_step_triton(u, z, dt, dt_weight, dt_bias, A, B, C, D, h):
    """`selective_step`'s contract in one Triton kernel (kernels/selective_step.py)."""
    from altbench.kernels.selective_step import selective_step as triton_selective_step

    return triton_selective_step(u, z, dt, dt_weight, dt_bias, A, B, C, D, h)


def use_triton(model) -> None:
    """The scan and the decode step from altbench's Triton kernels."""
    swap_layer_op("mixer.scan", selective_scan_triton)(model)
    swap_layer_op("mixer.step_op", selective_step_triton)(model)


BACKENDS = {
    "triton": use_triton,
    "mamba_ssm": swap_layer_op("mixer.scan", selective_scan_mamba_ssm),
}
