"""Hyena: implicit long convolutions interleaved with data-controlled gating (Poli et al. 2023,
"Hyena Hierarchy: Towards Larger Convolutional Language Models", arXiv:2302.10866).

The Hyena operator of order N (Definition 3.1), per channel, over projections (v, x^1 .. x^N) of
the input, each passed through a short causal depthwise convolution (width 3, as in the official code):

    z^1_t     = v_t
    z^{i+1}_t = x^i_t * ( (h^i * z^i)_t + b^i z^i_t ),     (h * z)_t = sum_{s <= t} h(t - s) z_s
    y_t       = out_proj(z^{N+1}_t)

Each long filter is implicit (sec. 3.3): h^i(t) = Window(t) * FFN(PosEmb(t))^i, where
PosEmb(t) = [t / l_max, cos(2 pi f_k t / l_max), sin(2 pi f_k t / l_max)] for bands = (filter_emb - 1) / 2
frequencies f_k evenly from ~0 to bands - 1, the FFN is Linear -> sin -> Linear -> sin -> Linear -> sin ->
Linear (the sine frequency a learned vector, shared by the three activations), and
Window(t) = exp(-alpha_c t / l_max) with fixed per-channel rates alpha_c spread evenly between a
slow decay (to `decay_target` at t = decay_slow * l_max) and a fast one (at t = decay_fast * l_max).
PosEmb is a fixed function of t, so the filter is defined at every position: a 1M-token prefill
evaluates it at 0 .. 1M - 1. b^i is a learned per-channel bias (the skip term).

A block is the paper's GPT-style pre-norm stack:  h = x + Hyena(Norm(x)),  y = h + MLP(Norm(h)),
the MLP GELU, 2 d_model wide (as in the paper's language models).

Three forms of the operator return (z^{N+1}, all long-convolution inputs so far):
  `hyena_ref`   the recurrence above one token at a time in fp32, each convolution an explicit causal
                sum over the history: O(T (S + T)), the ground truth
  `hyena_fft`   each convolution as a product of real FFTs of length n >= S + 2T - 1 in fp32
  `hyena_step`  one token: a dot product of the history with the (time-reversed) filter

The state of a block (`HyenaCache`) is what the long convolutions need to continue the sequence:
every past input z^i_s of each of them, like a KV cache, so it grows with the context, plus the
short convolution's last 2 inputs and the filter taps h(0 .. t-1) already evaluated, so that a
segment or a decode step runs the filter FFN only at its new positions. Like a KV cache, it is kept
in the model's dtype (the convolutions themselves run in fp32).

FLOPs (2 per multiply-add). A decode step at position t does, per layer, the dense projections and
MLP, 2 * N * d * (t + 1) for the causal sums, and the filter FFN at one position
(`flops_per_token`). A prefill of L tokens (`prefill_flops`) does the dense work per token, the
filter FFN at L positions, and per long convolution and channel three real FFTs of size
n = 2^ceil(log2(2L - 1)) (input, filter, inverse; 2.5 n log2 n each) and a complex product over the
n / 2 + 1 frequencies (6 each):   N d (7.5 n log2 n + 6 (n / 2 + 1)).
A segment of T tokens after S others convolves all S + T inputs (n >= S + 2T - 1), so a prefill in
segments does more work than this one-segment count.

Differences from the official code (HazyResearch/safari, `hyena.py`): there PosEmb is a learned table
of l_max rows (so the filter exists only up to l_max), and the `order=2` operator applies one long
convolution between two gates (x^1 (h * (x^2 v))); this module follows Definition 3.1 with N
long convolutions. Norms are RMSNorm, as in every altbench model, where the paper uses LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.models.base import LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import CausalConv1d, GeluMLP
from altbench.models.compose import uniform_blocks


@dataclass
class HyenaConfig(LMConfig):
    order: int = 2  # N, long convolutions (and gates) per operator
    short_conv: int = 3  # width of the causal depthwise convolution on the projections
    filter_emb: int = 33  # PosEmb width: t, and cos, sin of (filter_emb - 1) / 2 frequencies; odd
    filter_order: int = 64  # width of the filter FFN
    filter_freq: float = 14.0  # initial frequency w of the FFN's sine activations, sin(w x)
    l_max: int = 2048  # training length: PosEmb and the window see t / l_max
    decay_fast: float = 0.3  # the fastest channel's window reaches decay_target at t = 0.3 l_max
    decay_slow: float = 1.5  # the slowest one at t = 1.5 l_max
    decay_target: float = 1e-2
    d_hidden: int = 0  # MLP width; 0 means 2 d_model (the paper's language models), also after overrides

    def __post_init__(self):
        if self.filter_emb < 3 or self.filter_emb % 2 == 0:
            raise ValueError(f"filter_emb must be odd and >= 3 (t, cos, sin), got {self.filter_emb}")


def fft_size(length: int) -> int:
    """The smallest power of two >= length."""
    return 1 << (length - 1).bit_length()


# --- the Hyena operator in three forms ------------------------------------------------------------


def hyena_ref(v, x, h, bias, z=None):
    """Definition 3.1 one token at a time, in fp32; the ground truth for the other forms.

    v: (B, T, D) the value projection       x: (B, T, N, D) the gates x^1 .. x^N
    h: (S + T, N, D) filter taps h^i(0 .. S+T-1)   bias: (N, D)   z: (B, S, N, D) earlier inputs of
    each long convolution, or None (S = 0)
    returns y = z^{N+1}: (B, T, D) in v's dtype, z: (B, S + T, N, D) in v's dtype
    """
    dtype = v.dtype
    B, T, N, D = x.shape
    history = z.float() if z is not None else v.new_zeros(B, 0, N, D, dtype=torch.float32)  # (B, S, N, D)
    h, bias = h.float(), bias.float()
    ys = []
    for t in range(T):
        zi = v[:, t].float()  # (B, D), z^1_t
        inputs = []
        for i in range(N):
            inputs.append(zi)
            past = torch.cat([history[:, :, i], zi[:, None]], dim=1)  # (B, S + t + 1, D): z^i_0 .. z^i_t
            taps = h[: past.shape[1], i].flip(0)  # (S + t + 1, D): h^i(S + t - s) for s = 0 .. S + t
            conv = (past * taps).sum(dim=1)  # (B, D), (h^i * z^i)_t
            zi = x[:, t, i].float() * (conv + bias[i] * zi)  # z^{i+1}_t
        history = torch.cat([history, torch.stack(inputs, dim=1)[:, None]], dim=1)
        ys.append(zi)
    return torch.stack(ys, dim=1).to(dtype), history.to(dtype)


def hyena_fft(v, x, h, bias, z=None):
    """Same contract as `hyena_ref`: each causal convolution of the whole history (S + T inputs) with
    its filter as a product of real FFTs in fp32. n >= S + 2T - 1 keeps the circular wrap-around away
    from the T outputs kept (S = 0: n >= 2T - 1, a linear convolution)."""
    dtype = v.dtype
    B, T, N, D = x.shape
    S = z.shape[1] if z is not None else 0
    n = fft_size(S + 2 * T - 1)
    h_f = torch.fft.rfft(h.float(), n=n, dim=0)  # (n/2 + 1, N, D)
    zi, inputs = v.float(), []
    for i in range(N):
        past = zi if z is None else torch.cat([z[:, :, i].float(), zi], dim=1)  # (B, S + T, D)
        inputs.append(past)
        conv = torch.fft.irfft(torch.fft.rfft(past, n=n, dim=1) * h_f[:, i], n=n, dim=1)[:, S : S + T]  # (B, T, D)
        zi = x[:, :, i].float() * (conv + bias[i].float() * zi)  # (B, T, D), z^{i+1}
    return zi.to(dtype), torch.stack(inputs, dim=2).to(dtype)


def hyena_step(v, x, h, bias, z):
    """One token at position t: v: (B, D); x: (B, N, D); h: (t + 1, N, D) the taps aligned with the
    history, h[s] = h(t - s) (so h[t] = h(0)); bias: (N, D); z: (B, t, N, D) the earlier inputs.
    Returns y: (B, D) and this token's input of each long convolution, (B, N, D), in v's dtype."""
    zi, inputs = v.float(), []
    for i in range(x.shape[1]):
        inputs.append(zi)
        conv = (z[:, :, i].float() * h[:-1, i].float()).sum(dim=1) + h[-1, i].float() * zi  # (B, D)
        zi = x[:, i].float() * (conv + bias[i].float() * zi)
    return zi.to(v.dtype), torch.stack(inputs, dim=1).to(v.dtype)


# --- the implicit filter -------------------------------------------------------------------------


class HyenaFilter(nn.Module):
    """h^i(t) = Window(t) * FFN(PosEmb(t))^i for i = 1 .. N, and the biases b^i (sec. 3.3)."""

    def __init__(self, c: HyenaConfig):
        super().__init__()
        self.c = c
        f, nd = c.filter_order, c.order * c.d_model
        self.ffn = nn.ModuleList(
            [nn.Linear(c.filter_emb, f), nn.Linear(f, f), nn.Linear(f, f), nn.Linear(f, nd, bias=False)]
        )
        self.freq = nn.Parameter(torch.full((f,), c.filter_freq))  # sin(freq * .), one vector for all three
        self.bias = nn.Parameter(torch.randn(c.order, c.d_model))  # b^i, the skip term

    def positions(self, t: torch.Tensor) -> torch.Tensor:
        """PosEmb: t (L,) float64 -> (L, filter_emb) fp32; float64 keeps the phase exact at t ~ 1M."""
        bands = (self.c.filter_emb - 1) // 2
        f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64, device=t.device)  # as the official code
        phase = 2 * math.pi * t[:, None] * f / self.c.l_max  # (L, bands)
        return torch.cat([t[:, None] / self.c.l_max, phase.cos(), phase.sin()], dim=1).float()

    def forward(self, start: int, length: int) -> torch.Tensor:
        """Taps at positions start .. start+length-1: (length, N, D) in fp32 whatever the weights' dtype."""
        c = self.c
        t = torch.arange(start, start + length, dtype=torch.float64, device=self.freq.device)  # (L,)
        with torch.autocast(t.device.type, enabled=False):
            a = self.positions(t)  # (L, E)
            for layer in self.ffn[:-1]:
                a = torch.sin(self.freq.float() * F.linear(a, layer.weight.float(), layer.bias.float()))  # (L, F)
            a = F.linear(a, self.ffn[-1].weight.float()).view(length, c.order, c.d_model)  # (L, N, D)
            rate = math.log(1 / c.decay_target)
            alpha = torch.linspace(rate / c.decay_slow, rate / c.decay_fast, c.d_model, device=t.device)  # (D,)
            window = torch.exp(-alpha * (t[:, None] / c.l_max).float())  # (L, D)
        return a * window[:, None, :]

    def flops_per_position(self) -> int:
        c, f = self.c, self.c.filter_order
        return linear_flops(c.filter_emb, f) + 2 * linear_flops(f, f) + linear_flops(f, c.order * c.d_model)


