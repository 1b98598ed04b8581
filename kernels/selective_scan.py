"""Mamba-1's selective scan (Gu & Dao 2023, arXiv:2312.00752, eq. 2a-2b and Alg. 2), forward only.

Per batch b, channel d and state index n, with A diagonal (A[d, n] <= 0) and Delta, B, C
functions of the input:

    h_t[d, n] = exp(Delta_t[d] A[d, n]) h_{t-1}[d, n] + Delta_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] u_t[d]

`selective_scan_ref` (altbench.models.mamba, re-exported here) is that loop in fp32, the ground
truth. `selective_scan` computes the same map with Triton: every program owns a block of BD
channels and all N state entries of each, h (N x BD) in fp32 registers, and walks its tokens in
order, CH tokens per loop iteration (unrolled, so the loads of a chunk are issued together), one
channel per thread: the sum over n stays inside a thread, and no step needs shared memory or a
shuffle. exp(Delta A) is computed as exp2(Delta * A log2(e)), A log2(e) precomputed once.

At batch 1 the channel blocks alone give too few programs (Di = 1536 is 12 blocks of 128), so time
is split into S segments of L tokens (a power of two >= 512, grown while B * Di * S stays >= 32768,
about a thousand warps of 32 channels; one segment when the batch alone fills the GPU):

    1. `_segment_kernel` (outputs off), grid (B, Di / BD, S - 1), in parallel: each segment but the
       last from a zero state; writes its end state and its sum of Delta per channel. Reads u,
       Delta, B.
    2. `_carry_states_kernel`, grid (B, N * Di / 512): walks the segments in order and replaces
       each segment's own end state, in place, by the state entering it,
       h_in[s + 1] = exp(A * sum_{t in s} Delta_t) h_in[s] + own[s], h_in[0] = h0.
    3. `_segment_kernel` (outputs on), grid (B, Di / BD, S), in parallel: from the state entering
       its segment; writes y (with the D u skip) and, in the last segment, h_T. Reads u, Delta,
       B, C.

Bytes per token (batch 1; s = bytes per element of u, Delta, B, C and y; 2 in bf16). The floor,
reading u, Delta, B, C and writing y once, is (3 Di + 2 N) s: 9,280 bytes at Di = 1536, N = 16
in bf16, 9.7 GB for 1M (2^20) tokens, 3.4 ms at the 2.9 TB/s copy bandwidth chunk_scalar_decay
measured on the H100. With segments, pass 1 reads u, Delta and B once more: (5 Di + 3 N) s,
15,456 bytes (16.2 GB, 5.6 ms at 1M tokens), plus the segment states, 4 * 4 N Di bytes per
segment (0.1% at 1M tokens). With one segment the kernel moves the floor.

The op is bound by exponentials before bytes: Di * N exp2 per token and pass, 24,576 at
Di = 1536, N = 16. An H100 computes 16 exp2 per clock per SM (about 3.7e12/s at 1.75 GHz), so one
pass over 1M tokens takes at least 7.0 ms of exp2, and the segmented form, which computes the
decays of all but the last segment twice, 13.7 ms. Per state entry and token the other work is
4 fp32 instructions (Delta A, Delta u B, the update, C h), which the FMA units absorb.

Layout: u, Delta, y (B, T, Di), B, C (B, T, N), made contiguous (B and C are often views).
Inside, A log2(e) and the states are kept (N, Di), channels contiguous, so a thread's channel is
the fast axis of every load; h0 is transposed on the way in and h_T returned as a transposed view
of a (B, N, Di) buffer.

Offsets: token indices are int64 scalars (B * T * Di may exceed 2^31); within a row, int32.

Not yet timed on a GPU: written on a CPU machine, checked against the reference in Triton's
interpreter, and compiled for sm_90 offline (triton 3.7, bf16: 96 registers in pass 1 and 128 in
pass 3 at BD = 128, CH = 4, 190 at BD = 256; no spills, no shared memory, no shuffles; one
MUFU.EX2 and four fp32 instructions per state entry and token). The autotuner picks BD, CH and
warps per (Di, N, pass, dtype) on the first call, whatever its T; other lengths reuse the choice.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from altbench.models.mamba import selective_scan_ref  # noqa: F401  (the ground truth, beside its kernel)

_INTERPRET = triton.knobs.runtime.interpret  # TRITON_INTERPRET=1: kernels run on the CPU through numpy
_MIN_SEGMENT = 512  # tokens; shorter segments would spend more on states than they gain in programs
_TARGET_CHANNEL_SEGMENTS = 32768  # B * Di * segments kept at least this (about 1024 warps of 32 channels)
_LOG2E = math.log2(math.e)

# One thread per channel: BD = 32 * num_warps. BD = 256 gives a thread two channels, so each load of B
# and C serves twice the work. The interpreter takes small blocks so tests cover several of them.
_CONFIGS = [
    triton.Config({"BD": 128, "CH": 4}, num_warps=4),
    triton.Config({"BD": 256, "CH": 4}, num_warps=4),
    triton.Config({"BD": 64, "CH": 8}, num_warps=2),
]
_INTERPRET_CONFIGS = [triton.Config({"BD": 16, "CH": 4}, num_warps=1)]


@triton.autotune(configs=_INTERPRET_CONFIGS if _INTERPRET else _CONFIGS, key=["Di", "N", "OUTPUTS"])
@triton.jit
def _segment_kernel(
    u, delta, a2, Bm, Cm, Dv, states, dt_sums, y, ht,  # see `_selective_scan_fwd` for shapes
    T, Di, NS, L,  # tokens, channels, segments, tokens per segment
    N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, CH: tl.constexpr,
    OUTPUTS: tl.constexpr, LOAD_STATE: tl.constexpr,
):
    """Pass 1 (OUTPUTS off): own end state and sum of Delta of a segment. Pass 3: y and h_T."""
    i_b, i_d, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0 = i_s * L
    n_tok = tl.minimum(L, T - t0)  # tokens in this segment
    tok0 = i_b.to(tl.int64) * T + t0  # row of the segment's first token in (B*T)
    cd, cn, rows = i_d * BD + tl.arange(0, BD), tl.arange(0, BN), tl.arange(0, CH)
    in_d, in_n = cd < Di, cn < N
    in_nd = in_n[:, None] & in_d[None, :]
    nd = cn[:, None] * Di + cd[None, :]  # (BN, BD) offsets into an (N, Di) matrix
    a2_nd = tl.load(a2 + nd, mask=in_nd, other=0.0)  # A log2(e); 0 off the edges, so padding decays by 1
    state = states + (i_b.to(tl.int64) * NS + i_s) * N * Di + nd
    if LOAD_STATE:
        h = tl.load(state, mask=in_nd, other=0.0)  # (BN, BD) fp32
    else:
        h = tl.zeros([BN, BD], dtype=tl.float32)
    d_skip = tl.load(Dv + cd, mask=in_d, other=0.0)  # (BD,)
    dt_total = tl.zeros([BD], dtype=tl.float32)

    for c0 in range(0, n_tok, CH):
        Y = tl.zeros([CH, BD], dtype=tl.float32)
        for i in tl.static_range(CH):
            tok = tok0 + c0 + i
            live = c0 + i < n_tok  # past the end: Delta = 0, so the step leaves h as it is
            u_t = tl.load(u + tok * Di + cd, mask=in_d & live, other=0.0).to(tl.float32)  # (BD,)
            dt_t = tl.load(delta + tok * Di + cd, mask=in_d & live, other=0.0).to(tl.float32)  # (BD,)
            b_t = tl.load(Bm + tok * N + cn, mask=in_n & live, other=0.0).to(tl.float32)  # (BN,)
            h = tl.exp2(dt_t[None, :] * a2_nd) * h + b_t[:, None] * (dt_t * u_t)[None, :]  # (BN, BD)
            if OUTPUTS:
                c_t = tl.load(Cm + tok * N + cn, mask=in_n & live, other=0.0).to(tl.float32)  # (BN,)
                y_t = tl.sum(c_t[:, None] * h, 0) + d_skip * u_t  # (BD,)
                Y = tl.where(rows[:, None] == i, y_t[None, :], Y)  # row i of the chunk (a register pick)
            else:
                dt_total += dt_t
        if OUTPUTS:
            r = c0 + rows
            tl.store(y + (tok0 + r)[:, None] * Di + cd[None, :], Y.to(y.dtype.element_ty), mask=(r < n_tok)[:, None] & in_d[None, :])

    if OUTPUTS:
        tl.store(ht + i_b.to(tl.int64) * N * Di + nd, h, mask=in_nd & (i_s == NS - 1))
    else:
        tl.store(state, h, mask=in_nd)
        tl.store(dt_sums + (i_b.to(tl.int64) * NS + i_s) * Di + cd, dt_total, mask=in_d)


@triton.jit
def _carry_states_kernel(
    states, dt_sums, a2, h0,  # (B, NS, N, Di) in place, (B, NS, Di), (N, Di), (B, N, Di) or unused
    NS, Di, N, E: tl.constexpr, HAS_H0: tl.constexpr,
):
    """Each program carries E entries of the (N, Di) state through all segments."""
    i_b, i_e = tl.program_id(0), tl.program_id(1)
    e = i_e * E + tl.arange(0, E)  # flat index into (N, Di)
    in_state = e < N * Di
    a2_e = tl.load(a2 + e, mask=in_state, other=0.0)
    if HAS_H0:
        h = tl.load(h0 + i_b.to(tl.int64) * N * Di + e, mask=in_state, other=0.0)  # (E,)
    else:
        h = tl.zeros([E], dtype=tl.float32)
    for s in range(NS):
        row = i_b.to(tl.int64) * NS + s
        has_own = in_state & (s < NS - 1)  # the last segment's own state is never computed
        own = tl.load(states + row * N * Di + e, mask=has_own, other=0.0)
        tl.store(states + row * N * Di + e, h, mask=in_state)  # the state entering segment s
        dt_sum = tl.load(dt_sums + row * Di + e % Di, mask=has_own, other=0.0)
        h = tl.exp2(a2_e * dt_sum) * h + own


# --- launchers -----------------------------------------------------------------------------------


def _segment_length(batch_channels: int, T: int) -> int:
    """Tokens per segment: T when the batch's channels fill the GPU, else a power of two >= 512,
    grown while B * Di * segments stays >= _TARGET_CHANNEL_SEGMENTS."""
    if batch_channels >= _TARGET_CHANNEL_SEGMENTS:
        return T
    L = _MIN_SEGMENT
    while L < T and batch_channels * triton.cdiv(T, 2 * L) >= _TARGET_CHANNEL_SEGMENTS:
        L *= 2
    return min(L, T)


def _selective_scan_fwd(u, delta, A, B, C, D, h0, segment_length):
    Bsz, T, Di = u.shape
    N = A.shape[1]
    assert delta.shape == u.shape, f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}"
    assert A.shape == (Di, N), f"A {tuple(A.shape)} must be (Di, N) = {(Di, N)}"
    assert B.shape == (Bsz, T, N) and C.shape == (Bsz, T, N), f"B {tuple(B.shape)}, C {tuple(C.shape)} must be (B, T, N) = {(Bsz, T, N)}"
    assert D.shape == (Di,), f"D {tuple(D.shape)} must be (Di,) = {(Di,)}"
    assert h0 is None or h0.shape == (Bsz, Di, N), f"h0 {tuple(h0.shape)} must be (B, Di, N) = {(Bsz, Di, N)}"
    assert T > 0 and N <= 64, f"T = {T} must be positive and N = {N} at most 64 (the state lives in registers)"
    assert segment_length > 0, f"segment_length {segment_length} must be positive"

    u, delta, B, C = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
    a2 = (A.float() * _LOG2E).t().contiguous()  # (N, Di)
    D = D.float().contiguous()
    y = torch.empty_like(u)  # (B, T, Di)
    ht = torch.empty(Bsz, N, Di, device=u.device, dtype=torch.float32)
    h0 = h0.float().transpose(1, 2).contiguous() if h0 is not None else None  # (B, N, Di)
    L = segment_length
    NS = triton.cdiv(T, L)
    BN = triton.next_power_of_2(N)
    if NS == 1:  # h0, as (B, 1, N, Di), is the state entering the only segment
        states, dt_sums = (h0 if h0 is not None else ht), ht
    else:
        states = torch.empty(Bsz, NS, N, Di, device=u.device, dtype=torch.float32)
        dt_sums = torch.empty(Bsz, NS, Di, device=u.device, dtype=torch.float32)
        _segment_kernel[lambda meta: (Bsz, triton.cdiv(Di, meta["BD"]), NS - 1)](
            u, delta, a2, B, C, D, states, dt_sums, y, ht, T, Di, NS, L, N=N, BN=BN, OUTPUTS=False, LOAD_STATE=False
        )
        E = 512  # state entries per carry program: 48 programs at N = 16, Di = 1536
        _carry_states_kernel[(Bsz, triton.cdiv(N * Di, E))](
            states, dt_sums, a2, h0 if h0 is not None else states, NS, Di, N, E=E, HAS_H0=h0 is not None, num_warps=4
        )
    _segment_kernel[lambda meta: (Bsz, triton.cdiv(Di, meta["BD"]), NS)](
        u, delta, a2, B, C, D, states, dt_sums, y, ht, T, Di, NS, L, N=N, BN=BN, OUTPUTS=True,
        LOAD_STATE=NS > 1 or h0 is not None,
    )
    return y, ht.transpose(1, 2)


def selective_scan(u, delta, A, B, C, D, h0=None):
    """Same contract as `selective_scan_ref`, on a GPU through Triton:

    u, delta: (B, T, Di)   A: (Di, N)   B, C: (B, T, N)   D: (Di,)   h0: (B, Di, N) or None
    returns y: (B, T, Di) in u's dtype, h_T: (B, Di, N) in fp32 (a transposed view)
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, h0)):
        raise NotImplementedError("selective_scan is forward-only (no backward kernel yet): use the torch backend to train")
    L = _segment_length(u.shape[0] * u.shape[2], u.shape[1])
    return _selective_scan_fwd(u, delta, A, B, C, D, h0, L)
