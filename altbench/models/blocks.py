"""Pieces shared by several architectures: the SwiGLU MLP, pre-norm residual blocks and rotary position embedding."""

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


class PreNormMixerBlock(nn.Module):
    """x + mixer(RMSNorm(x)): the whole block of Mamba and Mamba-2 (no separate MLP). Subclasses
    give the mixer and the analytic state / parameter / FLOP counts."""

    def __init__(self, c, mixer: nn.Module):
        super().__init__()
        self.c = c
        self.norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.mixer = mixer

    def mix(self, x, state):
        """The sequence mixer alone (no norm or residual): the `kernel` measurement."""
        return self.mixer(x, state)

    def forward(self, x, state):
        y, state = self.mixer(self.norm(x), state)
        return x + y, state

    def step(self, x, state):
        y, state = self.mixer.step(self.norm(x), state)
        return x + y, state


class PreNormResidualBlock(nn.Module):
    """A sequence mixer, then an MLP, each on a normalised input and added back (GPT-2, Llama):

        h = x + mixer(mixer_norm(x))
        y = h + mlp(mlp_norm(h))

    The block of the Transformer, Griffin, GLA, RetNet, xLSTM and Hyena. The mixer maps
    (x (B, T, d_model), state) -> (y, state) in `forward` and (x (B, d_model), state) -> (y, state)
    in `step`; both norms are `norm(d_model, norm_eps)`. Subclasses give the mixer and the MLP, and
    the analytic state / parameter / FLOP counts.
    """

    def __init__(self, c, mixer: nn.Module, mlp: nn.Module, norm: type[nn.Module] = nn.RMSNorm):
        super().__init__()
        self.c = c
        self.mixer_norm = norm(c.d_model, c.norm_eps)
        self.mixer = mixer
        self.mlp_norm = norm(c.d_model, c.norm_eps)
        self.mlp = mlp

    def mix(self, x, state):
        """The sequence mixer alone (no norm, residual or MLP): the `kernel` measurement."""
        return self.mixer(x, state)

    def forward(self, x, state):
        y, state = self.mixer(self.mixer_norm(x), state)
        h = x + y
        return h + self.mlp(self.mlp_norm(h)), state

    def step(self, x, state):
        y, state = self.mixer.step(self.mixer_norm(x), state)
        h = x + y
        return h + self.mlp(self.mlp_norm(h)), state


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