# --- the state ------------------------------------------------------------------------------------


class HyenaCache:
    """A block's state after `length` tokens, updated in place (a state passed to `forward` or `step`
    is consumed), with room for `capacity` tokens (doubling when full, like the KV cache):

        window: (B, K-1, (N+1) D)  the short convolution's last K-1 inputs
        z:      (B, capacity, N, D) the inputs of each long convolution, first `length` valid
        taps:   (capacity, N, D)    the filter, time-reversed and right-aligned: taps[capacity-1-s] =
                                    h(s), so the taps a step at position t needs, h(t) .. h(0), are
                                    one slice; one copy for the whole batch
    all three in the model's dtype (rounded, like a KV cache).
    """

    def __init__(self, window: torch.Tensor, z: torch.Tensor, taps: torch.Tensor, length: int):
        self.window, self.z, self.taps, self.length = window, z, taps, length

    @classmethod
    def empty(cls, batch, c: HyenaConfig, capacity, device, dtype) -> "HyenaCache":
        window = torch.zeros(batch, c.short_conv - 1, (c.order + 1) * c.d_model, device=device, dtype=dtype)
        z = torch.empty(batch, capacity, c.order, c.d_model, device=device, dtype=dtype)
        return cls(window, z, torch.empty(capacity, c.order, c.d_model, device=device, dtype=dtype), 0)

    @property
    def capacity(self) -> int:
        return self.z.shape[1]

    def _grow(self, capacity: int) -> None:
        n = self.length
        z = self.z.new_empty(self.z.shape[0], capacity, *self.z.shape[2:])
        taps = self.taps.new_empty(capacity, *self.taps.shape[1:])
        z[:, :n] = self.z[:, :n]
        taps[capacity - n :] = self.taps[self.capacity - n :]
        self.z, self.taps = z, taps

    def _reserve(self, end: int) -> None:
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))

    def history(self) -> torch.Tensor:
        """(B, length, N, D): every input of each long convolution so far."""
        return self.z[:, : self.length]

    def filter_taps(self) -> torch.Tensor:
        """(length, N, D): h(0 .. length-1) in time order."""
        return self.taps[self.capacity - self.length :].flip(0)

    def append(self, z: torch.Tensor, taps: torch.Tensor) -> None:
        """z: (B, T, N, D) the inputs of T more tokens; taps: (T, N, D) h at their positions."""
        start, end = self.length, self.length + z.shape[1]
        self._reserve(end)
        C = self.capacity
        self.z[:, start:end] = z
        self.taps[C - end : C - start] = taps.flip(0)
        self.length = end

    def open_slot(self, tap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Room for token t = length, whose filter tap h(t) (N, D) is stored; returns the taps aligned
        with the history, h(t) .. h(0): (t + 1, N, D), and the history (B, t, N, D) (see `hyena_step`)."""
        t = self.length
        self._reserve(t + 1)
        C = self.capacity
        self.taps[C - 1 - t] = tap
        return self.taps[C - 1 - t :], self.z[:, :t]

    def fill_slot(self, z: torch.Tensor) -> None:
        """Token t's input of each long convolution (B, N, D); the cache then holds t + 1 tokens."""
        self.z[:, self.length] = z
        self.length += 1

    def fill_random(self, length: int, headroom: int = 0) -> None:
        """Extend to `length` tokens of random inputs and taps, with room for `headroom` more: for
        decode timing at long contexts, whose cost depends on the history's size, not its values."""
        self._reserve(length + headroom)
        C = self.capacity
        self.z[:, self.length : length].normal_()
        self.taps[C - length : C - self.length].normal_()
        self.length = max(self.length, length)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled part of the state."""
        return self.window, self.history(), self.taps[self.capacity - self.length :]


# --- the block ------------------------------------------------------------------------------------


class HyenaOperator(nn.Module):
    """in_proj -> short causal conv -> (v, x^1 .. x^N) -> the recurrence with implicit filters -> out_proj."""

    def __init__(self, c: HyenaConfig):
        super().__init__()
        self.c = c
        width = (c.order + 1) * c.d_model
        self.in_proj = nn.Linear(c.d_model, width)
        self.short_conv = CausalConv1d(width, c.short_conv)
        self.filter = HyenaFilter(c)
        self.out_proj = nn.Linear(c.d_model, c.d_model)

    op = staticmethod(hyena_fft)  # the long-convolution op; a backend may swap in another with its contract

    def _split(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., (N+1) D) -> v (..., D), x (..., N, D)."""
        v, x = q.split([self.c.d_model, self.c.order * self.c.d_model], dim=-1)
        return v, x.unflatten(-1, (self.c.order, self.c.d_model))

    def forward(self, u: torch.Tensor, cache: HyenaCache | None) -> tuple[torch.Tensor, HyenaCache]:
        """u: (B, T, d_model); cache: the state after the tokens before u, or None."""
        T = u.shape[1]
        q, window = self.short_conv(self.in_proj(u), cache.window if cache is not None else None)  # (B, T, (N+1) D)
        v, x = self._split(q)  # (B, T, D), (B, T, N, D)
        S = cache.length if cache is not None else 0
        taps = self.filter(S, T)  # (T, N, D) h at the new positions
        if S:
            y, z = self.op(v, x, torch.cat([cache.filter_taps(), taps]), self.filter.bias, cache.history())
        else:
            y, z = self.op(v, x, taps, self.filter.bias)  # (B, T, D), (B, T, N, D)
        if cache is None:
            cache = HyenaCache(window, z, taps.detach().flip(0).to(z.dtype), T)
        else:
            cache.window = window
            cache.append(z[:, S:], taps.detach())
        return self.out_proj(y), cache

    def step(self, u: torch.Tensor, cache: HyenaCache) -> tuple[torch.Tensor, HyenaCache]:
        """u: (B, d_model) -> (B, d_model), one token at position cache.length."""
        q, window = self.short_conv.step(self.in_proj(u), cache.window)  # (B, (N+1) D)
        v, x = self._split(q)
        taps, history = cache.open_slot(self.filter(cache.length, 1)[0].detach())
        y, z = hyena_step(v, x, taps, self.filter.bias, history)
        cache.fill_slot(z)
        cache.window.copy_(window)
        return self.out_proj(y), cache

    def init_state(self, batch, device, dtype, capacity=0):
        return HyenaCache.empty(batch, self.c, capacity, device, dtype)

    def state_bytes(self, batch, context, dtype):
        """Short-conv window and the history of each long convolution (model dtype), plus the filter
        taps h(0 .. context-1) (one copy for the batch): (B + 1) x context x N x D values that grow with
        the context like a KV cache."""
        c, elt = self.c, torch.finfo(dtype).bits // 8
        window = batch * (c.short_conv - 1) * (c.order + 1) * c.d_model * elt
        return window + (batch + 1) * context * c.order * c.d_model * elt

    def _dense_flops(self):
        """Per-token FLOPs that do not depend on the position: projections, short conv, gates, filter."""
        c, width = self.c, (self.c.order + 1) * self.c.d_model
        proj = linear_flops(c.d_model, width) + linear_flops(c.d_model, c.d_model)
        return proj + self.short_conv.flops_per_token() + 4 * c.order * c.d_model + self.filter.flops_per_position()

    def flops_per_token(self, context):
        """A decode step at position `context`: causal sums over context + 1 inputs, the filter at one position."""
        return self._dense_flops() + 2 * self.c.order * self.c.d_model * (context + 1)

    def prefill_flops(self, length):
        """A one-segment forward over `length` tokens: FFT convolutions (module docstring)."""
        c, n = self.c, fft_size(2 * length - 1)
        fft = c.order * c.d_model * (7.5 * n * math.log2(n) + 6 * (n // 2 + 1))
        return length * self._dense_flops() + int(fft)


class Hyena(LanguageModel):
    """Hyena operator + GPT-style MLP (fc2(gelu(fc1 x)), with biases) per layer."""

    def __init__(self, c: HyenaConfig):
        blocks = uniform_blocks(
            c, mixer=lambda i: HyenaOperator(c),
            mlp=lambda i: GeluMLP(c.d_model, c.d_hidden or 2 * c.d_model, bias=True, approximate="tanh"),
        )
        super().__init__(c, blocks)

    def prefill_flops(self, length):
        """FFT convolutions cost O(L log L), not a per-token cost at the mean position (base class)."""
        head = length * linear_flops(self.config.d_model, self.config.vocab_size)
        per_layer = (layer.mixer.prefill_flops(length) + length * layer.mlp.flops_per_token() for layer in self.layers)
        return head + sum(per_layer)

    def activation_bytes(self, batch, tokens, dtype):
        """Added to the generic bound: one long convolution's FFT buffers, fp32 and complex64 of n ~ 2
        tokens (input, its transform, the product, the inverse: ~32 B T D bytes), the filter (FFN
        output, window, windowed taps and their transform: ~(16 N + 4) T D, shared by the batch) and
        the stacked inputs of every long convolution (4 B T N D). On a CPU (tiny, B 1 and 4, T 64K and
        256K) a layer's measured peak stayed 20-35 % below this estimate plus its state."""
        c = self.config
        fft = (32 * batch + 16 * c.order + 4) * tokens * c.d_model + 4 * batch * tokens * c.order * c.d_model
        return super().activation_bytes(batch, tokens, dtype) + fft


# Poli et al. 2023, Hyena-153M of the Pile experiments (HazyResearch/safari,
# configs/experiment/pile/hyena.yaml): width 864, depth 18, MLP 2 x width, filter FFN width 64 and depth 4,
# PosEmb width 33, sine frequency 14, short conv 3, trained at 2048 tokens. `130m` keeps all of that at
# width 768 (the other altbench 130m sizes'), with depth 19 to match them: 130,673,088 parameters (depth 18
# would give 125,827,968; the 153M shape itself gives 153,462,816, see tests/test_hyena.py).
# `tiny` (width 64, 2 layers: CPU tests and the probes) takes the filter of Zoology's Hyena
# (arXiv:2312.04927, zoology/mixers/hyena.py defaults: PosEmb width 3, sine frequency 1), with positions
# normalised by 256, the probes' longest training length. On a CPU, MQAR (64 tokens, 4 pairs, vocab
# 256, 400 steps at lr 3e-3) left the paper's language-model filter (width 33, frequency 14) near chance
# (loss 4.80, ln 128 = 4.85; accuracy 0.006) while this one learned (loss 4.15, accuracy 0.10;
# Mamba tiny: 4.13, 0.09).
SIZES = {
    "tiny": HyenaConfig(vocab_size=256, d_model=64, n_layers=2, l_max=256, filter_emb=3, filter_freq=1.0),
    "130m": HyenaConfig(d_model=768, n_layers=19),
}
MODEL = Hyena
