"""Mamba-1's decode step in one kernel (Gu & Dao 2023, arXiv:2312.00752, eq. 2 and sec. 3.4): the
selective SSM of one token, Delta from its low-rank input, and the output gate. Per sequence b,
channel d and state index n:

    Delta[d] = softplus(sum_r W[d, r] dt[r] + bias[d])          dt_proj (rank R), then softplus
    h'[d, n] = exp(Delta[d] A[d, n]) h[d, n] + Delta[d] B[n] u[d]
    y[d]     = (sum_n C[n] h'[d, n] + D[d] u[d]) * silu(z[d])

`selective_step_ref` (altbench.models.mamba.selective_step, re-exported here) computes it with
PyTorch ops: dt_proj is a matmul of its own, so under torch.compile the step is that matmul and a
fused kernel for the rest. Here one program owns BD channels of one sequence: it computes their
Delta from the R-vector (a dot product per channel; R = 48 at 130m, W's BD x R tile read once),
then the state update, y and the gate, with h in fp32. One launch where the compiled step has two,
in each of Mamba's 24 to 64 layers; a decode step is bound by its number of kernels, not its bytes
(a 130m layer's step moves about 0.4 MB here).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from altbench.models.mamba import selective_step as selective_step_ref  # noqa: F401 - the reference, re-exported

BD = 32  # channels per program: Di = 1536 gives 48 programs per sequence


@triton.jit
def _selective_step_kernel(
    u_ptr, z_ptr, dt_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, c_ptr, d_ptr, h_ptr, y_ptr, h_out_ptr,
    su, sud, sz, szd, sdt, sdtr, sb, sbn, sc, scn, Di, N, R,
    BD: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
):
    seq, block = tl.program_id(0), tl.program_id(1)
    d = block * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    r = tl.arange(0, BR)
    md, mn, mr = d < Di, n < N, r < R

    dt = tl.load(dt_ptr + seq * sdt + r * sdtr, mask=mr, other=0.0).to(tl.float32)  # (BR,)
    w = tl.load(w_ptr + d[:, None] * R + r[None, :], mask=md[:, None] & mr[None, :], other=0.0).to(tl.float32)
    delta = tl.sum(w * dt[None, :], 1) + tl.load(bias_ptr + d, mask=md, other=0.0).to(tl.float32)  # (BD,)
    delta = tl.where(delta > 20.0, delta, tl.log(1.0 + tl.exp(delta)))  # softplus, torch's threshold 20

    u = tl.load(u_ptr + seq * su + d * sud, mask=md, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + seq * sz + d * szd, mask=md, other=0.0).to(tl.float32)
    A = tl.load(a_ptr + d[:, None] * N + n[None, :], mask=md[:, None] & mn[None, :], other=0.0)  # (BD, BN) fp32
    Bn = tl.load(b_ptr + seq * sb + n * sbn, mask=mn, other=0.0).to(tl.float32)
    Cn = tl.load(c_ptr + seq * sc + n * scn, mask=mn, other=0.0).to(tl.float32)
    hd = (seq * Di + d[:, None]) * N + n[None, :]
    mh = md[:, None] & mn[None, :]
    h = tl.load(h_ptr + hd, mask=mh, other=0.0)

    h = tl.exp(delta[:, None] * A) * h + (delta * u)[:, None] * Bn[None, :]
    y = tl.sum(h * Cn[None, :], 1) + tl.load(d_ptr + d, mask=md, other=0.0) * u
    y = y * z * tl.sigmoid(z)
    tl.store(h_out_ptr + hd, h, mask=mh)
    tl.store(y_ptr + seq * Di + d, y.to(y_ptr.dtype.element_ty), mask=md)


def selective_step(u, z, dt, dt_weight, dt_bias, A, B, C, D, h):
    """`selective_step_ref`'s contract: u, z: (B, Di); dt: (B, R); dt_weight: (Di, R); dt_bias: (Di,);
    A: (Di, N) fp32; B, C: (B, N); D: (Di,) fp32; h: (B, Di, N) fp32 -> y * silu(z) (B, Di) in u's
    dtype, h' (B, Di, N) fp32. u, z, dt, B, C may be strided (views of a projection's output); h is
    not changed."""
    Bsz, Di = u.shape
    R, N = dt.shape[1], A.shape[1]
    assert z.shape == (Bsz, Di) and dt.shape == (Bsz, R), f"z {tuple(z.shape)}, dt {tuple(dt.shape)} must be (B, Di), (B, R)"
    assert dt_weight.shape == (Di, R) and dt_bias.shape == (Di,), f"dt_weight {tuple(dt_weight.shape)} must be (Di, R) = {(Di, R)}"
    assert A.shape == (Di, N) and D.shape == (Di,), f"A {tuple(A.shape)}, D {tuple(D.shape)} must be (Di, N), (Di,)"
    assert B.shape == (Bsz, N) and C.shape == (Bsz, N), f"B {tuple(B.shape)}, C {tuple(C.shape)} must be (B, N) = {(Bsz, N)}"
    assert h.shape == (Bsz, Di, N) and h.dtype == torch.float32, f"h {tuple(h.shape)} {h.dtype} must be (B, Di, N) fp32"
    assert A.dtype == D.dtype == torch.float32, "A and D are fp32"
    dt_weight, A, h = dt_weight.contiguous(), A.contiguous(), h.contiguous()
    y = torch.empty(Bsz, Di, device=u.device, dtype=u.dtype)
    h_out = torch.empty_like(h)
    _selective_step_kernel[(Bsz, triton.cdiv(Di, BD))](
        u, z, dt, dt_weight, dt_bias, A, B, C, D, h, y, h_out,
        *u.stride(), *z.stride(), *dt.stride(), *B.stride(), *C.stride(), Di, N, R,
        BD=BD, BN=triton.next_power_of_2(N), BR=triton.next_power_of_2(R),
    )
    return y, h_out
