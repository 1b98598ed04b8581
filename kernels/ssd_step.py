"""Mamba-2's decode step from in_proj's outputs to the SSM's output in one kernel (Dao & Gu 2024,
arXiv:2405.21060, sec. 7.1 and eq. 1 with A_t = exp(dt_t A_h) I). Per sequence, with xBC the
(x, B, C) channels of in_proj's output and w the conv window of the last K-1 of them:

    xBC'      = silu(sum_{k<K-1} conv_w[:, k] w[k] + conv_w[:, K-1] xBC + conv_b)      conv, silu
    w'        = [w[1:], xBC]                                                            window shift
    dt_h      = max(softplus(dt_h + dt_bias_h), dt_floor)
    h'[h,p,n] = exp(dt_h A_h) h[h,p,n] + dt_h x'[h,p] B'[g(h),n]
    y[h,p]    = sum_n C'[g(h),n] h'[h,p,n] + D_h x'[h,p]

`ssd_conv_step_ref` (altbench.models.mamba2.ssd_conv_step, re-exported here) computes it with
PyTorch ops; under torch.compile that is a kernel for the conv and a reduction kernel for the
state, at least. Here one program owns BP channels of one head of one sequence: it convolves its
x channels and its group's B and C channels (2N of them, recomputed by each program of the group:
4 taps each), takes its head's dt, updates its (BP, N) block of the state in fp32 and writes y.
The window's x channels are shifted by their program, the B and C channels by the first program
of the group. The gated norm and out_proj stay with the compiler and cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from altbench.models.mamba2 import ssd_conv_step as ssd_conv_step_ref  # noqa: F401 - the reference, re-exported

BP = 16  # channels of a head per program: P = 64 gives 4 programs per head


@triton.jit
def _conv_silu(xbc_ptr, win_ptr, win_out_ptr, w_ptr, b_ptr, c, mc, k, s_x, s_w1, s_w2, K: tl.constexpr, SHIFT):
    """silu(conv) of channels c (one sequence's pointers), and, where SHIFT, the window shifted by one."""
    mk = k < K - 1
    m2 = mk[:, None] & mc[None, :]
    window = tl.load(win_ptr + k[:, None] * s_w1 + c[None, :] * s_w2, mask=m2, other=0.0).to(tl.float32)  # (BK, BC)
    taps = tl.load(w_ptr + c[None, :] * K + k[:, None], mask=m2, other=0.0).to(tl.float32)
    new = tl.load(xbc_ptr + c * s_x, mask=mc, other=0.0)
    acc = tl.sum(window * taps, 0) + new.to(tl.float32) * tl.load(w_ptr + c * K + K - 1, mask=mc, other=0.0).to(tl.float32)
    acc += tl.load(b_ptr + c, mask=mc, other=0.0).to(tl.float32)
    if SHIFT:
        older = k < K - 2  # rows 0..K-3 take rows 1..K-2; row K-2 takes the new token
        shifted = tl.load(win_ptr + (k[:, None] + 1) * s_w1 + c[None, :] * s_w2, mask=older[:, None] & mc[None, :], other=0.0)
        tl.store(win_out_ptr + k[:, None] * s_w1 + c[None, :] * s_w2, shifted, mask=older[:, None] & mc[None, :])
        tl.store(win_out_ptr + (K - 2) * s_w1 + c * s_w2, new, mask=mc)
    return acc * tl.sigmoid(acc)


@triton.jit
def _ssd_conv_step_kernel(
    xbc_ptr, dt_ptr, win_ptr, cw_ptr, cb_ptr, dtb_ptr, a_ptr, d_ptr, h_ptr, y_ptr, h_out_ptr, win_out_ptr,
    s_xb, s_x, s_dtb, s_dt, s_wb, s_w1, s_w2, dt_floor,
    H, P, N, G,
    K: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    seq, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    group = head // (H // G)
    k = tl.arange(0, BK)
    p = block * BP + tl.arange(0, BP)
    n = tl.arange(0, BN)
    mp, mn = p < P, n < N
    xbc, win, win_out = xbc_ptr + seq * s_xb, win_ptr + seq * s_wb, win_out_ptr + seq * s_wb
    first = (head % (H // G) == 0) & (block == 0)  # shifts its group's B and C channels of the window

    x = _conv_silu(xbc, win, win_out, cw_ptr, cb_ptr, head * P + p, mp, k, s_x, s_w1, s_w2, K, True)  # (BP,)
    Bn = _conv_silu(xbc, win, win_out, cw_ptr, cb_ptr, H * P + group * N + n, mn, k, s_x, s_w1, s_w2, K, first)
    Cn = _conv_silu(xbc, win, win_out, cw_ptr, cb_ptr, H * P + (G + group) * N + n, mn, k, s_x, s_w1, s_w2, K, first)

    dt = tl.load(dt_ptr + seq * s_dtb + head * s_dt).to(tl.float32) + tl.load(dtb_ptr + head).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus, torch's threshold 20
    dt = tl.maximum(dt, dt_floor)
    hp = ((seq * H + head) * P + p[:, None]) * N + n[None, :]
    mh = mp[:, None] & mn[None, :]
    h = tl.load(h_ptr + hp, mask=mh, other=0.0)
    h = tl.exp(dt * tl.load(a_ptr + head).to(tl.float32)) * h + (dt * x)[:, None] * Bn[None, :]
    y = tl.sum(h * Cn[None, :], 1) + tl.load(d_ptr + head).to(tl.float32) * x
    tl.store(h_out_ptr + hp, h, mask=mh)
    tl.store(y_ptr + (seq * H + head) * P + p, y.to(y_ptr.dtype.element_ty), mask=mp)


def ssd_conv_step(xBC, dt, window, conv_weight, conv_bias, dt_bias, A, D, h, n_groups, dt_floor=0.0):
    """`ssd_conv_step_ref`'s contract: xBC: (B, H P + 2 G N); dt: (B, H) before softplus; window:
    (B, K-1, H P + 2 G N); conv_weight: (H P + 2 G N, K); conv_bias, dt_bias, A, D as the reference;
    h: (B, H, P, N) fp32 -> y (B, H, P) in xBC's dtype, h' fp32, the window after this token.
    xBC and dt may be strided (views of in_proj's output); h and window are not changed."""
    Bsz, H, P, N = h.shape
    G, channels, K = n_groups, xBC.shape[1], conv_weight.shape[1]
    assert channels == H * P + 2 * G * N and H % G == 0, f"xBC {tuple(xBC.shape)} must be (B, H P + 2 G N) = {(Bsz, H * P + 2 * G * N)}"
    assert dt.shape == (Bsz, H), f"dt {tuple(dt.shape)} must be (B, H) = {(Bsz, H)}"
    assert window.shape == (Bsz, K - 1, channels) and K >= 2, f"window {tuple(window.shape)} must be (B, K-1, channels) = {(Bsz, K - 1, channels)}"
    assert conv_weight.shape == (channels, K) and conv_bias.shape == (channels,), f"conv_weight {tuple(conv_weight.shape)} must be (channels, K)"
    assert dt_bias.shape == A.shape == D.shape == (H,), f"dt_bias, A, D {tuple(dt_bias.shape)}, {tuple(A.shape)}, {tuple(D.shape)} must be (H,)"
    assert h.dtype == torch.float32, f"h is fp32, got {h.dtype}"
    conv_weight, h, window = conv_weight.contiguous(), h.contiguous(), window.contiguous()
    y = torch.empty(Bsz, H, P, device=xBC.device, dtype=xBC.dtype)
    h_out = torch.empty_like(h)
    window_out = torch.empty_like(window)
    _ssd_conv_step_kernel[(Bsz, H, triton.cdiv(P, BP))](
        xBC, dt, window, conv_weight, conv_bias, dt_bias, A, D, h, y, h_out, window_out,
        *xBC.stride(), *dt.stride(), window.stride(0), window.stride(1), window.stride(2), float(dt_floor),
        H, P, N, G,
        K=K, BP=BP, BN=triton.next_power_of_2(N), BK=triton.next_power_of_2(K - 1),
    )
    return y, h_out, window_out
