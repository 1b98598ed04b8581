"""TTT-Linear's whole inner mini-batches in the dual form, one Triton program per (batch, head)
(Sun et al. 2024, arXiv:2407.04620, sec. 2.5). Forward only (prefill and inference).

Contract of `altbench.models.ttt.ttt_whole` for a linear f (weights (W (B, H, F, F), c (B, H, F))),
which is this op's reference (its plain PyTorch form). Per mini-batch of b tokens, keys K, queries Q,
targets Y = v - k, learning rates lr, token scales s, from W_0, c_0:

    Z = K W_0 + c_0,   G = dloss/dZ = LN backward of 1/2 ||LN(Z) - Y||^2       (b, F)
    Z_q = Q W_0 + c_0 - (E * (Q K^T + 1)) G,   E_ij = s_i lr_j for j <= i, else 0
    W_0 <- W_0 - s_{b-1} (lr * K)^T G,         c_0 <- c_0 - s_{b-1} sum_j lr_j G_j

The program keeps W (F x F, fp32) and c in registers across the sequence's mini-batches and reads
q, k, target, lr once, writing Z_q once: the op moves the minimum, and its time is the chain of
N = T / b dependent mini-batches (each four b x F x F-sized dots). Dots run in tf32 on a GPU (fp32
in Triton's interpreter), so on a GPU the result differs from the fp32 reference at ~1e-3 relative.
Only B x H programs run: at batch 1 and 12 heads, 12 SMs work, as in the paper's own kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ttt_linear_whole_kernel(Q, K, Y, LR, S, LN_W, LN_B, W, C, Z, W_OUT, C_OUT, N, H, eps,
                             BS: tl.constexpr, F: tl.constexpr):
    bh = tl.program_id(0)
    h = bh % H
    rows = tl.arange(0, BS)
    cols = tl.arange(0, F)
    w = tl.load(W + bh * F * F + cols[:, None] * F + cols[None, :])  # (F, F) fp32
    c = tl.load(C + bh * F + cols)  # (F,)
    gamma = tl.load(LN_W + h * F + cols)
    beta = tl.load(LN_B + h * F + cols)
    s = tl.load(S + rows)  # (BS,)
    s_last = tl.load(S + BS - 1)
    causal = rows[:, None] >= rows[None, :]  # (BS, BS)
    for n in range(N):
        tokens = bh * N * BS + n * BS + rows  # (BS,)
        offs = tokens[:, None] * F + cols[None, :]  # (BS, F)
        q = tl.load(Q + offs).to(tl.float32)
        k = tl.load(K + offs).to(tl.float32)
        y = tl.load(Y + offs).to(tl.float32)
        lr = tl.load(LR + tokens).to(tl.float32)

        z = tl.dot(k, w) + c[None, :]  # (BS, F)
        mu = tl.sum(z, 1) / F
        zc = z - mu[:, None]
        rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 1) / F + eps)
        z_hat = zc * rstd[:, None]
        g_hat = (z_hat * gamma[None, :] + beta[None, :] - y) * gamma[None, :]
        g = (g_hat - (tl.sum(g_hat, 1) / F)[:, None] - z_hat * (tl.sum(g_hat * z_hat, 1) / F)[:, None]) * rstd[:, None]

        e = tl.where(causal, s[:, None] * lr[None, :], 0.0)  # (BS, BS)
        a = (tl.dot(q, tl.trans(k)) + 1.0) * e
        zq = tl.dot(q, w) + c[None, :] - tl.dot(a, g)
        tl.store(Z + offs, zq)

        lr_last = s_last * lr  # (BS,)
        w = w - tl.dot(tl.trans(k * lr_last[:, None]), g)
        c = c - tl.sum(g * lr_last[:, None], 0)
    tl.store(W_OUT + bh * F * F + cols[:, None] * F + cols[None, :], w)
    tl.store(C_OUT + bh * F + cols, c)


def ttt_linear_whole(weights, q, k, target, lr, scale, ln_weight, ln_bias, eps, mini_batch, dual=True):
    """`ttt_whole`'s contract for a linear f, in one kernel launch (forward only: no autograd)."""
    W0, c0 = weights
    B, H, T, F = q.shape
    N = T // mini_batch
    assert len(weights) == 2, "the Triton TTT kernel runs a linear inner model only"
    assert T == N * mini_batch and mini_batch >= 16 and F >= 16 and F & (F - 1) == 0 and mini_batch & (mini_batch - 1) == 0, \
        f"whole mini-batches of a power of two >= 16 tokens, head width a power of two >= 16 (b {mini_batch}, F {F})"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, target, lr, W0, c0, ln_weight, ln_bias)):
        raise RuntimeError("the Triton TTT-Linear kernel is forward-only; train TTT-Linear on backend torch")
    q, k, target = (t.contiguous() for t in (q, k, target))
    lr, scale = lr.float().contiguous(), scale.float().contiguous()
    ln_weight, ln_bias = ln_weight.float().contiguous(), ln_bias.float().contiguous()
    W0, c0 = W0.float().contiguous(), c0.float().contiguous()
    z = torch.empty(B, H, T, F, device=q.device, dtype=torch.float32)
    W1, c1 = torch.empty_like(W0), torch.empty_like(c0)
    _ttt_linear_whole_kernel[(B * H,)](q, k, target, lr, scale, ln_weight, ln_bias, W0, c0, z, W1, c1, N, H, eps,
                                       BS=mini_batch, F=F, num_warps=4)
    return z.to(q.dtype), (W1.to(weights[0].dtype), c1.to(weights[1].dtype))
