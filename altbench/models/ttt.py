"""TTT: test-time training layers (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with
Expressive Hidden States", arXiv:2407.04620).

The hidden state is the weights W of a small model f, one per head, trained on the sequence as it is
read: one gradient step of a self-supervised reconstruction loss per token (sec. 2.1-2.3, 2.7),

    f(x; W) = x + LN(g(x; W))        g linear (TTT-Linear) or x -> gelu(x W1 + b1) W2 + b2, 4F wide (TTT-MLP)
    loss(W; t) = 1/2 || f(k_t; W) - v_t ||^2                 k_t = x_t theta_K,  v_t = x_t theta_V
    W_t = W_{t-1} - eta_t grad loss(W_{t-1}; t)
    z_t = f(q_t; W_t)                                        q_t = x_t theta_Q: read out with the updated W

LN is a per-head LayerNorm whose scale and shift are outer-loop parameters (not trained inside). The
inner learning rate is learned per token and head (sec. 2.7):

    eta_t = s_i lr_t,   lr_t = base_lr sigmoid(x_t theta_lr + b_lr) / F,   s_i = max(1/(i+1) + delta_i, 0)

with i = t mod b the token's place in its mini-batch and delta learned (zero at init, so s_0 = 1).

Mini-batch TTT (sec. 2.4) takes every gradient of a mini-batch of b tokens at the weights W_0 the
mini-batch started from, so that the b gradients can be computed in parallel:

    W_i = W_0 - s_i sum_{j<=i} lr_j grad loss(W_0; j),    z_i = f(q_i; W_i)        i, j in 0..b-1

At b = 1 this is the per-token loop above. The dual form (sec. 2.5) never materialises W_i: with
g(x) = x W + c, keys X, query inputs Xq and G_j = dloss_j/dZ at W_0 (one LayerNorm backward),

    Z_q = Xq W + c - (E * tril(Xq X^T + 1)) G,      E_ij = s_i lr_j
    W_b = W_0 - s_{b-1} (lr * X)^T G,               c_b = c_0 - s_{b-1} sum_j lr_j G_j

and for TTT-MLP the same per layer, with the gelu outputs as the second layer's inputs and G
backpropagated through W2 and the gelu at W_0.

Four forms, one contract (q, k, v: (B, T, H, F); lr: (B, T, H); scale s: (b,); state as below),
each returning (z = f(q; W_t): (B, T, H, F) in v's dtype, state):
  `ttt_ref`         the plain loop over tokens, the gradient taken by autograd: the ground truth
  `ttt_mini_batch`  mini-batch by mini-batch, dual form (default) or primal (per-token weights)
  `ttt_step`        one token (q, k, v: (B, H, F), lr: (B, H))
Which equalities hold (up to rounding; tests/test_ttt.py checks each):
  - all four compute mini-batch TTT with the same b, so they agree for every b; the per-token
    (online gradient descent) loop is the case b = 1 only — at b > 1 the outputs differ, by design;
  - dual == primal;
  - `ttt_step` token by token == `ttt_mini_batch` over the same tokens, and forward over segments ==
    one forward, because the state carries an open mini-batch exactly: the state is
        (W_0: the inner weights the open mini-batch started from, per layer W (B, H, in, out), c (B, H, out);
         A: sum_{j<i} lr_j grad loss(W_0; j) over the tokens already read in it, same shapes; zero at i = 0;
         i: how many tokens of it were read, a Python int in 0..b-1)
    so a step at place i reads out W_i = W_0 - s_i (A + lr_i grad loss(W_0; i)), exactly what the
    mini-batch form gives that token, and the b-th token closes the mini-batch (W_0 <- W_{b-1}, A <- 0).
    Decode is therefore honest: a step costs what the mini-batch form spends per token, no more, no less.
Inner weights and A are fp32 (fp64 stays fp64 in tests) whatever the model's dtype.

The layer around f (read from the official implementation, github.com/test-time-training/ttt-lm-pytorch):
q, k, v projections d -> d (H heads of F = d / H), RoPE on q and k at positions t mod b, the learned lr
above, f per head, a LayerNorm over the width, o_proj d -> d. The block is the paper's Transformer
backbone, "TTT-Linear (T)" (sec. 3): h = x + TTT(RMSNorm(x)), y = h + SwiGLU(RMSNorm(h)). The Mamba
backbone ("(M)": a causal conv before the layer, shared q/k through two convs, a gelu gate) is not built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.errors import UserError
from altbench.models.base import LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import RotaryEmbedding, SwiGLU, apply_rotary
from altbench.models.compose import pattern_blocks

INNER = {"linear": 1, "mlp": 4}  # inner model -> hidden width of g in units of F (1: no hidden layer)


@dataclass
class TTTConfig(LMConfig):
    vocab_size: int = 32000  # Llama 2 tokenizer, as the paper's models
    inner: str = "linear"  # "linear" (TTT-Linear) or "mlp" (TTT-MLP: two layers, hidden 4F, gelu)
    n_heads: int = 12  # H; each head trains its own f of width F = d_model / H
    d_hidden: int = 2048  # SwiGLU width of the block's MLP
    mini_batch: int = 16  # b, the inner mini-batch (sec. 2.4: b = 16 trades quality for parallelism)
    base_lr: float = 1.0  # eta's ceiling x F: 1.0 for TTT-Linear, 0.1 for TTT-MLP (official ttt-lm-jax)
    inner_init_std: float = 0.02  # W of f at the sequence start ~ N(0, 0.02), c = 0 (a learned parameter)
    inner_norm_eps: float = 1e-6  # LN inside f and the LayerNorm after the layer
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6  # the block's RMSNorms

    def __post_init__(self):
        if self.inner not in INNER:
            raise UserError(f"ttt inner = '{self.inner}' is not an inner model; use one of: {', '.join(INNER)}")
        if self.d_model % self.n_heads:
            raise UserError(f"ttt d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.mini_batch < 1:
            raise UserError(f"ttt mini_batch = {self.mini_batch}; give a mini-batch of at least 1 token")


# --- the inner model f and its gradient -----------------------------------------------------------
# Inner weights are a tuple (W1, c1[, W2, c2]): W (B, H, in, out), c (B, H, out); tokens (B, H, n, in).


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _layer_norm(z, weight, bias, eps):
    """Per-head LayerNorm: z (B, H, n, F), weight and bias (H, F)."""
    return F.layer_norm(z, z.shape[-1:], eps=eps) * weight[:, None] + bias[:, None]


def _gelu_grad(z):
    """d gelu(z) / dz for gelu in its tanh form."""
    c = 0.7978845608028654  # sqrt(2 / pi)
    u = torch.tanh(c * (z + 0.044715 * z**3))
    return 0.5 * (1 + u) + 0.5 * z * (1 - u * u) * c * (1 + 3 * 0.044715 * z * z)


def _g_keys(weights, x):
    """g(x; W) on keys, keeping each layer's input and pre-activation: [(X_1, Z_1), ...]."""
    layers = []
    for l in range(len(weights) // 2):
        if l:
            x = F.gelu(layers[-1][1], approximate="tanh")
        z = x @ weights[2 * l] + weights[2 * l + 1][:, :, None]  # (B, H, n, out)
        layers.append((x, z))
    return layers


def _loss_grads(weights, layers, target, ln_weight, ln_bias, eps):
    """G_l = dloss/dZ_l per token, loss = 1/2 ||LN(Z_last) - target||^2 (target = v - k: f's residual)."""
    z = layers[-1][1]
    mu = z.mean(-1, keepdim=True)
    std = torch.sqrt(z.var(-1, keepdim=True, unbiased=False) + eps)
    z_hat = (z - mu) / std
    g_hat = (z_hat * ln_weight[:, None] + ln_bias[:, None] - target) * ln_weight[:, None]  # dloss/dz_hat
    g = (g_hat - g_hat.mean(-1, keepdim=True) - z_hat * (g_hat * z_hat).mean(-1, keepdim=True)) / std
    grads = [g]
    for l in range(len(layers) - 1, 0, -1):
        g = (g @ weights[2 * l].transpose(-1, -2)) * _gelu_grad(layers[l - 1][1])
        grads.insert(0, g)
    return grads


def _weight_grads(layers, grads, lr):
    """sum_j lr_j grad loss(W_0; j) over the n tokens, per weight: (X^T (lr G), sum_j lr_j G_j)."""
    out = []
    for (x, _), g in zip(layers, grads):
        lg = lr[..., None] * g  # (B, H, n, out)
        out += [x.transpose(-1, -2) @ lg, lg.sum(2)]
    return tuple(out)


def _f_token(weights, x, ln_weight, ln_bias, eps):
    """f(x; W) for one token per (batch, head): x (B, H, F)."""
    h = x
    for l in range(len(weights) // 2):
        if l:
            h = F.gelu(h, approximate="tanh")
        h = torch.einsum("bhi,bhio->bho", h, weights[2 * l]) + weights[2 * l + 1]
    return x + F.layer_norm(h, h.shape[-1:], eps=eps) * ln_weight + ln_bias


# --- the forms ------------------------------------------------------------------------------------


def ttt_ref(q, k, v, lr, scale, ln_weight, ln_bias, state, mini_batch=16, eps=1e-6):
    """Mini-batch TTT token by token, as the paper writes it; the gradient of the loss by autograd.

    q, k, v: (B, T, H, F)   lr: (B, T, H)   scale: (b,) = s   ln_weight, ln_bias: (H, F)
    state: (W_0 weights, A, i) as in the module docstring
    returns z: (B, T, H, F) in v's dtype, the state after the last token
    At mini_batch = 1 this is online gradient descent: W_t = W_{t-1} - s_0 lr_t grad loss(W_{t-1}; t).
    """
    dtype, cd = v.dtype, _compute_dtype(v)
    q, k, v, lr, ln_weight, ln_bias = (t.to(cd) for t in (q, k, v, lr, ln_weight, ln_bias))
    weights, acc, i = state
    outputs = []
    with torch.enable_grad():
        for t in range(q.shape[1]):
            if not all(w.requires_grad for w in weights):  # autograd.grad needs W_0 in a graph
                weights = tuple(w.detach().requires_grad_() if not w.requires_grad else w for w in weights)
            loss = 0.5 * (_f_token(weights, k[:, t], ln_weight, ln_bias, eps) - v[:, t]).pow(2).sum()
            grads = torch.autograd.grad(loss, weights, create_graph=True)  # per (batch, head): its own W
            lr_t = lr[:, t]  # (B, H)
            acc = tuple(a + lr_t.view(*lr_t.shape, *[1] * (g.dim() - 2)) * g for a, g in zip(acc, grads))
            current = tuple(w - scale[i] * a for w, a in zip(weights, acc))  # W_i
            outputs.append(_f_token(current, q[:, t], ln_weight, ln_bias, eps))
            i += 1
            if i == mini_batch:
                weights, acc, i = current, tuple(torch.zeros_like(a) for a in acc), 0
    return torch.stack(outputs, 1).to(dtype), (weights, acc, i)


def _open_dual(weights, acc, q, k, target, lr, scale, ln_weight, ln_bias, eps):
    """n tokens of one mini-batch, dual form: tokens (B, H, n, F), lr (B, H, n), scale (n,) their s_i,
    acc the open mini-batch's A (None: zero). Returns the pre-LN output of g, Z_q (B, H, n, F), and
    A plus this block's lr-weighted gradient sum."""
    layers = _g_keys(weights, k)
    grads = _loss_grads(weights, layers, target, ln_weight, ln_bias, eps)
    E = torch.tril(scale[:, None] * lr[:, :, None, :])  # (B, H, n, n): s_i lr_j for j <= i
    x = q
    for l, ((keys, _), g) in enumerate(zip(layers, grads)):
        if l:
            x = F.gelu(z, approximate="tanh")
        z = x @ weights[2 * l] + weights[2 * l + 1][:, :, None] - (E * (x @ keys.transpose(-1, -2) + 1)) @ g
        if acc is not None:  # what the tokens before this block in its mini-batch already learned
            z = z - scale[:, None] * (x @ acc[2 * l] + acc[2 * l + 1][:, :, None])
    sums = _weight_grads(layers, grads, lr)
    return z, sums if acc is None else tuple(a + s for a, s in zip(acc, sums))


def _open_primal(weights, acc, q, k, target, lr, scale, ln_weight, ln_bias, eps):
    """`_open_dual`'s contract with every token's weights W_i materialised: (B, H, n, in, out)."""
    layers = _g_keys(weights, k)
    grads = _loss_grads(weights, layers, target, ln_weight, ln_bias, eps)
    x, sums = q, []
    for l, ((keys, _), g) in enumerate(zip(layers, grads)):
        dW = torch.einsum("bhn,bhni,bhno->bhnio", lr, keys, g).cumsum(2)  # (B, H, n, in, out)
        dc = (lr[..., None] * g).cumsum(2)  # (B, H, n, out)
        if acc is not None:
            dW, dc = dW + acc[2 * l][:, :, None], dc + acc[2 * l + 1][:, :, None]
        W_i = weights[2 * l][:, :, None] - scale[:, None, None] * dW
        c_i = weights[2 * l + 1][:, :, None] - scale[:, None] * dc
        if l:
            x = F.gelu(z, approximate="tanh")
        z = torch.einsum("bhni,bhnio->bhno", x, W_i) + c_i
        sums += [dW[:, :, -1], dc[:, :, -1]]
    return z, tuple(sums)


def ttt_whole(weights, q, k, target, lr, scale, ln_weight, ln_bias, eps, mini_batch, dual=True):
    """N whole mini-batches from a closed one (A = 0): tokens (B, H, N b, F), lr (B, H, N b), scale (b,).
    Returns g's output before LN, Z_q (B, H, N b, F), and W_0 after the last. One mini-batch at a time:
    the gradients inside a mini-batch are taken at its W_0, which the one before produces."""
    block = _open_dual if dual else _open_primal
    outputs = []
    for start in range(0, q.shape[2], mini_batch):
        part = slice(start, start + mini_batch)
        z, acc = block(weights, None, q[:, :, part], k[:, :, part], target[:, :, part], lr[:, :, part], scale,
                       ln_weight, ln_bias, eps)
        outputs.append(z)
        weights = tuple(w - scale[-1] * a for w, a in zip(weights, acc))  # the mini-batch closes: W_0 <- W_{b-1}
    return torch.cat(outputs, 2), weights


def ttt_mini_batch(q, k, v, lr, scale, ln_weight, ln_bias, state, mini_batch=16, eps=1e-6, dual=True, whole=ttt_whole):
    """Same contract as `ttt_ref`, one mini-batch at a time (dual form, or primal with dual=False).
    A segment may start and end inside a mini-batch (the state in the module docstring): it runs as
    the rest of the open mini-batch, whole mini-batches (`whole`: `ttt_whole` or a kernel with its
    contract), and an open tail."""
    dtype, cd = v.dtype, _compute_dtype(v)
    q, k, v = (t.to(cd).transpose(1, 2) for t in (q, k, v))  # (B, H, T, F)
    lr, ln_weight, ln_bias, scale = lr.to(cd).transpose(1, 2), ln_weight.to(cd), ln_bias.to(cd), scale.to(cd)
    target = v - k  # f(k) = k + LN(g(k)) ~ v
    weights, acc, i = state
    T, b = q.shape[2], mini_batch
    head = min(T, (b - i) % b)  # tokens that the open mini-batch still takes
    n_whole = (T - head) // b * b
    block = _open_dual if dual else _open_primal
    outputs = []
    pieces = (("open", 0, head), ("whole", head, n_whole), ("open", head + n_whole, T - head - n_whole))
    for kind, start, n in pieces:
        if n == 0:
            continue
        part = slice(start, start + n)
        if kind == "whole":
            z, weights = whole(weights, q[:, :, part], k[:, :, part], target[:, :, part], lr[:, :, part], scale,
                               ln_weight, ln_bias, eps, b, dual)
        else:
            z, acc = block(weights, acc if i else None, q[:, :, part], k[:, :, part], target[:, :, part],
                           lr[:, :, part], scale[i : i + n], ln_weight, ln_bias, eps)
            i += n
            if i == b:  # the mini-batch closes: W_0 <- W_{b-1}
                weights, i = tuple(w - scale[-1] * a for w, a in zip(weights, acc)), 0
        outputs.append(z)
    z = q + _layer_norm(torch.cat(outputs, 2), ln_weight, ln_bias, eps)  # (B, H, T, F)
    acc = acc if i else tuple(torch.zeros_like(w) for w in weights)
    return z.transpose(1, 2).to(dtype), (weights, acc, i)


def ttt_mini_batch_triton(*args, **kwargs):
    """`ttt_mini_batch` with the whole mini-batches of a linear f in altbench's Triton kernel
    (kernels/ttt_linear.py, forward only); open mini-batches at a segment's ends stay in PyTorch."""
    from altbench.kernels.ttt_linear import ttt_linear_whole

    return ttt_mini_batch(*args, whole=ttt_linear_whole, **kwargs)


def ttt_step(q, k, v, lr, scale, ln_weight, ln_bias, state, mini_batch=16, eps=1e-6):
    """One token: q, k, v (B, H, F); lr (B, H) -> z (B, H, F), state. Adds the token's gradient at the
    open mini-batch's W_0 to A, reads out with W_i = W_0 - s_i A, and closes the mini-batch at i = b-1."""
    dtype, cd = v.dtype, _compute_dtype(v)
    q, k, v = (t.to(cd)[:, :, None] for t in (q, k, v))  # (B, H, 1, F)
    lr, ln_weight, ln_bias = lr.to(cd)[:, :, None], ln_weight.to(cd), ln_bias.to(cd)
    weights, acc, i = state
    layers = _g_keys(weights, k)
    grads = _loss_grads(weights, layers, v - k, ln_weight, ln_bias, eps)
    acc = tuple(a + s for a, s in zip(acc, _weight_grads(layers, grads, lr)))
    current = tuple(w - scale[i].to(cd) * a for w, a in zip(weights, acc))  # W_i
    x = q
    for l in range(len(current) // 2):
        if l:
            x = F.gelu(x, approximate="tanh")
        x = x @ current[2 * l] + current[2 * l + 1][:, :, None]
    z = (q + _layer_norm(x, ln_weight, ln_bias, eps))[:, :, 0]
    if i + 1 == mini_batch:
        return z.to(dtype), (current, tuple(torch.zeros_like(a) for a in acc), 0)
    return z.to(dtype), (weights, acc, i + 1)


# --- the layer ------------------------------------------------------------------------------------


class TTTMixer(nn.Module):
    """q, k, v (RoPE at t mod b on q, k), lr -> f trained per head -> LayerNorm over the width -> o_proj."""

    def __init__(self, c: TTTConfig):
        super().__init__()
        self.c = c
        self.n_heads, self.head_dim = c.n_heads, c.d_model // c.n_heads
        H, Fh, d = self.n_heads, self.head_dim, c.d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.lr_weight = nn.Parameter(torch.randn(H, d) * 0.02)  # theta_lr, one row per head
        self.lr_bias = nn.Parameter(torch.zeros(H))
        self.scale_offset = nn.Parameter(torch.zeros(c.mini_batch))  # delta_i in s_i = max(1/(i+1) + delta_i, 0)
        self.inner_norm_weight = nn.Parameter(torch.ones(H, Fh))  # LN inside f, per head
        self.inner_norm_bias = nn.Parameter(torch.zeros(H, Fh))
        widths = [Fh, Fh] if INNER[c.inner] == 1 else [Fh, INNER[c.inner] * Fh, Fh]
        self.inner_shapes = list(zip(widths[:-1], widths[1:]))  # (in, out) per layer of g
        for l, (n_in, n_out) in enumerate(self.inner_shapes, 1):  # W_0 of f at the sequence start, learned
            setattr(self, f"W{l}", nn.Parameter(torch.randn(H, n_in, n_out) * c.inner_init_std))
            setattr(self, f"c{l}", nn.Parameter(torch.zeros(H, n_out)))
        self.post_norm = nn.LayerNorm(d, eps=c.inner_norm_eps)
        self.rotary = RotaryEmbedding(Fh, c.rope_theta)
        self.mini_batch = ttt_mini_batch  # `use_backend` swaps in a kernel with the same contract

    def inner_init(self) -> tuple[torch.Tensor, ...]:
        """(W1, c1[, W2, c2]): f's weights at a sequence start, (H, in, out) and (H, out)."""
        return tuple(getattr(self, f"{name}{l}") for l in range(1, len(self.inner_shapes) + 1) for name in "Wc")

    def token_scale(self) -> torch.Tensor:
        """s: (b,), s_i = max(1/(i+1) + delta_i, 0)."""
        i = torch.arange(1, self.c.mini_batch + 1, device=self.scale_offset.device, dtype=torch.float32)
        return torch.clamp_min(1.0 / i + self.scale_offset.float(), 0.0)

    def learning_rate(self, x):
        """x: (B, T, d) -> lr: (B, T, H) fp32, base_lr sigmoid(x theta_lr + b_lr) / F."""
        logits = torch.einsum("btd,hd->bth", x, self.lr_weight).float() + self.lr_bias.float()
        return self.c.base_lr * torch.sigmoid(logits) / self.head_dim

    def _qkv(self, x, i: int):
        """x: (B, T, d), its first token at place i of a mini-batch -> q, k (rotated), v: (B, T, H, F)."""
        B, T, _ = x.shape
        b = self.c.mini_batch
        q, k, v = (p(x).view(B, T, self.n_heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = self.rotary(0, b, x.dtype)  # (b, F): RoPE positions are places in the mini-batch
        places = (i + torch.arange(T, device=x.device)) % b
        cos, sin = cos[places], sin[places]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _output(self, z):
        """z: (..., H, F) -> (..., d)."""
        return self.o_proj(self.post_norm(z.flatten(-2)))

    def forward(self, x, state):
        """x: (B, T, d); state: (W_0, A, i) (module docstring) or None for a sequence start."""
        state = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        q, k, v = self._qkv(x, state[2])
        z, state = self.mini_batch(q, k, v, self.learning_rate(x), self.token_scale(), self.inner_norm_weight,
                                   self.inner_norm_bias, state, self.c.mini_batch, self.c.inner_norm_eps)
        return self._output(z), state

    def step(self, x, state):
        """x: (B, d) -> (B, d): one token, exactly what `forward` gives it (module docstring)."""
        q, k, v = (t[:, 0] for t in self._qkv(x[:, None], state[2]))  # (B, H, F)
        lr = self.learning_rate(x[:, None])[:, 0]  # (B, H)
        z, state = ttt_step(q, k, v, lr, self.token_scale(), self.inner_norm_weight, self.inner_norm_bias, state,
                            self.c.mini_batch, self.c.inner_norm_eps)
        return self._output(z), state

    def init_state(self, batch, device, dtype, capacity=0):
        """f's learned initial weights for each sequence (fp32, gradients still reach them), A = 0, i = 0."""
        weights = tuple(w.to(_compute_dtype(w))[None].expand(batch, *w.shape) for w in self.inner_init())
        return weights, tuple(torch.zeros_like(w) for w in weights), 0

    def inner_params_per_head(self) -> int:
        return sum(n_in * n_out + n_out for n_in, n_out in self.inner_shapes)

    def state_bytes(self, batch, context, dtype):
        return batch * self.n_heads * 2 * self.inner_params_per_head() * 4  # W_0 and A, fp32 whatever the dtype

    def flops_per_token(self, context):
        """Projections, the lr gate, and f per head in the dual form: for each layer (in, out) of g, the
        key forward, the gradient into W, the query forward (2 in out each) and the b-wide causal
        products Xq X^T and (E * .) G (2 b in + 2 b out), plus backprop through W2 for TTT-MLP."""
        d, b = self.c.d_model, self.c.mini_batch
        inner = sum(6 * n_in * n_out + 2 * b * (n_in + n_out) for n_in, n_out in self.inner_shapes)
        inner += sum(2 * n_in * n_out for n_in, n_out in self.inner_shapes[1:])
        return 4 * linear_flops(d, d) + linear_flops(d, self.n_heads) + self.n_heads * inner


class TTT(LanguageModel):
    """TTT layers in the Transformer backbone: x + TTT(RMSNorm(x)), then + SwiGLU(RMSNorm(.))."""

    def __init__(self, c: TTTConfig):
        blocks = pattern_blocks(
            "T" * c.n_layers,
            mixers={"T": lambda i: TTTMixer(c)},
            mlp=lambda i: SwiGLU(c.d_model, c.d_hidden),
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)


# Sun et al. 2024, appendix C: the paper's sizes follow Mamba's (Gu & Dao 2023) in width and depth, with
# the heads and SwiGLU widths of the official release (ttt-lm-pytorch, TTT_STANDARD_CONFIGS): name ->
# (d_model, n_layers, n_heads, d_hidden). Llama 2 vocabulary (32000), tied embeddings.
PAPER_SIZES = {
    "125m": (768, 12, 12, 2048),
    "350m": (1024, 24, 16, 2736),
    "760m": (1536, 24, 16, 4096),
    "1.3b": (2048, 24, 32, 5504),
}


def sizes(inner: str) -> dict[str, TTTConfig]:
    """The named sizes of TTT-Linear (inner = "linear") or TTT-MLP ("mlp")."""
    base = TTTConfig(inner=inner, base_lr=1.0 if inner == "linear" else 0.1)
    named = {
        "tiny": dataclasses.replace(base, vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_hidden=192),
        **{name: dataclasses.replace(base, d_model=d, n_layers=depth, n_heads=heads, d_hidden=hidden)
           for name, (d, depth, heads, hidden) in PAPER_SIZES.items()},
    }
    # Matched to altbench's transformer 130m (130.6M): its width, depth, heads and GPT-NeoX vocabulary;
    # TTT-MLP's larger f (8 F^2 per head) is paid for by a narrower SwiGLU.
    named["130m"] = dataclasses.replace(base, vocab_size=50280, d_model=768, n_layers=12, n_heads=12,
                                        d_hidden=2304 if inner == "linear" else 2112)
    return named

