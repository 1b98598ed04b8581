"""Pieces shared by the architectures: MLPs, norms, rotary position embedding and the causal
depthwise convolution with its window state. Each exists once; mixers and blocks compose them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import linear_flops


class FusedLinear(nn.Module):
    """Linear maps of one input as one matmul: x -> (x W_1^T + b_1, ..., x W_n^T + b_n) from
    W = [W_1; ...; W_n] (one Parameter, and one for the biases). A decode step is bound by its number
    of kernels, and one matmul of the summed width costs a kernel where n would cost n.

    It stands in the parent module for n `nn.Linear(d_in, d_i)` named by `pieces` (name -> d_i, in
    order) and keeps their contract: each piece is initialised as that Linear would be, in the same
    order (weight then bias, piece after piece), so seeded weights equal separate Linears'; and the
    parent's checkpoints keep the pieces' names (`<parent>.<name>.weight`, `.bias`): `attach` makes
    the parent's `state_dict` write each piece under its name and `load_state_dict` read them back.
    `bias` is True (every piece has one), False (none) or the names of the pieces that have one; the
    biases of some pieces only are added after the matmul, where a compiler fuses them into the
    element-wise work that reads those pieces.
    """

    def __init__(self, d_in: int, pieces: dict[str, int], bias: bool | tuple[str, ...]):
        super().__init__()
        self.pieces = dict(pieces)
        self.sizes = list(pieces.values())
        self.biased = tuple(pieces) if bias is True else tuple(bias or ())
        assert set(self.biased) <= set(pieces), f"biased pieces {self.biased} are not all in {list(pieces)}"
        self.bias_sizes = [pieces[name] for name in self.biased]
        self.weight = nn.Parameter(torch.empty(sum(self.sizes), d_in))
        self.bias = nn.Parameter(torch.empty(sum(self.bias_sizes))) if self.biased else None
        with torch.no_grad():
            weights, biases = dict(zip(self.pieces, self.weight.split(self.sizes))), self.biases()
            for name in self.pieces:  # nn.Linear.reset_parameters, piece by piece
                nn.init.kaiming_uniform_(weights[name], a=math.sqrt(5))
                if name in biases:
                    nn.init.uniform_(biases[name], -1 / math.sqrt(d_in), 1 / math.sqrt(d_in))

    def biases(self) -> dict[str, torch.Tensor]:
        """Each biased piece's bias: a view of the fused Parameter (writing it initialises that piece)."""
        return dict(zip(self.biased, self.bias.split(self.bias_sizes))) if self.bias is not None else {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: (..., d_in) -> one (..., d_i) per piece."""
        if len(self.biased) == len(self.pieces):
            return F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)
        biases = self.biases()
        ys = F.linear(x, self.weight).split(self.sizes, dim=-1)
        return tuple(y + biases[name] if name in biases else y for name, y in zip(self.pieces, ys))

    def separately(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`forward` as n matmuls, one per piece, each rounded exactly as its separate Linear: a BLAS can
        round a slice of the wide product differently over many rows (MKL does, by ulps), so a
        many-token forward, bound by FLOPs rather than kernels, keeps the separate Linears' outputs."""
        weights, biases = self.weight.split(self.sizes), self.biases()
        return tuple(F.linear(x, w, biases.get(name)) for name, w in zip(self.pieces, weights))

    def per_piece(self, xs: torch.Tensor) -> torch.Tensor:
        """One input per piece, pieces of one width d_out, no biases: xs (n, ..., d_in) -> (n, ..., d_out),
        y_i = x_i W_i^T as one batched matmul (W viewed as (n, d_out, d_in)): maps of different inputs
        (RWKV's token-shifted mixes) in one kernel."""
        n, d_out = len(self.sizes), self.sizes[0]
        assert self.sizes == [d_out] * n and self.bias is None, f"per_piece needs equal widths, no bias: {self.pieces}"
        assert xs.shape[0] == n, f"xs {tuple(xs.shape)} must hold one input per piece ({n})"
        w = self.weight.view(n, d_out, -1).transpose(1, 2)  # (n, d_in, d_out)
        return torch.bmm(xs.flatten(1, -2), w).view(*xs.shape[:-1], d_out)

    def attach(self, parent: nn.Module, name: str) -> "FusedLinear":
        """Set as `parent.<name>`, with the parent's checkpoints holding the pieces under their own names."""
        setattr(parent, name, self)
        fused_weight, fused_bias = f"{name}.weight", f"{name}.bias"

        def split(module, state_dict, prefix, local_metadata):
            weights = dict(zip(self.pieces, state_dict[prefix + fused_weight].split(self.sizes)))
            biases = dict(zip(self.biased, state_dict[prefix + fused_bias].split(self.bias_sizes))) if self.biased else {}
            items = list(state_dict.items())
            state_dict.clear()
            for key, tensor in items:
                if key == prefix + fused_weight:  # each piece's weight and bias, piece after piece, as n Linears
                    for piece in self.pieces:
                        state_dict[f"{prefix}{piece}.weight"] = weights[piece].clone()
                        if piece in biases:
                            state_dict[f"{prefix}{piece}.bias"] = biases[piece].clone()
                elif key != prefix + fused_bias:
                    state_dict[key] = tensor

        def join(module, state_dict, prefix, *args):
            for fused, kind, pieces in ((fused_weight, "weight", self.pieces), (fused_bias, "bias", self.biased)):
                keys = [f"{prefix}{piece}.{kind}" for piece in pieces]
                if keys and all(k in state_dict for k in keys):
                    state_dict[prefix + fused] = torch.cat([state_dict.pop(k) for k in keys])

        parent.register_state_dict_post_hook(split)
        parent.register_load_state_dict_pre_hook(join)
        return self

    def flops_per_token(self) -> int:
        return linear_flops(self.weight.shape[1], self.weight.shape[0])


class SwiGLU(nn.Module):
    """MLP of Llama (Shazeer 2020, "GLU variants"): down( silu(gate x) * up x )."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        FusedLinear(d_model, {"gate_proj": d_hidden, "up_proj": d_hidden}, bias=False).attach(self, "gate_up_proj")
        self.down_proj = nn.Linear(d_hidden, d_model, bias=False)
        self.d_model, self.d_hidden = d_model, d_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)
        return self.down_proj(F.silu(gate) * up)

    def flops_per_token(self) -> int:
        return 3 * linear_flops(self.d_model, self.d_hidden)


class GeGLU(nn.Module):
    """Gated GeLU MLP with biases (Shazeer 2020; Griffin's MLP block, sec. 2.2): down( gelu(gate x) * up x ),
    GeLU in its tanh approximation."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        FusedLinear(d_model, {"gate_proj": d_hidden, "up_proj": d_hidden}, bias=True).attach(self, "gate_up_proj")
        self.down_proj = nn.Linear(d_hidden, d_model)
        self.d_model, self.d_hidden = d_model, d_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)

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
        return causal_conv_step(x, window, self.weight[:, 0], self.bias)

    def flops_per_token(self) -> int:
        return 2 * self.in_channels * self.kernel_size[0]


def causal_conv_step(x, window, weight, bias):
    """`CausalConv1d.step` on its parameters: x: (B, C); window: (B, K-1, C); weight: (C, K); bias: (C,)
    or None -> y = sum_k weight[:, k] * [window; x][k] + bias (B, C), the window after x (B, K-1, C)."""
    xw = torch.cat([window, x[:, None]], dim=1)  # (B, K, C)
    y = (xw.float() * weight.t().float()).sum(1)  # (B, C) in fp32: element-wise, fused by a compiler with the
    y = y + bias.float() if bias is not None else y  # window's cat and the activation (an einsum is a bmm kernel)
    return y.to(x.dtype), xw[:, 1:]


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
