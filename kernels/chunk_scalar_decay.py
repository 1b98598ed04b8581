"""Linear attention with a per-head scalar decay: the forward of Mamba-2's SSD (Dao & Gu 2024,
arXiv:2405.21060, sec. 6), RetNet's retention (Sun et al. 2023, arXiv:2307.08621, eq. 7) and
"simple GLA" (a scalar gate per head, Yang et al. 2023, arXiv:2312.06635).

Per batch b and head h, with a K x V matrix memory S and a log-decay g_t <= 0:

    S_t = exp(g_t) S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t

`chunk_scalar_decay_ref` is that loop in fp32, the ground truth. `chunk_scalar_decay` computes the
same map with three Triton kernels. Inside a chunk of C tokens (C = `chunk_size`, 64), with
G_i = g_1 + ... + g_i the running log-decay from the chunk's start:

    o_i = scale * ( sum_{j<=i} (q_i . k_j) exp(G_i - G_j) v_j  +  exp(G_i) q_i S_start )
    S_end = exp(G_C) S_start + sum_j exp(G_C - G_j) k_j^T v_j

Every exponent above is <= 0 (the causal mask is applied to G_i - G_j before exp), so no exp ever
sees a large positive number, whatever the decay.

Design (for an H100, B=1, H=32, K=V=64 up to 1M tokens, where the op is memory-bound: reading
q, k, v and writing o once is the floor). Chunks are grouped into segments of L tokens (a power of
two times C, up to 2048, grown while the grid keeps >= 1024 programs):

    1. `_segment_states_kernel`, one program per (b*h, segment, V block), in parallel: loops over
       the segment's chunks and writes the segment's own end state (from a zero start) and its
       total log-decay. Reads k, v, g.
    2. `_scan_states_kernel`, one program per (b*h, 256 state entries): walks the segments in
       order, 16 at a time (a 16 x 16 matrix of decays applied with one fp32 dot: a chain of single
       loads is latency-bound, 6 us a step), and replaces each segment's own state, in place, by
       the state entering it (h0 carried in); writes the final state.
    3. `_segment_outputs_kernel`, one program per (b*h, segment, V block), in parallel: starts from
       the state entering its segment and runs the chunks one after the other, the state kept in
       registers. Reads q, k, v, g and the entering state; writes o.

Unlike a design that stores the state at every chunk (fla's chunk_simple_gla writes one bf16 K x V
state per 64 tokens, as many bytes as v itself), the states here are stored once per segment in
fp32: at 1M tokens L = 2048 and the states take 1/32 of v's bytes. Per token and head the device
moves k, v twice and q, o once (768 bytes at K = V = 64 in bf16, against the 512-byte floor),
plus about 4% for the states. Extra memory: the segment states, B*H*ceil(T/L)*K*V fp32 (256 MB at
1M tokens, H=32, K=V=64), and one fp32 per (b, h, segment).

Offsets: program ids are widened to int64 before they meet a token index, so B*T*H*D may exceed
2^31 (at 1M tokens, H=32, D=64 it is exactly 2^31). Within a segment, offsets stay int32.

Dots take q's dtype: bf16 or fp16 on tensor cores with fp32 accumulation; fp32 inputs in full
fp32 (input_precision="ieee", slower, for tight comparisons with the torch forms). States, decays
and accumulators stay fp32; rounded to q's dtype are only dot operands: S in q S, the decayed k in
k^T v, and the masked scores in (q k^T) v.

q and k may have fewer heads than v (H_k dividing H), each shared by H/H_k consecutive heads, as
Mamba-2's B and C are shared by the heads of a group (sec. 7.2): q = C, k = B, v = dt * x,
g = dt * A.

Measured on an H100 (triton 3.6, bf16, B=1, H=32, K=V=64; benchmarks/kernels.py): 1M tokens in
9.3 ms (113 M tokens/s, 62% of the copy-bandwidth floor of 5.8 ms; fla's chunk_simple_gla 16.7 ms),
of which kernel 1 takes 3.0 ms, the scan 0.2 ms and kernel 3 6.0 ms, both parallel kernels at about
2.85 TB/s. Below about 16K tokens a call is bound by the host's cost of three launches (~0.15 ms);
replayed from a CUDA graph, 1K tokens take 0.03 ms and 4K 0.08 ms. Error against a float64
computation: 2.6e-3 relative on o (bf16 rounding of the output), 1.6e-3 on the state, at 4K and at
1M tokens alike.

Backward (`chunk_scalar_decay` under autograd). With dS_t the gradient of the loss with respect to
S_t (all later outputs and the final state's gradient dS_T = dh_T included), the reverse-time
recurrence mirrors the forward's:

    dS_t = scale q_t^T do_t + exp(g_{t+1}) dS_{t+1},           dS_T = scale q_T^T do_T + dh_T
    dq_t = scale do_t S_t^T      dk_t = v_t dS_t^T      dv_t = k_t dS_t      dh0 = exp(g_1) dS_1

and, since every term of o_t and of S_T is a product of exp(G_t - G_s) factors (G the running sum
of g), the log-decay's gradient is a reverse cumulative sum:

    dg_t = sum_{s >= t} ( q_s . dq_s - k_s . dk_s ) + <dh_T, S_T>

The token's own term, scale (q_s . k_s)(do_s . v_s), is in both dot products and cancels; the
kernels leave it out of both before it forms them, and likewise forms the last token's final-state
term as <dh_T, exp(g_T) S_{T-1}>, without its k_T^T v_T part that k_T . dk_T would cancel. So under
strong decay (every other term near 0) dg is not the rounding residue of large equal numbers.

Inside a chunk, with dS_end the gradient at the chunk's end, every exponent again <= 0:

    dq_i = scale ( sum_{j<=i} (do_i . v_j) exp(G_i - G_j) k_j  +  exp(G_i) do_i S_start^T )
    dk_j = scale sum_{i>=j} (v_j . do_i) exp(G_i - G_j) q_i  +  exp(G_C - G_j) v_j dS_end^T
    dv_j = scale sum_{i>=j} (k_j . q_i) exp(G_i - G_j) do_i  +  exp(G_C - G_j) k_j dS_end
    dS_start = exp(G_C) dS_end + scale sum_i exp(G_i) q_i^T do_i

The backward keeps the forward's segments and the states entering them (saved by the forward, the
only extra memory kept for autograd: B*H*ceil(T/L)*K*V fp32) and runs, all but kernel 5 with every
(b*h, segment, V block) an independent program:

    4. `_segment_grad_states_kernel`, grid as kernel 1: each segment's own dS at its start, from a
       zero gradient at its end, walking its chunks backwards; written in reversed segment order,
       so that
    5. `_scan_states_kernel`, the forward's scan run over the reversed segments from dh_T, leaves
       the gradient at each segment's end, and gives dh0 as its "final state";
    6. `_segment_dq_kernel`, grid as kernel 3: the forward's walk with do in q's place and v in
       k's: from the entering state S forwards, S in registers; writes dq and q_t . dq_t;
    7. `_segment_dkv_kernel`, grid as kernel 3: from the gradient at the segment's end backwards,
       dS in registers; writes dk, dv and k_t . dk_t;
    8. `_decay_grad_kernel`, twice, one (256 tokens, H) tile per program: the tiles' sums of
       dG_t = q_t . dq_t - k_t . dk_t, then (after a reverse cumulative sum over the few tile sums
       in torch) dg_t = sum_{s >= t} dG_s. torch's cumsum of (B, T, H) along T walks every token
       with one thread per (b, h); inferred, not timed alone, to be most of the 81.5 ms the
       earlier backward took at 256K tokens on the H200 (it grew 5.9x from 64K).

Two walks rather than one: holding S, dS and both walks' tiles in one program took 255 registers
and spilled at K = 128. Per-head gradients of shared q, k (H_k < H, Mamba-2's B and C) and the
partial sums of several V blocks (V > 64) are written with plain stores into (NV, B, T, H, K)
buffers in q's dtype and summed once in fp32 by torch (no atomic adds: 64 heads adding into one
q row serialised). That buffer is the backward's largest: 2 * NV*B*T*H*K elements (34 GB at 1M
tokens, H = 64, K = 128, bf16); with H_k = H and V <= 64, dq and dk are written in place.
The backward walks take a chunk of 32 (`_BWD_CONFIGS`; autotuned warps and stages).

Bytes per token and value head of the backward (bf16): at H = H_k = 32, K = V = 64, reads of q, k,
v, do (128 each) in kernel 4 (2), 6 (4) and 7 (4), writes of dq, dk, dv (3), about 1.7 KB, 14 GB
at 256K tokens; at Mamba-2's shape (H = 64, H_k = 1, K = 128, V = 64) q and k come from L2 (the
heads of one segment run side by side), and v, do, the per-head dq, dk written and read back make
about 1.8 KB (30 GB at 256K). Matrix products per chunk: 4 in kernel 6, 7 in kernel 7, 1 in kernel
4, against the forward's 5. PREDICTION, not a measurement (written without a GPU): forward+backward
on the H200 at 256K in 8-12 ms at H = 32, K = V = 64 (81.5 ms before this design) and 18-25 ms at
Mamba-2's shape (161 ms before; mamba_ssm's mamba_chunk_scan_combined took 40.2 ms), each within
2-3x of its copy-bandwidth floor plus the forward; 4K is bound by the ~12 launches (0.4-0.8 ms).

First call: compiling the forward's three kernels and trying two configs (4 warps, 2 or 3 stages) of
kernels 1 and 3 takes 2.5-4.5 s on the H100 per (K, V, chunk_size, dtype). T and L are run-time arguments,
so other lengths reuse it (a T that is not a multiple of 16, or a single segment, specialises once
more, about 1-2 s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

_INTERPRET = triton.knobs.runtime.interpret  # TRITON_INTERPRET=1: kernels run on the CPU through numpy
_MIN_PROGRAMS = 1024  # segments shrink (down to one chunk) until the grid has about this many programs
_MAX_SEGMENT = 2048  # tokens; longer segments save little state traffic and serialise more work


def chunk_scalar_decay_ref(q, k, v, g, h0=None, scale=None):
    """The recurrence, one token at a time, in fp32; the ground truth for `chunk_scalar_decay`.

    | argument | shape          | dtype                  |
    |----------|----------------|------------------------|
    | q, k     | (B, T, H_k, K) | any float; H_k divides H |
    | v        | (B, T, H, V)   | any float              |
    | g        | (B, T, H)      | log-decay, <= 0        |
    | h0       | (B, H, K, V)   | or None (zeros)        |
    | scale    | float          | or None: K ** -0.5     |
    | returns o| (B, T, H, V)   | q's dtype              |
    | and S_T  | (B, H, K, V)   | fp32                   |
    """
    B, T, H, V = v.shape
    K = q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    heads_per_key = H // q.shape[2]
    qf = q.float().repeat_interleave(heads_per_key, dim=2)  # (B, T, H, K)
    kf = k.float().repeat_interleave(heads_per_key, dim=2)  # (B, T, H, K)
    vf, gf = v.float(), g.float()
    S = h0.float().clone() if h0 is not None else v.new_zeros(B, H, K, V, dtype=torch.float32)  # (B, H, K, V)
    o = v.new_empty(B, T, H, V, dtype=torch.float32)
    for t in range(T):
        S = torch.exp(gf[:, t])[..., None, None] * S + kf[:, t, :, :, None] * vf[:, t, :, None, :]
        o[:, t] = scale * torch.einsum("bhk,bhkv->bhv", qf[:, t], S)
    return o.to(q.dtype), S


# --- kernels -------------------------------------------------------------------------------------

# Two configs each for the two parallel kernels; the scan writes in place, so it is never autotuned
# (a trial run would scan already-scanned states).
_CONFIGS = [triton.Config({}, num_warps=4, num_stages=2), triton.Config({}, num_warps=4, num_stages=3)]
_TUNE_KEY = ["K", "V", "BK", "BV", "C"]  # not T nor L: one compile and one tuning per head shape


def _configs():
    return _CONFIGS[:1] if _INTERPRET else _CONFIGS


# The backward walks hold more tiles than the forward's (S or dS, and four (C, BK|BV) loads): they
# pick their own chunk, which the segments' states do not constrain. ptxas for sm_90 (triton 3.7):
# at K = V = 64, C = 32 compiles without spills at 8 warps (219 and 242 registers in kernels 6 and 7);
# at K = 128, V = 64, kernel 7 spills 64 bytes at 8 warps and 3 stages, 184 at 2; C = 64 spills
# 200-850 bytes in kernel 7, so only kernel 4 could use it.
_BWD_CONFIGS = [
    triton.Config({"C": 32}, num_warps=4, num_stages=2),
    triton.Config({"C": 32}, num_warps=8, num_stages=2),
    triton.Config({"C": 32}, num_warps=8, num_stages=3),
]
_BWD_TUNE_KEY = ["K", "V", "BK", "BV"]


def _bwd_configs():
    return [triton.Config({"C": 16}, num_warps=4)] if _INTERPRET else _BWD_CONFIGS


@triton.autotune(configs=_configs(), key=_TUNE_KEY)
@triton.jit
def _segment_states_kernel(
    k, v, g, states, seg_decay,  # k (B, T, HK, K), v (B, T, H, V), g (B, T, H); out (B*H, NS, K, V), (B*H, NS)
    T, H, HK, NS, L,  # tokens, value heads, key heads, segments, tokens per segment
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
):
    i_bh, i_s, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // HK)
    t0 = i_s * L
    n = tl.minimum(L, T - t0)  # tokens in this segment
    tok0 = i_b.to(tl.int64) * T + t0  # row of the segment's first token in (B*T)
    rows, ck, cv = tl.arange(0, C), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    k_seg = k + tok0 * HK * K + i_hk * K
    v_seg = v + tok0 * H * V + i_h * V
    g_seg = g + tok0 * H + i_h

    S = tl.zeros([BK, BV], dtype=tl.float32)  # this segment's own state, from a zero start
    total = tl.zeros([], dtype=tl.float32)  # sum of g over the segment
    for c0 in range(0, n, C):
        r = c0 + rows
        in_seq = r < n
        kc = tl.load(k_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & (ck < K)[None, :], other=0.0)  # (C, BK)
        vc = tl.load(v_seg + r[:, None] * (H * V) + cv[None, :], mask=in_seq[:, None] & (cv < V)[None, :], other=0.0)  # (C, BV)
        gc = tl.load(g_seg + r * H, mask=in_seq, other=0.0).to(tl.float32)  # (C,)
        G = tl.cumsum(gc, 0)  # log-decay from the chunk start through each token
        G_end = tl.min(G, 0)  # G is non-increasing: its last entry, so the last token decays by exp(0) exactly
        k_dec = (kc * tl.exp(G_end - G)[:, None]).to(kc.dtype)  # k_j exp(G_C - G_j), exponent <= 0
        S = S * tl.exp(G_end) + tl.dot(tl.trans(k_dec), vc, input_precision=PREC)
        total += G_end

    out = states + (i_bh.to(tl.int64) * NS + i_s) * K * V
    tl.store(out + ck[:, None] * V + cv[None, :], S, mask=(ck < K)[:, None] & (cv < V)[None, :])
    tl.store(seg_decay + i_bh.to(tl.int64) * NS + i_s, total, mask=i_v == 0)


@triton.jit
def _scan_states_kernel(
    states, seg_decay, h0, ht,  # (B*H, NS, K, V) in place, (B*H, NS), (B*H, K, V) or unused, (B*H, K, V)
    NS,
    K: tl.constexpr, V: tl.constexpr, E: tl.constexpr, U: tl.constexpr, HAS_H0: tl.constexpr,
):
    """Each program carries E entries of the K x V state through all segments, U segments a step."""
    i_bh, i_e = tl.program_id(0), tl.program_id(1)
    e = i_e * E + tl.arange(0, E)  # flat index into K x V
    in_state = e < K * V
    ru = tl.arange(0, U)
    if HAS_H0:
        S = tl.load(h0 + i_bh.to(tl.int64) * K * V + e, mask=in_state, other=0.0)  # (E,)
    else:
        S = tl.zeros([E], dtype=tl.float32)
    seg_states = states + i_bh.to(tl.int64) * NS * K * V
    seg_decays = seg_decay + i_bh.to(tl.int64) * NS
    later = ru[:, None] >= ru[None, :]
    for s0 in range(0, NS, U):
        seg = s0 + ru
        p = seg_states + seg.to(tl.int64)[:, None] * (K * V) + e[None, :]  # (U, E)
        own = tl.load(p, mask=(seg < NS)[:, None] & in_state[None, :], other=0.0)
        D = tl.cumsum(tl.load(seg_decays + seg, mask=seg < NS, other=0.0), 0)  # (U,) log-decay from s0's start
        # after segment s0 + j: exp(D_j) S + sum_{i<=j} exp(D_j - D_i) own_i, exponents masked to <= 0
        W = tl.where(later, tl.exp(tl.where(later, D[:, None] - D[None, :], 0.0)), 0.0)  # (U, U)
        after = tl.dot(W, own, input_precision="ieee") + tl.exp(D)[:, None] * S[None, :]  # (U, E)
        # the state entering segment s0 + j + 1 is the one after s0 + j: shift by one segment
        tl.store(p + K * V, after, mask=(seg + 1 < NS)[:, None] & (ru < U - 1)[:, None] & in_state[None, :])
        tl.store(seg_states + s0 * K * V + e, S, mask=in_state)
        S = tl.sum(tl.where((ru == U - 1)[:, None], after, 0.0), 0)  # after the block's last segment
    tl.store(ht + i_bh.to(tl.int64) * K * V + e, S, mask=in_state)


@triton.autotune(configs=_configs(), key=_TUNE_KEY)
@triton.jit
def _segment_outputs_kernel(
    q, k, v, g, states, o,  # q, k (B, T, HK, K), v (B, T, H, V), g (B, T, H), states (B*H, NS, K, V), o like v
    T, H, HK, NS, L, scale,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
):
    i_bh, i_s, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // HK)
    t0 = i_s * L
    n = tl.minimum(L, T - t0)
    tok0 = i_b.to(tl.int64) * T + t0
    rows, ck, cv = tl.arange(0, C), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    q_seg = q + tok0 * HK * K + i_hk * K
    k_seg = k + tok0 * HK * K + i_hk * K
    v_seg = v + tok0 * H * V + i_h * V
    o_seg = o + tok0 * H * V + i_h * V
    g_seg = g + tok0 * H + i_h
    in_k, in_v = ck < K, cv < V
    causal = rows[:, None] >= rows[None, :]

    entering = states + (i_bh.to(tl.int64) * NS + i_s) * K * V
    S = tl.load(entering + ck[:, None] * V + cv[None, :], mask=in_k[:, None] & in_v[None, :], other=0.0)  # (BK, BV) fp32
    for c0 in range(0, n, C):
        r = c0 + rows
        in_seq = r < n
        qc = tl.load(q_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & in_k[None, :], other=0.0)  # (C, BK)
        kc = tl.load(k_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & in_k[None, :], other=0.0)  # (C, BK)
        vc = tl.load(v_seg + r[:, None] * (H * V) + cv[None, :], mask=in_seq[:, None] & in_v[None, :], other=0.0)  # (C, BV)
        gc = tl.load(g_seg + r * H, mask=in_seq, other=0.0).to(tl.float32)  # (C,)
        G = tl.cumsum(gc, 0)
        G_end = tl.min(G, 0)  # G is non-increasing: its last entry, so the last token decays by exp(0) exactly

        # inside the chunk: (q k^T * exp(G_i - G_j), j <= i) v; the mask goes on before the exp
        A = tl.dot(qc, tl.trans(kc), input_precision=PREC)  # (C, C) fp32
        A = tl.where(causal, A * tl.exp(tl.where(causal, G[:, None] - G[None, :], 0.0)), 0.0)
        # from earlier chunks: exp(G_i) q_i S, the decay applied to rows of the product
        oc = tl.dot(qc, S.to(qc.dtype), input_precision=PREC) * tl.exp(G)[:, None]  # (C, BV)
        oc = tl.dot(A.to(vc.dtype), vc, oc, input_precision=PREC)
        tl.store(o_seg + r[:, None] * (H * V) + cv[None, :], (oc * scale).to(o.dtype.element_ty), mask=in_seq[:, None] & in_v[None, :])

        k_dec = (kc * tl.exp(G_end - G)[:, None]).to(kc.dtype)
        S = S * tl.exp(G_end) + tl.dot(tl.trans(k_dec), vc, input_precision=PREC)


@triton.autotune(configs=_bwd_configs(), key=_BWD_TUNE_KEY)
@triton.jit
def _segment_grad_states_kernel(
    q, do, g, dstates, dseg_decay,  # q (B, T, HK, K), do (B, T, H, V), g (B, T, H); out (B*H, NS, K, V), (B*H, NS), reversed
    T, H, HK, NS, L, scale,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
):
    """A segment's own gradient at its start, sum_i exp(G_i) scale q_i^T do_i (G from the segment's
    start), and its total log-decay; stored at segment NS - 1 - s so the forward's scan runs backwards."""
    i_bh, i_s, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // HK)
    t0 = i_s * L
    n = tl.minimum(L, T - t0)
    tok0 = i_b.to(tl.int64) * T + t0
    rows, ck, cv = tl.arange(0, C), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    q_seg = q + tok0 * HK * K + i_hk * K
    do_seg = do + tok0 * H * V + i_h * V
    g_seg = g + tok0 * H + i_h
    in_k, in_v = ck < K, cv < V

    dS = tl.zeros([BK, BV], dtype=tl.float32)
    total = tl.zeros([], dtype=tl.float32)
    nc = tl.cdiv(n, C)
    for ci in range(nc):
        c0 = (nc - 1 - ci) * C  # chunks from the segment's end
        r = c0 + rows
        in_seq = r < n
        qc = tl.load(q_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & in_k[None, :], other=0.0)  # (C, BK)
        doc = tl.load(do_seg + r[:, None] * (H * V) + cv[None, :], mask=in_seq[:, None] & in_v[None, :], other=0.0)  # (C, BV)
        gc = tl.load(g_seg + r * H, mask=in_seq, other=0.0).to(tl.float32)  # (C,)
        G = tl.cumsum(gc, 0)
        G_end = tl.min(G, 0)
        q_dec = (qc * tl.exp(G)[:, None]).to(qc.dtype)  # q_i exp(G_i), exponent <= 0
        dS = dS * tl.exp(G_end) + tl.dot(tl.trans(q_dec), doc, input_precision=PREC)
        total += G_end

    i_r = NS - 1 - i_s
    out = dstates + (i_bh.to(tl.int64) * NS + i_r) * K * V
    tl.store(out + ck[:, None] * V + cv[None, :], dS * scale, mask=in_k[:, None] & in_v[None, :])
    tl.store(dseg_decay + i_bh.to(tl.int64) * NS + i_r, total, mask=i_v == 0)


