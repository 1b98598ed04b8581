"""Pieces shared by the architectures: MLPs, norms, rotary position embedding and the causal
depthwise convolution with its window state. Each exists once; mixers and blocks compose them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import linear_flops


class SwiGLU(nn.Module):
    """MLP of Llama (Shazeer 2020, "GLU variants"): down( silu(gate x) * up x )."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.up_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=False)
        self.d_model, self.d_hidden = d_model, d_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def flops_per_token(self) -> int:
        return 3 * linear_flops(self.d_model, self.d_hidden)


class GeGLU(nn.Module):
    """Gated GeLU MLP with biases (Shazeer 2020; Griffin's MLP block, sec. 2.2): down( gelu(gate x) * up x ),
    GeLU in its tanh approximation."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_hidden)
        self.up_proj = nn.Linear(d_model, d_hidden)
        self.down_proj = nn.Linear(d_hidden, d_model)
        self.d_model, self.d_hidden = d_model, d_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))

    def flops_per_token(self) -> int:
        return 3 * linear_flops(self.d_model, self.d_hidden)


class GeluMLP(nn.Module):
    """Two-matrix MLP of GPT-2 and RetNet (eq. 9): fc2( gelu(fc1 x) ), GeLU exact or in its tanh form."""

    def __init__(self, d_model: int, d_hidden: int, bias: bool, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden, bias=bias)
        self.fc2 = nn.Linear(d_hidden, d_model, bias=bias)
        self.d_model, self.d_hidden, self.approximate = d_model, d_hidden, approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))

    def flops_per_token(self) -> int:
        return 2 * linear_flops(self.d_model, self.d_hidden)


class GemmaRMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) with its scale stored as an offset from one: x / rms(x) * (1 + w),
    computed in fp32 as Gemma and RecurrentGemma do."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


class CausalConv1d(nn.Conv1d):
    """Depthwise causal convolution over time, y_t = b + sum_k w_k * x_{t-K+1+k}, carrying the last
    K-1 inputs as its state (the window) so that a sequence can continue across calls.

    x: (B, T, C); window: (B, K-1, C), zeros at a sequence start. Parameters are nn.Conv1d's
    (weight (C, 1, K), bias (C,)), so checkpoints and seeded initialisation are those of a Conv1d.
    """

    def __init__(self, channels: int, width: int, bias: bool = True):
        super().__init__(channels, channels, width, groups=channels, bias=bias)

    def init_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch, self.kernel_size[0] - 1, self.in_channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C) -> y (B, T, C), the window after x (B, K-1, C)."""
        T = x.shape[1]
        if window is None:
            window = x.new_zeros(x.shape[0], self.kernel_size[0] - 1, x.shape[2])
        xw = torch.cat([window, x], dim=1)  # (B, K-1+T, C)
        y = F.conv1d(xw.transpose(1, 2), self.weight, self.bias, groups=self.groups)  # (B, C, T)
        return y.transpose(1, 2), xw[:, T:].clone()

    def step(self, x: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: x: (B, C) -> y (B, C), the window after x."""
        xw = torch.cat([window, x[:, None]], dim=1)  # (B, K, C)
        y = torch.einsum("bkc,ck->bc", xw, self.weight[:, 0])
        return (y + self.bias if self.bias is not None else y), xw[:, 1:]

    def flops_per_token(self) -> int:
        return 2 * self.in_channels * self.kernel_size[0]


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate channel pairs (i, i + D/2) of q and k by angle pos * theta^(-2i/D)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions start .. start+length-1, each (length, head_dim)."""
        pos = torch.arange(start, start + length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)  # (T, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (T, D)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); cos, sin: (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