@triton.autotune(configs=_bwd_configs(), key=_BWD_TUNE_KEY)
@triton.jit
def _segment_dq_kernel(
    q, k, v, g, do, states, dht,  # as the forward's; do like v; states (B*H, NS, K, V); dht (B*H, K, V)
    dq, dgq, dg_last,  # dq (B, T, HK, K), or per V block and value head (NV, B, T, H, K) when PART; dgq (NV, B, T, H), dg_last (NV, B*H) fp32
    T, H, HK, NS, L, scale, BT,  # BT = B * T
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
    HAS_DHT: tl.constexpr, PART: tl.constexpr,
):
    """Kernel 6: walks the segment's chunks forwards from the state entering it, the forward's loop
    with do in q's place and v in k's: dq_i = scale (sum_{j<=i} (do_i . v_j) exp(G_i - G_j) k_j
    + exp(G_i) do_i S^T), and q_i . dq_i without its j = i term."""
    i_bh, i_s, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // HK)
    t0 = i_s * L
    n = tl.minimum(L, T - t0)
    tok0 = i_b.to(tl.int64) * T + t0
    rows, ck, cv = tl.arange(0, C), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    q_seg = q + tok0 * HK * K + i_hk * K
    k_seg = k + tok0 * HK * K + i_hk * K
    v_seg = v + tok0 * H * V + i_h * V
    do_seg = do + tok0 * H * V + i_h * V
    g_seg = g + tok0 * H + i_h
    part = i_v.to(tl.int64) * BT  # this V block's slice of the per-block buffers
    if PART:
        dq_seg, dq_row = dq + (part + tok0) * H * K + i_h * K, H * K
    else:
        dq_seg, dq_row = dq + tok0 * HK * K + i_hk * K, HK * K
    dgq_seg = dgq + (part + tok0) * H + i_h
    in_k, in_v = ck < K, cv < V
    kv_mask = in_k[:, None] & in_v[None, :]
    diagonal = rows[:, None] == rows[None, :]
    before = rows[:, None] > rows[None, :]  # j < i, rows i

    S = tl.load(states + (i_bh.to(tl.int64) * NS + i_s) * K * V + ck[:, None] * V + cv[None, :], mask=kv_mask, other=0.0)  # (BK, BV)
    for c0 in range(0, n, C):
        r = c0 + rows
        in_seq = r < n
        qc = tl.load(q_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & in_k[None, :], other=0.0)  # (C, BK)
        kc = tl.load(k_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & in_k[None, :], other=0.0)  # (C, BK)
        vc = tl.load(v_seg + r[:, None] * (H * V) + cv[None, :], mask=in_seq[:, None] & in_v[None, :], other=0.0)  # (C, BV)
        doc = tl.load(do_seg + r[:, None] * (H * V) + cv[None, :], mask=in_seq[:, None] & in_v[None, :], other=0.0)  # (C, BV)
        gc = tl.load(g_seg + r * H, mask=in_seq, other=0.0).to(tl.float32)  # (C,)
        G = tl.cumsum(gc, 0)
        G_end = tl.min(G, 0)

        Ad = tl.dot(doc, tl.trans(vc), input_precision=PREC)  # (C, C): do_i . v_j
        own = tl.sum(tl.where(diagonal, Ad, 0.0), 1)  # (C,): do_i . v_i
        Ad = tl.where(before, Ad * tl.exp(tl.where(before, G[:, None] - G[None, :], 0.0)), 0.0)
        dqc = tl.dot(doc, tl.trans(S.to(doc.dtype)), input_precision=PREC) * tl.exp(G)[:, None]  # (C, BK)
        dqc = tl.dot(Ad.to(kc.dtype), kc, dqc, input_precision=PREC) * scale  # all but the j = i term
        tl.store(dgq_seg + r * H, tl.sum(qc.to(tl.float32) * dqc, 1), mask=in_seq)
        dqc += (scale * own)[:, None] * kc.to(tl.float32)
        tl.store(dq_seg + r[:, None] * dq_row + ck[None, :], dqc.to(dq.dtype.element_ty), mask=in_seq[:, None] & in_k[None, :])

        k_dec = (kc * tl.exp(G_end - G)[:, None]).to(kc.dtype)
        k_dec = tl.where(((r == n - 1) & (i_s == NS - 1))[:, None], 0.0, k_dec)  # leaves exp(g_T) S_{T-1}, not S_T
        S = S * tl.exp(G_end) + tl.dot(tl.trans(k_dec), vc, input_precision=PREC)
    if HAS_DHT:  # the final state's own term of dg_T: <dh_T, exp(g_T) S_{T-1}>
        dh_T = tl.load(dht + i_bh.to(tl.int64) * K * V + ck[:, None] * V + cv[None, :], mask=kv_mask, other=0.0)
        tl.store(dg_last + i_v.to(tl.int64) * (BT // T) * H + i_bh, tl.sum(tl.sum(S * dh_T, 1), 0), mask=i_s == NS - 1)


@triton.autotune(configs=_bwd_configs(), key=_BWD_TUNE_KEY)
@triton.jit
def _segment_dkv_kernel(
    q, k, v, g, do, dstates,  # as the forward's; do like v; dstates (B*H, NS, K, V), reversed segments
    dk, dv, dgk,  # dk like dq in `_segment_dq_kernel`; dv like v; dgk (NV, B, T, H) fp32
    T, H, HK, NS, L, scale, BT,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
    PART: tl.constexpr,
):
    """Kernel 7: walks the segment's chunks backwards from the gradient at its end, the state's
    gradient dS in registers: dk_j, dv_j, and k_j . dk_j without its i = j term."""
    i_bh, i_s, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // HK)
    t0 = i_s * L
    n = tl.minimum(L, T - t0)
    tok0 = i_b.to(tl.int64) * T + t0
    rows, ck, cv = tl.arange(0, C), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    q_seg = q + tok0 * HK * K + i_hk * K
    k_seg = k + tok0 * HK * K + i_hk * K
    v_seg = v + tok0 * H * V + i_h * V
    do_seg = do + tok0 * H * V + i_h * V
    dv_seg = dv + tok0 * H * V + i_h * V
    g_seg = g + tok0 * H + i_h
    part = i_v.to(tl.int64) * BT
    if PART:
        dk_seg, dk_row = dk + (part + tok0) * H * K + i_h * K, H * K
    else:
        dk_seg, dk_row = dk + tok0 * HK * K + i_hk * K, HK * K
    dgk_seg = dgk + (part + tok0) * H + i_h
    in_k, in_v = ck < K, cv < V
    anticausal = rows[:, None] <= rows[None, :]  # i >= j, rows j
    diagonal = rows[:, None] == rows[None, :]
    after = rows[:, None] < rows[None, :]  # i > j, rows j

    dS = tl.load(dstates + (i_bh.to(tl.int64) * NS + NS - 1 - i_s) * K * V + ck[:, None] * V + cv[None, :],
                 mask=in_k[:, None] & in_v[None, :], other=0.0)  # (BK, BV)
    nc = tl.cdiv(n, C)
    for ci in range(nc):
        c0 = (nc - 1 - ci) * C
        r = c0 + rows
        in_seq = r < n
        qc = tl.load(q_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & in_k[None, :], other=0.0)  # (C, BK)
        kc = tl.load(k_seg + r[:, None] * (HK * K) + ck[None, :], mask=in_seq[:, None] & in_k[None, :], other=0.0)  # (C, BK)
        vc = tl.load(v_seg + r[:, None] * (H * V) + cv[None, :], mask=in_seq[:, None] & in_v[None, :], other=0.0)  # (C, BV)
        doc = tl.load(do_seg + r[:, None] * (H * V) + cv[None, :], mask=in_seq[:, None] & in_v[None, :], other=0.0)  # (C, BV)
        gc = tl.load(g_seg + r * H, mask=in_seq, other=0.0).to(tl.float32)  # (C,)
        G = tl.cumsum(gc, 0)
        G_end = tl.min(G, 0)
        decay_to_end = tl.exp(G_end - G)[:, None]  # (C, 1)
        gap = tl.exp(tl.where(anticausal, G[None, :] - G[:, None], 0.0))  # (C, C): exp(G_i - G_j), rows j

        Pk = tl.dot(kc, tl.trans(qc), input_precision=PREC)  # (C, C): k_j . q_i
        Pk = tl.where(anticausal, Pk * gap, 0.0) * scale
        dvc = tl.dot(kc, dS.to(kc.dtype), input_precision=PREC) * decay_to_end  # (C, BV)
        dvc = tl.dot(Pk.to(doc.dtype), doc, dvc, input_precision=PREC)
        tl.store(dv_seg + r[:, None] * (H * V) + cv[None, :], dvc.to(dv.dtype.element_ty), mask=in_seq[:, None] & in_v[None, :])

        Pv = tl.dot(vc, tl.trans(doc), input_precision=PREC)  # (C, C): v_j . do_i
        own = tl.sum(tl.where(diagonal, Pv, 0.0), 1)  # (C,): v_j . do_j
        Pv = tl.where(after, Pv * gap, 0.0) * scale
        dkc = tl.dot(vc, tl.trans(dS.to(vc.dtype)), input_precision=PREC) * decay_to_end  # (C, BK): the state's term
        last = (r == n - 1) & (i_s == NS - 1)  # token T: its dh_T term is left out of dg_T (kernel 6)
        dg_state = tl.where(last, tl.sum(kc.to(tl.float32) * dkc, 1), 0.0)  # (C,)
        dkc = tl.dot(Pv.to(qc.dtype), qc, dkc, input_precision=PREC)  # all but the i = j term
        tl.store(dgk_seg + r * H, tl.sum(kc.to(tl.float32) * dkc, 1) - dg_state, mask=in_seq)
        dkc += (scale * own)[:, None] * qc.to(tl.float32)
        tl.store(dk_seg + r[:, None] * dk_row + ck[None, :], dkc.to(dk.dtype.element_ty), mask=in_seq[:, None] & in_k[None, :])

        q_dec = (qc * tl.exp(G)[:, None]).to(qc.dtype)
        dS = dS * tl.exp(G_end) + tl.dot(tl.trans(q_dec), doc, input_precision=PREC) * scale


@triton.jit
def _decay_grad_kernel(
    dgq, dgk, carry, dg,  # dgq, dgk (NV, B, T, H); carry (B, H, NB) fp32; dg (B, T, H) fp32
    T, H, NV, BT,  # BT = B * T
    TB: tl.constexpr, BH: tl.constexpr, APPLY: tl.constexpr,
):
    """dG_t = sum over V blocks of (q_t . dq_t - k_t . dk_t), one (TB, H) tile of tokens per program.
    APPLY off: writes the tile's sum per head to carry. On: dg_t = sum_{s >= t} dG_s, from the sum
    inside the tile and carry, now the sum over all later tiles."""
    i_b, i_t = tl.program_id(0), tl.program_id(1)
    NB = tl.num_programs(1)
    t, ch = i_t * TB + tl.arange(0, TB), tl.arange(0, BH)
    m = (t < T)[:, None] & (ch < H)[None, :]
    off = (i_b.to(tl.int64) * T + t)[:, None] * H + ch[None, :]  # (TB, BH)
    dG = tl.zeros([TB, BH], dtype=tl.float32)
    pq, pk = dgq + off, dgk + off
    for _ in range(NV):
        dG += tl.load(pq, mask=m, other=0.0) - tl.load(pk, mask=m, other=0.0)
        pq, pk = pq + BT * H, pk + BT * H  # the next V block
    c = carry + (i_b.to(tl.int64) * H + ch) * NB + i_t  # (BH,)
    if APPLY:
        later = tl.load(c, mask=ch < H, other=0.0)
        tl.store(dg + off, tl.cumsum(dG, 0, reverse=True) + later[None, :], mask=m)
    else:
        tl.store(c, tl.sum(dG, 0), mask=ch < H)


# --- launchers -----------------------------------------------------------------------------------


def _segment_length(batch_heads: int, T: int, chunk_size: int) -> int:
    """Tokens per segment: a power of two times the chunk, grown while the grid keeps enough programs."""
    L = chunk_size
    while 2 * L <= _MAX_SEGMENT and batch_heads * triton.cdiv(T, 2 * L) >= _MIN_PROGRAMS:
        L *= 2
    return L


def _chunk_scalar_decay_fwd(q, k, v, g, h0, scale, chunk_size, segment_length):
    B, T, HK, K = q.shape
    H, V = v.shape[2], v.shape[3]
    assert k.shape == q.shape, f"k {tuple(k.shape)} must match q {tuple(q.shape)}"
    assert v.shape[:2] == (B, T) and H % HK == 0, f"v {tuple(v.shape)}: (B, T) of q {tuple(q.shape)}, heads a multiple of q's"
    assert g.shape == (B, T, H), f"g {tuple(g.shape)} must be (B, T, H) = {(B, T, H)}"
    assert h0 is None or h0.shape == (B, H, K, V), f"h0 {tuple(h0.shape)} must be (B, H, K, V) = {(B, H, K, V)}"
    assert T > 0 and K <= 256, f"T = {T} must be positive and K = {K} at most 256"
    assert triton.cdiv(T, segment_length) < 65536, f"T = {T}: more than 65535 segments of {segment_length}"
    assert chunk_size >= 16 and chunk_size & (chunk_size - 1) == 0, f"chunk_size {chunk_size}: a power of two >= 16"
    assert segment_length % chunk_size == 0, f"segment_length {segment_length} must be a multiple of chunk_size"
    assert q.dtype == k.dtype == v.dtype, f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}"

    o = torch.empty_like(v, dtype=q.dtype, memory_format=torch.contiguous_format)
    if _INTERPRET and q.dtype == torch.bfloat16:  # the interpreter's tl.dot reads bf16 as raw uint16 (Triton 3.7)
        q, k, v = q.float(), k.float(), v.float()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = g.float().contiguous()
    C, L = chunk_size, segment_length
    NS = triton.cdiv(T, L)
    BK = max(16, triton.next_power_of_2(K))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    NV = triton.cdiv(V, BV)
    states = torch.empty(B * H, NS, K, V, device=q.device, dtype=torch.float32)
    seg_decay = torch.empty(B * H, NS, device=q.device, dtype=torch.float32)
    ht = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 inputs: full-precision dots, not tf32

    _segment_states_kernel[(B * H, NS, NV)](k, v, g, states, seg_decay, T, H, HK, NS, L, K=K, V=V, BK=BK, BV=BV, C=C, PREC=prec)
    h0 = h0.float().contiguous() if h0 is not None else None
    E = 256  # state entries per scan program: 16 programs per head at K = V = 64
    _scan_states_kernel[(B * H, triton.cdiv(K * V, E))](
        states, seg_decay, h0 if h0 is not None else ht, ht, NS, K=K, V=V, E=E, U=16, HAS_H0=h0 is not None, num_warps=4
    )
    _segment_outputs_kernel[(B * H, NS, NV)](q, k, v, g, states, o, T, H, HK, NS, L, scale, K=K, V=V, BK=BK, BV=BV, C=C, PREC=prec)
    return o, ht, states


def _chunk_scalar_decay_bwd(q, k, v, g, h0, states, do, dht, scale, segment_length):
    """Gradients (dq, dk, dv, dg, dh0 or None) from the forward's inputs, its entering states
    (B*H, NS, K, V), and the gradients do (B, T, H, V) and dht (B, H, K, V) or None."""
    B, T, HK, K = q.shape
    H, V = v.shape[2], v.shape[3]
    L = segment_length
    NS = triton.cdiv(T, L)
    assert k.shape == q.shape and v.shape[:2] == (B, T) and g.shape == (B, T, H), "shapes as in the forward"
    assert do.shape == v.shape, f"do {tuple(do.shape)} must match v {tuple(v.shape)}"
    assert states.shape == (B * H, NS, K, V), f"states {tuple(states.shape)} must be (B*H, NS, K, V) = {(B * H, NS, K, V)}"
    assert dht is None or dht.shape == (B, H, K, V), f"dht {tuple(dht.shape)} must be (B, H, K, V) = {(B, H, K, V)}"

    BK = max(16, triton.next_power_of_2(K))
    BV = min(64, max(16, triton.next_power_of_2(V)))  # one V block up to 64: each more block repeats the (C, C) products
    NV = triton.cdiv(V, BV)
    part = NV > 1 or HK < H  # dq, dk per V block and value head, summed below over blocks and the heads sharing q, k
    dv_dtype = v.dtype
    if _INTERPRET and q.dtype == torch.bfloat16:  # the interpreter's tl.dot reads bf16 as raw uint16 (Triton 3.7)
        q, k, v = q.float(), k.float(), v.float()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    do = do.to(q.dtype).contiguous()
    g = g.float().contiguous()
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    f32 = dict(device=q.device, dtype=torch.float32)
    dq_shape = (NV, B, T, H, K) if part else (B, T, HK, K)
    dq = torch.empty(dq_shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(dq_shape, device=q.device, dtype=q.dtype)
    dv = torch.empty(B, T, H, V, device=q.device, dtype=dv_dtype)
    dgq = torch.empty(NV, B, T, H, **f32)  # q_t . dq_t
    dgk = torch.empty(NV, B, T, H, **f32)  # k_t . dk_t
    dg_last = torch.empty(NV, B * H, **f32)  # <dh_T, exp(g_T) S_{T-1}>

    dstates = torch.empty(B * H, NS, K, V, **f32)  # reversed segments
    dseg_decay = torch.empty(B * H, NS, **f32)
    dh0 = torch.empty(B, H, K, V, **f32)
    _segment_grad_states_kernel[(B * H, NS, NV)](
        q, do, g, dstates, dseg_decay, T, H, HK, NS, L, scale, K=K, V=V, BK=BK, BV=BV, PREC=prec
    )
    dht = dht.float().contiguous() if dht is not None else None
    _scan_states_kernel[(B * H, triton.cdiv(K * V, 256))](
        dstates, dseg_decay, dht if dht is not None else dh0, dh0, NS, K=K, V=V, E=256, U=16, HAS_H0=dht is not None, num_warps=4
    )
    _segment_dq_kernel[(B * H, NS, NV)](
        q, k, v, g, do, states, dht if dht is not None else dh0, dq, dgq, dg_last, T, H, HK, NS, L, scale, B * T,
        K=K, V=V, BK=BK, BV=BV, PREC=prec, HAS_DHT=dht is not None, PART=part,
    )
    _segment_dkv_kernel[(B * H, NS, NV)](
        q, k, v, g, do, dstates, dk, dv, dgk, T, H, HK, NS, L, scale, B * T, K=K, V=V, BK=BK, BV=BV, PREC=prec, PART=part,
    )
    if part:  # fp32 sums over the V blocks and the value heads of each key head
        dq, dk = (x.view(NV, B, T, HK, H // HK, K).sum((0, 4), dtype=torch.float32) for x in (dq, dk))

    if dht is not None:
        dgq[0, :, -1] += dg_last.sum(0).view(B, H)
    BH = triton.next_power_of_2(H)
    TB = 16 if _INTERPRET else max(16, min(256, 16384 // BH))  # tokens per tile of the reverse cumulative sum; tests cross tiles
    NB = triton.cdiv(T, TB)
    carry = torch.empty(B, H, NB, **f32)  # per tile and head: its sum, then the sum over the tiles after it
    dg = torch.empty(B, T, H, **f32)
    _decay_grad_kernel[(B, NB)](dgq, dgk, carry, dg, T, H, NV, B * T, TB=TB, BH=BH, APPLY=False, num_warps=8)
    carry = F.pad(carry.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))  # along the last axis: a parallel scan in torch
    _decay_grad_kernel[(B, NB)](dgq, dgk, carry.contiguous(), dg, T, H, NV, B * T, TB=TB, BH=BH, APPLY=True, num_warps=8)
    return dq, dk, dv, dg, dh0 if h0 is not None else None


class _ChunkScalarDecay(torch.autograd.Function):
    """The Triton forward, saving the states entering each segment for the Triton backward."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, chunk_size, segment_length):
        o, ht, states = _chunk_scalar_decay_fwd(q, k, v, g, h0, scale, chunk_size, segment_length)
        ctx.save_for_backward(q, k, v, g, h0, states)
        ctx.config = (scale, segment_length)
        ctx.set_materialize_grads(False)  # an unused final state's gradient arrives as None: no work for it
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, states = ctx.saved_tensors
        do = torch.zeros_like(v, dtype=q.dtype) if do is None else do
        dq, dk, dv, dg, dh0 = _chunk_scalar_decay_bwd(q, k, v, g, h0, states, do, dht, *ctx.config)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype), None if h0 is None else dh0.to(h0.dtype), None, None, None


def chunk_scalar_decay(q, k, v, g, h0=None, scale=None, chunk_size=64):
    """Same contract as `chunk_scalar_decay_ref` (see its shape table), on a GPU through Triton, with
    a Triton backward under autograd (gradients to q, k, v, g and h0).

    Returns (o (B, T, H, V) in q's dtype, final state (B, H, K, V) fp32). T need not be a multiple of
    `chunk_size` (a power of two >= 16).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    L = _segment_length(v.shape[0] * v.shape[2], v.shape[1], chunk_size)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, h0)):
        return _ChunkScalarDecay.apply(q, k, v, g, h0, scale, chunk_size, L)
    o, ht, _ = _chunk_scalar_decay_fwd(q, k, v, g, h0, scale, chunk_size, L)
    return o, ht
