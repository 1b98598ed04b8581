"""Mamba-1's selective scan (Gu & Dao 2023, arXiv:2312.00752, eq. 2a-2b and Alg. 2), forward and
backward. Without autograd the forward is one pass, `_chunk_scan_kernel` (see "Measured" below for
why); under autograd it is the segmented two-pass walk described first, which also stores the
states the backward starts from.

Per batch b, channel d and state index n, with A diagonal (A[d, n] <= 0) and Delta, B, C
functions of the input:

    h_t[d, n] = exp(Delta_t[d] A[d, n]) h_{t-1}[d, n] + Delta_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] u_t[d]

`selective_scan_ref` (altbench.models.mamba, re-exported here) is that loop in fp32, the ground
truth. `selective_scan` computes the same map with Triton: every program owns a block of BD
channels and all N state entries of each, h in fp32 registers, and walks its tokens in order, CH
tokens per loop iteration (unrolled), one channel per thread (two at BD = 256): the sum over n
stays inside a thread, and no step needs shared memory or a shuffle. exp(Delta A) is computed as
exp2(Delta * A log2(e)), A log2(e) precomputed once. h is two (N / 2, BD) tiles, the even and the
odd n, so that a bf16 row of B or C, which every thread needs whole, loads as N / 2 32-bit words
(8 loads at N = 16, not 16) and splits into fp32 with a shift and a mask. No step waits on memory:
the inputs of the next CH tokens are loaded into registers while the current ones are computed,
and those 32 tokens ahead are pulled into L2 by bulk prefetches (`cp.async.bulk.prefetch.L2`, one
instruction per row of a block; off in the interpreter and where rows are not 16-byte aligned).
The first version of this kernel loaded each token's rows just before using them; its H200 times
(0.83 / 1.29 / 3.51 / 14.0 ms at 4K / 16K / 64K / 256K tokens, Di = 1536, N = 16, bf16) were
about 0.8 us per token of a segment at every length, one memory round trip per token.

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
       B, C. Under autograd it also stores the state entering each of the backward's segments.

Bytes per token (batch 1; s = bytes per element of u, Delta, B, C and y; 2 in bf16). The floor,
reading u, Delta, B, C and writing y once, is (3 Di + 2 N) s: 9,280 bytes at Di = 1536, N = 16
in bf16, 9.7 GB for 1M (2^20) tokens, 3.4 ms at the 2.9 TB/s copy bandwidth chunk_scalar_decay
measured on the H100. With segments, pass 1 reads u, Delta and B once more: (5 Di + 3 N) s,
15,456 bytes (16.2 GB, 5.6 ms at 1M tokens), plus the segment states, 4 * 4 N Di bytes per
segment (0.1% at 1M tokens). With one segment the kernel moves the floor.

The op is bound by exponentials before bytes: Di * N exp2 per token and pass, 24,576 at
Di = 1536, N = 16. An H100 or H200 computes 16 exp2 per clock per SM (MUFU.EX2; 4.2e12/s on an
H200's 132 SMs at 1.98 GHz), so one pass over 256K tokens takes at least 1.5 ms of exp2, and the
segmented form, which computes the decays of all but the last segment twice, 3.0 ms. Per state
entry and token the other work is 4 fp32 instructions (Delta A, the decay times h, Delta u B,
C h), and every instruction takes an issue slot: a warp issues 16 MUFU.EX2 per channel and token
in 128 clocks (4 exp2 per clock per SM quarter), in which it may issue 128 instructions. ptxas
for sm_90 (triton 3.7, bf16, N = 16; no spills, no shared memory, no shuffles) gives per channel
and token, loop bodies counted: pass 1 at BD = 256, CH = 2 (127 registers), 112 instructions,
under the 128; pass 3 at BD = 256, CH = 2 (168 registers, 3 programs of 4 warps per SM) 153, and
at BD = 128, CH = 4 (167 registers) 185, over it: the unpacking and loads of B and C rows are
shared by the channels of a thread.

Measured (H200, commit 4ecb254, do_bench median, L2 flushed, beside mamba_ssm's CUDA
`selective_scan_fn` in the same call; B = 1, Di = 1536, N = 16, bf16), at 4K / 16K / 64K / 256K:
this two-pass form 0.402 / 0.889 / 2.59 / 10.3 ms, mamba_ssm 0.118 / 0.512 / 2.04 / 8.04 ms. Its
earlier prediction (3.4 ms at 256K, ~0.1 ms at 4K) was 3-4x off. Its model assumed that the exp2
unit and the other instructions overlap and that the work spreads over every SM. Neither held:
  - A warp issues in order: while the MUFU pipe is busy with its 8-cycle EX2s, the warp's
    independent multiplies behind them wait, and ptxas bunches the EX2s (pass 3 at BD = 256:
    64 EX2 among its first ~280 of 628 instructions a chunk). With 1-3 warps per scheduler the
    EX2 and the rest add up rather than overlap: about (17 + 2 x 8) = 33 issue cycles per warp,
    state entry and token over both passes, where 17 is the instruction count (ptxas: 467 + 628
    per chunk of 2 tokens and 64 entries) and 8 each EX2's share of the pipe. That predicts 6.4 ms
    at 256K and 1.7 ms at 64K, against 10.3 and 2.59 measured: about 1.5x of that sum.
  - Too few warps: 192 programs of 4 warps at 256K (32 segments x 6 blocks of 256) give 60 SMs
    two programs and 72 one; at 4K, 42-96 programs leave most of the 528 schedulers idle, and one
    warp alone runs at about half its issue rate (0.4 ms measured against 0.1 predicted).
  - The second exp2 per entry: the segmented form computes every decay twice, and an EX2 costs
    as much issue time as 8 other instructions.
mamba_ssm's kernel computes each decay once: one block of 128 threads per channel (1536 blocks,
about 3 per SM), 2048 tokens a chunk (16 a thread), a block-wide scan over time of (decay, input)
pairs for each n, the running state carried between chunks; its layout (B, Di, L) puts a
channel's tokens in a row.

The forward without a backward is therefore `_chunk_scan_kernel` (one pass, one launch; the
launcher adds a fp32 copy of B and C padded to whole chunks): one channel a warp, a chunk of
32 x 8 tokens over its 32 lanes, 8 consecutive tokens a lane; per n, each lane walks its tokens
from zero keeping a_t, b_t in registers, a scan over the lanes of (prod a_t, end state) pairs
(shuffles), the lane before passes each sub-chunk its entering state, and the lane walks again
with the kept a_t, b_t, adding C_t h_t. Under autograd the forward stays the two-pass form above
(its pass 3 also stores the states the backward starts from). ptxas (sm_90, triton 3.7, bf16,
N = 16; BD = 4 channels and 4 warps a program, or 2 and 2): 125 registers, no spills, no stack,
no shared memory or barriers in the loop; 1787 instructions per chunk and channel, 14.0 per state
entry and token (FFMA 3.6, FMUL 3.5, LDG 2.1 for the B and C entries, SHFL 1.25 for the scan,
FSEL 0.75) and one EX2 (was 17 and two). Loads of u and Delta fetch a 32-byte sector for 2 bytes
per lane; the program's BD warps read the same sectors, so that L2 supplies 16 / BD times the
bytes (4x at BD = 4, about 9.7 GB at 256K over the forward).

PREDICTION, not measured (H200, same shapes), from the additive model calibrated above (issue
cycles = instructions + 8 per EX2, times 1.5): (14 + 8) / 33 of the two-pass cost per entry, and
a full GPU at every length (384 programs of 4 warps, 125 registers: up to 4 programs an SM, one
wave at B = 1): about 6.9 ms at 256K (8.04 for mamba_ssm: 1.16x its speed), 1.7 ms at 64K
(2.04), 0.43 ms at 16K (0.512), and at 4K 16 chunks a program, about 0.11 ms with the launcher's
small copies, about five kernels of a few us (0.118): over 1.0x at every length, by 5-20%, with
the least margin at 4K. The margin rests on the 1.5x calibration; if the one-pass kernel overlaps
EX2 and the rest better (4 warps per scheduler, interleaved phases), its floor is 14 cycles per
entry: 4.3 ms at 256K.

Layout: u, Delta, y (B, T, Di), B, C (B, T, N), made contiguous (B and C are often views).
Inside, A log2(e) and the states are kept (N, Di), channels contiguous, so a thread's channel is
the fast axis of every load; h0 is transposed on the way in and h_T returned as a transposed view
of a (B, N, Di) buffer.

Offsets: token indices are int64 scalars (B * T * Di may exceed 2^31); within a row, int32.

Backward (`selective_scan` under autograd). With a_t = exp(Delta_t A) and dh_t the gradient with
respect to h_t (dh_T = C_T dy_T + the final state's gradient), a reverse-time scan mirrors the
forward's:

    dh_t = C_t dy_t + a_{t+1} dh_{t+1}                    dh0 = a_1 dh_1
    du_t = sum_n dh_t Delta_t B_t + D dy_t                dD = sum_t dy_t u_t
    dDelta_t = sum_n dh_t (u_t B_t + A a_t h_{t-1})       dA = sum_t dh_t Delta_t a_t h_{t-1}
    dB_t = sum_d dh_t Delta_t u_t                         dC_t = sum_d dy_t h_t

It pairs h_{t-1}, running forwards, with dh_t, running backwards; storing h for every token (the
torch reference's autograd keeps T x Di x N states, which is why Mamba ran out of memory at 4K in a
16K train step) is avoided by recomputation. The backward splits time into its own segments of LG
tokens, finer than the forward's (a power of two >= 4 chunks, grown while B * Di * segments stays
>= 131072: 128 segments of 2048 tokens at 256K, B = 1, Di = 1536; 64 of 64 at 4K), so that each
pass has several waves of programs; the forward's pass 3 stores the state entering each (48 bytes
a token at LG = 2048), and autograd keeps those. Then

    4. `_segment_grad_kernel`, grid (B, Di / BD, S - 1): each segment but the first, backwards from
       a zero gradient at its end, one thread per channel: the gradient it sends to the state
       before it, and its sum of Delta; stored in reversed segment order, so that
    5. `_carry_states_kernel`, the forward's carry over the reversed segments from dh_T, leaves
       the gradient arriving at each segment's end;
    6A. `_segment_kernel` (chunk mode), grid (B, Di / BD, S): the forward's walk from the state
       entering each segment, storing the state every CT = 16 tokens (fp32, B x T/16 x N x Di,
       transient: 6 KB per token at Di = 1536, N = 16);
    6B. `_chunk_grads_kernel`, grid (B, Di / 128, S), one channel a thread: walks the chunks (CT
       tokens) backwards, holding the chunk's u_t Delta_t, Delta_t and dy_t in registers. For each n (a
       loop): the walk forwards from the chunk's start state gives a_t and h_{t-1} for its CT tokens,
       in registers; the walk backwards from the gradient at the chunk's end gives dh_t, and with
       it the chunk's sums over n for du, dDelta, dA's sum over time, and, per token, the
       products that dB and dC sum over channels. Those sums run within each warp as a
       reduce-scatter over shuffles (the 32 lanes' CT = 16 values halved 4 times, about 4
       instructions per value, where a shuffle tree per value takes 10), then over the block's 4
       warps in shared memory, into row i_d of dB, dC partial sums (n_blocks, B, T, N) fp32 that
       the launcher adds (12 rows at Di = 1536: no atomics). B_t[n], C_t[n] are loaded one token a
       lane and passed to all lanes by shuffles. The gradient at the chunk's end and dA wait per n
       in this program's own rows of small buffers between chunks; dh0 is segment 0's last.
       ptxas (sm_90, bf16, N = 16): 255 registers, no spills in the n loop (48 bytes of stack
       outside it), 2 programs of 4 warps per SM.

The walks of passes 4 and 6A load each chunk's rows while the chunk before is computed, as the
forward does (pass 4 loads C entry by entry and keeps one (N, BD) tile).

Counts for the backward, per token at B = 1, Di = 1536, N = 16, bf16:
  exp2: Di N per pass and token in passes 4, 6A and 6B, 73,728 (3 x 24,576); the floor that
  the forward's count gives one pass, 1.5 ms at 256K tokens on an H200, is 4.6 ms for the three.
  Bytes: pass 4 reads Delta, dy, C, 6,176; 6A reads u, Delta, B, 6,176, and writes the chunk
  states, 6,144; 6B reads u, Delta, dy, B, C, 9,280, and the chunk states, 6,144, and writes du,
  dDelta, 6,144, and the partial sums of dB, dC, 2 x 12 x 16 x 4 = 1,536; their sum over blocks
  reads those again; the carry and dA's segment rows, ~200: about 43.5 KB a token, 11.4 GB at 256K,
  3.9 ms at 2.9 TB/s, spread over passes that each take longer in instructions.
  Instructions (ptxas, sm_90, loop bodies, per state entry and token): pass 4 about 7 (BD = 256,
  CH = 2), 6A about 8, 6B 31 (28 in the n loop: 12 for the recurrences and terms, 8 for the
  sums over channels, 2 for the B, C shuffles; 3.4 per chunk outside it): about 47, 9 ms at 256K
  if every issue slot of 132 SMs at 1.98 GHz were used.

Measured before this design (H200, B = 1, Di = 1536, N = 16, bf16; commit ef5c74c's kernel, whose
6B scanned (CT, BD) tiles in parallel over time for each n, 255 registers, with shuffles and
barriers in both scans and the reductions, about 120 instructions per state entry and token,
and added dB, dC by fp32 atomics from 48 channel blocks): forward 0.403 / 0.881 / 2.59 / 10.3 ms,
forward + backward 2.27 / 7.71 / 29 / 116 ms at 4K / 16K / 64K / 256K tokens: the backward about
10x the forward, 1% of its roofline floor.

PREDICTION, not measured (same shapes): 6B at about 60% of the issue rate, 10 ms at 256K, passes
4 and 6A about 3 ms each (at a third of the issue rate, as the forward's walks measured), sums, carry and
launches under 0.5 ms: the backward about 16 ms, forward + backward about 26 ms at 256K (116), and
about 7 / 2.2 / 0.8 ms at 64K / 16K / 4K (29 / 7.71 / 2.27). Untimed here: written on a CPU
machine, checked against the reference in Triton's interpreter, compiled for sm_90 offline. The
autotuner picks BD, CH and warps of passes 1, 3, 4 and 6A per (Di, N, segments, pass) on the first
call; 6B has one configuration.
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
_TARGET_GRAD_CHANNEL_SEGMENTS = 131072  # the same for the backward's passes 4-6B: about 4 waves of 2 programs of 4 warps per SM on 132 SMs
_LOG2E = math.log2(math.e)
_LN2 = tl.constexpr(math.log(2.0))  # A = a2 ln 2, inside the backward kernel

# One thread per channel: BD = 32 * num_warps, or 64 * num_warps (two channels a thread, so each load of
# B and C serves twice the work). The interpreter takes small blocks so tests cover several of them.
_CONFIGS = [
    triton.Config({"BD": 128, "CH": 2}, num_warps=4),
    triton.Config({"BD": 128, "CH": 4}, num_warps=4),
    triton.Config({"BD": 256, "CH": 2}, num_warps=4),
    triton.Config({"BD": 64, "CH": 4}, num_warps=2),
]
_INTERPRET_CONFIGS = [triton.Config({"BD": 16, "CH": 4}, num_warps=1)]
_PREFETCH_TOKENS = 0 if _INTERPRET else 32  # how far ahead of the scan its inputs are pulled into L2 (a DRAM latency, ~1.5 us, is ~8 tokens)


@triton.jit
def _token_inputs(u_seg, dt_seg, b_seg, c_seg, t, live, in_d, j, Di, N: tl.constexpr, BN: tl.constexpr, WORDS: tl.constexpr, WITH_C: tl.constexpr):
    """The inputs of the segment's token t as loaded (`*_seg` point at its first token): u, Delta
    rows (BD,) in their dtype, zeros when not `live` (a step with Delta = 0 leaves h as it is), and
    its B, C rows as `_state_row` (C only WITH_C), read unmasked (t must be in range): a dead step
    multiplies them by 0."""
    m = in_d & live
    t = t.to(tl.int64)  # t * Di may pass 2^31 in a long segment
    u_t = tl.load(u_seg + t * Di, mask=m, other=0.0)
    dt_t = tl.load(dt_seg + t * Di, mask=m, other=0.0)
    b_t = _state_row(b_seg, t, j, N, BN, WORDS)
    if WITH_C:
        c_t = _state_row(c_seg, t, j, N, BN, WORDS)
    else:
        c_t = b_t
    return u_t, dt_t, b_t, c_t


@triton.jit
def _state_seg(ptr, tok0, j, N: tl.constexpr, WORDS: tl.constexpr):
    """Pointers (BN / 2,) into B or C at token row tok0: WORDS (bf16, N even) the 32-bit words of
    its (even, odd) pairs, else its even entries."""
    if WORDS:
        seg = ptr.to(tl.pointer_type(tl.int32)) + tok0 * (N // 2) + j
    else:
        seg = ptr + tok0 * N + 2 * j
    return seg


@triton.jit
def _state_row(seg, t, j, N: tl.constexpr, BN: tl.constexpr, WORDS: tl.constexpr):
    """Row t of B or C after `_state_seg`, as loaded: WORDS: (BN / 2,) 32-bit words, so a row is
    N / 2 loads, not N (every thread loads the whole row); else its (even, odd) entries, (BN / 2,)
    each, in their dtype. Zeros past N."""
    if WORDS:
        if BN == N:
            row = tl.load(seg + t * (N // 2))
        else:
            row = tl.load(seg + t * (N // 2), mask=2 * j < N, other=0)
    else:
        row = (tl.load(seg + t * N, mask=2 * j < N, other=0.0), tl.load(seg + t * N + 1, mask=2 * j + 1 < N, other=0.0))
    return row


@triton.jit
def _split_row(row, WORDS: tl.constexpr):
    """A `_state_row` as its even and odd entries, (BN / 2,) each, in fp32."""
    if WORDS:
        even = (row << 16).to(tl.float32, bitcast=True)  # little-endian: entry 2j is the low half
        odd = (row & -65536).to(tl.float32, bitcast=True)
    else:
        even, odd = row[0].to(tl.float32), row[1].to(tl.float32)
    return even, odd


@triton.jit
def _bulk_prefetch_l2(ptrs, nbytes):
    """Pulls nbytes at each pointer into L2, where nbytes > 0 (16-byte aligned, a multiple of 16),
    without waiting for them: one PTX cp.async.bulk.prefetch (sm_90) per element, no registers."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.u32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptrs, nbytes], dtype=tl.int32, is_pure=False, pack=1,
    )


@triton.jit
def _prefetch_chunk(u, delta, Bm, Cm, tok0, first, n_tok, lane, i_d, Di, BD: tl.constexpr, N: tl.constexpr, CH: tl.constexpr, WITH_C: tl.constexpr):
    """L2 prefetch of the segment's tokens first ... first + CH - 1 (those before n_tok), one bulk
    copy a lane: lane k < CH the u row of token first + k (this block's channels), lane CH + k its
    Delta row, lane 2 CH the B rows of the CH tokens (contiguous), lane 2 CH + 1 their C rows."""
    k = lane % CH
    tok = tok0 + tl.minimum(first + k, n_tok - 1)  # (BD,)
    col = i_d * BD
    cols = tl.minimum(BD, Di - col)
    _bulk_prefetch_l2(u + tok * Di + col, tl.where(lane < CH, cols * u.dtype.element_ty.primitive_bitwidth // 8, 0))
    _bulk_prefetch_l2(delta + tok * Di + col, tl.where((lane >= CH) & (lane < 2 * CH), cols * delta.dtype.element_ty.primitive_bitwidth // 8, 0))
    rows = tl.minimum(CH, n_tok - first) * N
    _bulk_prefetch_l2(Bm + (tok0 + first) * N + 0 * lane, tl.where(lane == 2 * CH, rows * Bm.dtype.element_ty.primitive_bitwidth // 8, 0))
    if WITH_C:
        _bulk_prefetch_l2(Cm + (tok0 + first) * N + 0 * lane, tl.where(lane == 2 * CH + 1, rows * Cm.dtype.element_ty.primitive_bitwidth // 8, 0))


@triton.autotune(configs=_INTERPRET_CONFIGS if _INTERPRET else _CONFIGS, key=["Di", "N", "NS", "OUTPUTS", "CHUNKS"])
@triton.jit
def _segment_kernel(
    u, delta, a2, Bm, Cm, Dv, states, dt_sums, y, ht, chunk_states,  # see `_selective_scan_fwd`, `_bwd` for shapes
    T, Di, NS, L, NCH, chunk_shift,  # tokens, channels, segments, tokens per segment, chunk states per sequence, log2 of a chunk's tokens
    N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, CH: tl.constexpr,
    OUTPUTS: tl.constexpr, LOAD_STATE: tl.constexpr, PREFETCH: tl.constexpr, WORDS: tl.constexpr, CHUNKS: tl.constexpr,
):
    """Pass 1 (OUTPUTS off): own end state and sum of Delta of a segment. Pass 3: y and h_T.
    CHUNKS: also the state entering every 2^chunk_shift tokens (a divisor of L where NS > 1) into
    chunk_states (B, NCH, N, Di), chunk c at row c of its sequence: in pass 3 those entering the
    backward's segments; with OUTPUTS off (the backward's pass 6A) those alone.
    The inputs of chunk k + 1 are loaded while chunk k is computed, and those PREFETCH
    tokens ahead are pulled into L2 (0: off, as in the interpreter, which runs no PTX; the launcher
    turns it on where rows are 16-byte aligned): the walk waits on neither DRAM nor L2. The state is two (BN / 2, BD) tiles, the even and the odd n, so that
    bf16 B, C rows load as 32-bit pairs (WORDS)."""
    i_b, i_d, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0 = i_s * L
    n_tok = tl.minimum(L, T - t0)  # tokens in this segment
    tok0 = i_b.to(tl.int64) * T + t0  # row of the segment's first token in (B*T)
    lane, j, rows = tl.arange(0, BD), tl.arange(0, BN // 2), tl.arange(0, CH)
    cd = i_d * BD + lane
    in_d = cd < Di
    in_e, in_o = (2 * j < N)[:, None] & in_d[None, :], (2 * j + 1 < N)[:, None] & in_d[None, :]
    ne = (2 * j)[:, None] * Di + cd[None, :]  # (BN / 2, BD) offsets of the even n into an (N, Di) matrix
    a2_e = tl.load(a2 + ne, mask=in_e, other=0.0)  # A log2(e); 0 off the edges, so padding decays by 1
    a2_o = tl.load(a2 + ne + Di, mask=in_o, other=0.0)
    state = states + (i_b.to(tl.int64) * NS + i_s) * N * Di + ne
    if LOAD_STATE:
        h_e = tl.load(state, mask=in_e, other=0.0)  # (BN / 2, BD) fp32: even n
        h_o = tl.load(state + Di, mask=in_o, other=0.0)  # odd n
    else:
        h_e = tl.zeros([BN // 2, BD], dtype=tl.float32)
        h_o = tl.zeros([BN // 2, BD], dtype=tl.float32)
    d_skip = tl.load(Dv + cd, mask=in_d, other=0.0)  # (BD,)
    dt_total = tl.zeros([BD], dtype=tl.float32)

    u_seg, dt_seg = u + tok0 * Di + cd, delta + tok0 * Di + cd  # (BD,): the segment's first token
    b_seg, c_seg = _state_seg(Bm, tok0, j, N, WORDS), _state_seg(Cm, tok0, j, N, WORDS)  # (BN / 2,)
    nxt = ()
    for i in tl.static_range(CH):
        nxt = nxt + (_token_inputs(u_seg, dt_seg, b_seg, c_seg, tl.minimum(i, n_tok - 1), i < n_tok, in_d, j, Di, N, BN, WORDS, OUTPUTS),)
    chunk0 = i_b.to(tl.int64) * NCH + (t0 >> chunk_shift)  # the segment's first chunk
    for c0 in range(0, n_tok, CH):
        if PREFETCH > 0:
            if c0 + PREFETCH < n_tok:
                _prefetch_chunk(u, delta, Bm, Cm, tok0, c0 + PREFETCH, n_tok, lane, i_d, Di, BD, N, CH, OUTPUTS)
        if CHUNKS:
            if (c0 & ((1 << chunk_shift) - 1)) == 0:
                at = (chunk0 + (c0 >> chunk_shift)) * N * Di + ne  # (BN / 2, BD) offsets made here, not kept through the walk
                tl.store(chunk_states + at, h_e, mask=in_e)
                tl.store(chunk_states + at + Di, h_o, mask=in_o)
        cur = nxt  # chunk c0's inputs, loaded one iteration ago
        nxt = ()
        for i in tl.static_range(CH):
            t = c0 + CH + i
            nxt = nxt + (_token_inputs(u_seg, dt_seg, b_seg, c_seg, tl.minimum(t, n_tok - 1), t < n_tok, in_d, j, Di, N, BN, WORDS, OUTPUTS),)
        Y = tl.zeros([CH, BD], dtype=tl.float32)
        for i in tl.static_range(CH):
            u_t, dt_t, b_t, c_t = cur[i]
            u_t, dt_t = u_t.to(tl.float32), dt_t.to(tl.float32)  # (BD,)
            x_t = (dt_t * u_t)[None, :]
            b_e, b_o = _split_row(b_t, WORDS)  # (BN / 2,)
            h_e = tl.exp2(dt_t[None, :] * a2_e) * h_e + b_e[:, None] * x_t  # (BN / 2, BD)
            h_o = tl.exp2(dt_t[None, :] * a2_o) * h_o + b_o[:, None] * x_t
            if OUTPUTS:
                c_e, c_o = _split_row(c_t, WORDS)
                y_t = tl.sum(c_e[:, None] * h_e, 0) + tl.sum(c_o[:, None] * h_o, 0) + d_skip * u_t  # (BD,)
                Y = tl.where(rows[:, None] == i, y_t[None, :], Y)  # row i of the chunk (a register pick)
            else:
                dt_total += dt_t
        if OUTPUTS:
            r = c0 + rows
            tl.store(y + (tok0 + r)[:, None] * Di + cd[None, :], Y.to(y.dtype.element_ty), mask=(r < n_tok)[:, None] & in_d[None, :])

    if OUTPUTS:
        last = i_s == NS - 1
        tl.store(ht + i_b.to(tl.int64) * N * Di + ne, h_e, mask=in_e & last)
        tl.store(ht + i_b.to(tl.int64) * N * Di + ne + Di, h_o, mask=in_o & last)
    elif not CHUNKS:
        tl.store(state, h_e, mask=in_e)
        tl.store(state + Di, h_o, mask=in_o)
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


# --- one-pass forward ----------------------------------------------------------------------------

# One channel a warp, its chunk of M * R tokens spread over the warp's M = 32 lanes, R consecutive tokens
# a lane: the interpreter takes 4 lanes of 2 tokens so that tests cover several lanes and chunks.
_CHUNK_CONFIGS = [triton.Config({"BD": 4, "M": 32, "R": 8}, num_warps=4), triton.Config({"BD": 2, "M": 32, "R": 8}, num_warps=2)]
_INTERPRET_CHUNK_CONFIGS = [triton.Config({"BD": 2, "M": 4, "R": 2}, num_warps=2)]
_CHUNK_PAD = max(c.kwargs["M"] * c.kwargs["R"] for c in (_INTERPRET_CHUNK_CONFIGS if _INTERPRET else _CHUNK_CONFIGS))


@triton.jit
def _compose(p1, h1, p2, h2):
    """The step h -> p1 h + h1, then h -> p2 h + h2, as one: h -> p1 p2 h + (p2 h1 + h2)."""
    return p1 * p2, p2 * h1 + h2


@triton.autotune(configs=_INTERPRET_CHUNK_CONFIGS if _INTERPRET else _CHUNK_CONFIGS, key=["Di", "N"])
@triton.jit(do_not_specialize=["channel_stride"])
def _chunk_scan_kernel(
    u, delta, a2, BC, Dv, h0, y, ht,  # u, delta, y (B, T, Di); a2 (N, Di); BC (B, 2, TP, N) fp32, B then C, zero past T; h0, ht (B, N, Di)
    T, TP, Di, channel_stride,  # tokens, padded tokens, channels, 1 (see below)
    N: tl.constexpr, BD: tl.constexpr, M: tl.constexpr, R: tl.constexpr, HAS_H0: tl.constexpr,
):
    """y and h_T in one pass, one exp2 per state entry and token: the program's BD channels, one a
    warp, walk the sequence in chunks of M * R tokens, lane m holding tokens m R ... m R + R - 1.
    For each n: each lane walks its R tokens from a zero state, keeping a_t = exp(Delta_t A) and
    b_t = Delta_t B_t u_t in registers, and gets its sub-chunk's (prod a_t, end state); a scan of
    those pairs over the lanes (`_compose`, shuffles), lane 0's folded with the state entering the
    chunk, gives each sub-chunk's end state; the lane before passes it on (a gather: lane 0 takes
    the chunk's end, the next chunk's entering state), and each lane walks its tokens again from
    it with the kept a_t, b_t, adding C_t h_t to y. Tiles are (BD, M): channels on warps, sub-chunks
    on lanes. channel_stride is 1, passed at run time so that the compiler does not see the
    channels' contiguity and lays the loads of u, Delta out as the scan's tiles (the rows of a
    warp's 32 loads meet in L1 across its program's BD warps) instead of moving every a_t, b_t
    through shared memory."""
    i_b, i_d = tl.program_id(0), tl.program_id(1)
    m = tl.arange(0, M)[None, :]
    cd = i_d * BD + tl.arange(0, BD)[:, None]  # (BD, 1)
    in_d = cd < Di
    first = m == 0
    before_idx = tl.broadcast_to((m + M - 1) % M, (BD, M))  # the lane before; lane 0 takes lane M - 1
    d_skip = tl.load(Dv + cd, mask=in_d, other=0.0)
    a2s, carry = (), ()  # per n: A log2(e) (BD, 1); the state entering the chunk (BD, M), meaningful in lane 0
    for n in tl.static_range(N):
        a2s = a2s + (tl.load(a2 + n * Di + cd, mask=in_d, other=0.0),)
        if HAS_H0:
            carry = carry + (tl.broadcast_to(tl.load(h0 + (i_b.to(tl.int64) * N + n) * Di + cd, mask=in_d, other=0.0), (BD, M)),)
        else:
            carry = carry + (tl.zeros([BD, M], dtype=tl.float32),)
    rows = m * R * Di + cd * channel_stride  # (BD, M) offsets of each sub-chunk's first token in a chunk
    for c0 in range(0, T, M * R):
        first_tok = i_b.to(tl.int64) * T + c0
        u_c, dt_c, y_c = u + first_tok * Di, delta + first_tok * Di, y + first_tok * Di
        b_c = BC + (i_b.to(tl.int64) * 2 * TP + c0 + m * R) * N  # (1, M): B rows of each sub-chunk's first token
        c_c = b_c + TP * N
        dts, xs, ys = (), (), ()  # per token of a sub-chunk: Delta, Delta u, y (BD, M) fp32
        for r in tl.static_range(R):
            live = (c0 + m * R + r < T) & in_d  # past T: Delta = u = 0, a step that keeps h
            dt = tl.load(dt_c + rows + r * Di, mask=live, other=0.0).to(tl.float32)
            u_r = tl.load(u_c + rows + r * Di, mask=live, other=0.0).to(tl.float32)
            dts, xs, ys = dts + (dt,), xs + (dt * u_r,), ys + (d_skip * u_r,)
        after = ()
        for n in tl.static_range(N):
            decays, inputs = (), ()
            for r in tl.static_range(R):
                a = tl.exp2(dts[r] * a2s[n])
                b = tl.load(b_c + r * N + n) * xs[r]
                if r == 0:
                    h, p = b, a
                else:
                    h, p = a * h + b, p * a
                decays, inputs = decays + (a,), inputs + (b,)
            h = tl.where(first, p * carry[n] + h, h)
            _, h_end = tl.associative_scan((p, h), 1, _compose)  # the end state of every sub-chunk
            before = tl.gather(h_end, before_idx, 1)
            h = tl.where(first, carry[n], before)  # the state entering each sub-chunk
            after = after + (before,)
            walked = ()
            for r in tl.static_range(R):
                h = decays[r] * h + inputs[r]
                walked = walked + (ys[r] + tl.load(c_c + r * N + n) * h,)
            ys = walked
        carry = after
        for r in tl.static_range(R):
            tl.store(y_c + rows + r * Di, ys[r].to(y.dtype.element_ty), mask=(c0 + m * R + r < T) & in_d)
    for n in tl.static_range(N):
        tl.store(ht + (i_b.to(tl.int64) * N + n) * Di + cd + 0 * m, carry[n], mask=first & in_d)


# --- backward ------------------------------------------------------------------------------------

# Pass 6B takes one channel a thread (BD = 32 * num_warps) and CT tokens a chunk, and 6A stores the
# state entering every CT tokens (4 N Di / CT bytes per token: 6 KB at Di = 1536, N = 16, CT = 16).
# The interpreter takes small blocks so that tests cover several blocks, lane groups and chunks.
_GRAD_BD, _GRAD_WARPS = (16, 1) if _INTERPRET else (128, 4)
_LANES = 8 if _INTERPRET else 32  # `_sum_over_channels` reduces within groups of this many lanes (a warp), then across groups
_CT = 4 if _INTERPRET else 16
assert all(_CT % c.kwargs["CH"] == 0 for c in _INTERPRET_CONFIGS + _CONFIGS), "6A stores a state every _CT tokens, a whole number of its CH-token steps"


@triton.jit
def _walk_rows(x_seg, z_seg, s_seg, t, live, in_d, in_n, Di, N):
    """The segment's token t as loaded by the backward's walks (pass 4: Delta, dy, C; pass 6A:
    Delta, u, B): two (BD,) channel rows and one (BN,) state row, zeros when not `live`."""
    m = in_d & live
    t = t.to(tl.int64)  # t * Di may pass 2^31 in a long segment
    return tl.load(x_seg + t * Di, mask=m, other=0.0), tl.load(z_seg + t * Di, mask=m, other=0.0), tl.load(s_seg + t * N, mask=in_n & live, other=0.0)


@triton.autotune(configs=_INTERPRET_CONFIGS if _INTERPRET else _CONFIGS, key=["Di", "N"])
@triton.jit
def _segment_grad_kernel(
    delta, a2, Cm, dy, dstates, dt_sums,  # delta, dy (B, T, Di), a2 (N, Di), C (B, T, N); out (B, NS, N, Di), (B, NS, Di), reversed
    T, Di, NS, L,
    N: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, CH: tl.constexpr,
):
    """Pass 4, segments 1 ... NS - 1: the gradient a segment sends to the state before it, from a
    zero gradient at its end (dh_t = C_t dy_t + exp(Delta_{t+1} A) dh_{t+1}, walked backwards),
    and its sum of Delta; stored at segment NS - 1 - s, so the carry kernel runs backwards."""
    i_b, i_d, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2) + 1
    t0 = i_s * L
    n_tok = tl.minimum(L, T - t0)
    tok0 = i_b.to(tl.int64) * T + t0
    cd, cn = i_d * BD + tl.arange(0, BD), tl.arange(0, BN)
    in_d, in_n = cd < Di, cn < N
    in_nd = in_n[:, None] & in_d[None, :]
    nd = cn[:, None] * Di + cd[None, :]
    a2_nd = tl.load(a2 + nd, mask=in_nd, other=0.0)
    e = tl.zeros([BN, BD], dtype=tl.float32)  # the gradient with respect to the state before token t
    dt_total = tl.zeros([BD], dtype=tl.float32)
    dt_seg, dy_seg, c_seg = delta + tok0 * Di + cd, dy + tok0 * Di + cd, Cm + tok0 * N + cn
    n_ch = tl.cdiv(n_tok, CH)
    nxt = ()  # the last chunk's rows, then each chunk's loaded while the one after it is computed
    for i in tl.static_range(CH):
        t = (n_ch - 1) * CH + CH - 1 - i
        nxt = nxt + (_walk_rows(dt_seg, dy_seg, c_seg, tl.minimum(t, n_tok - 1), t < n_tok, in_d, in_n, Di, N),)
    for ci in range(n_ch):
        c0 = (n_ch - 1 - ci) * CH
        cur = nxt
        nxt = ()
        for i in tl.static_range(CH):
            t = c0 - 1 - i  # the chunk before, backwards; below 0 past the segment's start
            nxt = nxt + (_walk_rows(dt_seg, dy_seg, c_seg, tl.maximum(t, 0), t >= 0, in_d, in_n, Di, N),)
        for i in tl.static_range(CH):
            dt_t, dy_t, c_t = cur[i][0].to(tl.float32), cur[i][1].to(tl.float32), cur[i][2].to(tl.float32)  # (BD,), (BD,), (BN,)
            e = tl.exp2(dt_t[None, :] * a2_nd) * (c_t[:, None] * dy_t[None, :] + e)
            dt_total += dt_t
    i_r = NS - 1 - i_s
    tl.store(dstates + (i_b.to(tl.int64) * NS + i_r) * N * Di + nd, e, mask=in_nd)
    tl.store(dt_sums + (i_b.to(tl.int64) * NS + i_r) * Di + cd, dt_total, mask=in_d)


@triton.jit
def _from_lanes(x, CT: tl.constexpr, LANES: tl.constexpr):
    """x (BD,), one element a thread, as CT tensors (BD,): the i-th holds in every thread what lane
    i of its group of LANES lanes holds (a warp shuffle where LANES = 32)."""
    BD: tl.constexpr = x.shape[0]
    rows = tl.reshape(x, (BD // LANES, LANES))
    out = ()
    for i in tl.static_range(CT):
        out = out + (tl.reshape(tl.gather(rows, tl.full((BD // LANES, LANES), i, tl.int32), 1), (BD,)),)
    return out


@triton.jit
def _halve_over_lanes(v, lane, m: tl.constexpr, half: tl.constexpr, LANES: tl.constexpr):
    """One step of `_sum_over_channels` between lanes m apart (partners: lane ^ m, in the same group
    of LANES lanes, a warp shuffle where LANES = 32): of the 2 half values v (BD,) a lane holds, the
    lane with bit m set keeps the upper half and its partner the lower, and each adds the half that
    the other sends; once a lane holds one value (half = 0), both add it."""
    BD: tl.constexpr = v[0].shape[0]
    partner = tl.reshape(lane ^ m, (BD // LANES, LANES))
    if half > 0:
        upper = (lane & m) != 0
        kept = ()
        for j in tl.static_range(half):
            send = tl.reshape(tl.where(upper, v[j], v[j + half]), (BD // LANES, LANES))
            kept = kept + (tl.where(upper, v[j + half], v[j]) + tl.reshape(tl.gather(send, partner, 1), (BD,)),)
        v = kept
    elif m > 0:
        v = (v[0] + tl.reshape(tl.gather(tl.reshape(v[0], (BD // LANES, LANES)), partner, 1), (BD,)),)
    return v


@triton.jit
def _sum_over_channels(v, lane, CT: tl.constexpr, LANES: tl.constexpr):
    """v: CT tensors (BD,), a value per token and channel. Returns (LANES,): element l holds the
    sum over all BD channels of token l // (LANES // CT). Within each group of LANES lanes, a
    reduce-scatter: each step halves the values a lane holds (keeping one half, sending the other
    to its partner, adding what comes back), then the lanes left holding the same token add theirs;
    about 4 instructions per value instead of the 2 log2(LANES) of a shuffle tree per value. Then the
    BD / LANES groups (warps) are summed."""
    BD: tl.constexpr = v[0].shape[0]
    for level in tl.static_range(5):  # LANES <= 32
        v = _halve_over_lanes(v, lane, LANES // (2 ** (level + 1)), CT // (2 ** (level + 1)), LANES)
    return tl.sum(tl.reshape(v[0], (BD // LANES, LANES)), 0)


@triton.jit
def _chunk_grads_kernel(
    u, delta, a2, Bm, Cm, Dv, dy, dstates, chunk_states,  # see `_selective_scan_bwd` for shapes
    du, ddelta, dB_part, dC_part, dA_part, dD_part, dh_carry,
    T, BT, Di, NS, L, NCH,  # BT = B * T: the stride of dB_part, dC_part between channel blocks, in rows
    N: tl.constexpr, BD: tl.constexpr, CT: tl.constexpr, LANES: tl.constexpr,
):
    """Pass 6B: one segment's gradients, one channel a thread, its chunks of CT tokens backwards.
    Per chunk and state index n: the walk forwards from the chunk's start state (6A stored it)
    rebuilds a_t and h_{t-1} in registers, the walk backwards gives dh_t from the gradient at the
    chunk's end, and the chunk's terms are summed; dB, dC over this block's channels into row
    i_d of dB_part, dC_part (n_blocks, B, T, N), which the launcher sums over blocks. The
    gradient at the current chunk's end and dA, per n, wait in dh_carry and dA_part (this
    program's own rows) between chunks; dh_carry ends as the gradient to the segment's entering
    state (dh0 in segment 0)."""
    i_b, i_d, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0 = i_s * L
    n_tok = tl.minimum(L, T - t0)
    tok0 = i_b.to(tl.int64) * T + t0
    cd = i_d * BD + tl.arange(0, BD)
    in_d = cd < Di
    lane = tl.arange(0, BD) % LANES
    token = lane % CT  # the token of its chunk whose B, C entries a lane loads (CT <= LANES)
    summed = tl.arange(0, LANES)  # `_sum_over_channels`: element l holds token l // (LANES // CT), once per LANES // CT elements
    row, first = summed // (LANES // CT), summed % (LANES // CT) == 0
    part = i_b.to(tl.int64) * NS + i_s
    arriving = dstates + (i_b.to(tl.int64) * NS + NS - 1 - i_s) * N * Di + cd  # (BD,) at n = 0: the gradient at the segment's end
    carry = dh_carry + part * N * Di + cd
    dA_row = dA_part + part * N * Di + cd
    sums = (i_d.to(tl.int64) * BT + tok0) * N  # the segment's first token in this block's rows of dB_part, dC_part
    d_skip = tl.load(Dv + cd, mask=in_d, other=0.0)  # (BD,)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    n_ct = tl.cdiv(n_tok, CT)
    for ci in range(n_ct):
        c0 = (n_ct - 1 - ci) * CT
        x, dt, dyc, s_b, s_a = (), (), (), (), ()  # per token of the chunk, (BD,) each
        for i in tl.static_range(CT):
            off = (tok0 + c0 + i) * Di + cd
            m = in_d & (c0 + i < n_tok)  # past the segment's end: Delta = u = dy = 0, a step that passes h and dh on unchanged
            u_i = tl.load(u + off, mask=m, other=0.0).to(tl.float32)
            dt_i = tl.load(delta + off, mask=m, other=0.0).to(tl.float32)
            dy_i = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
            x, dt, dyc = x + (dt_i * u_i,), dt + (dt_i,), dyc + (dy_i,)
            s_b, s_a = s_b + (tl.zeros([BD], dtype=tl.float32),), s_a + (tl.zeros([BD], dtype=tl.float32),)
            dD_acc += dy_i * u_i
        start = chunk_states + (i_b.to(tl.int64) * NCH + (t0 + c0) // CT) * N * Di + cd  # the state entering the chunk
        grad_end = tl.where(ci == 0, arriving, carry)
        live = first & (c0 + row < n_tok)  # (LANES,)
        for n in range(N):
            a2_n = tl.load(a2 + n * Di + cd, mask=in_d, other=0.0)  # (BD,)
            h = tl.load(start + n * Di, mask=in_d, other=0.0)
            g = tl.load(grad_end + n * Di, mask=in_d, other=0.0)  # becomes a_{t+1} dh_{t+1}, the gradient h_t gets from later tokens
            dA = tl.load(dA_row + n * Di, mask=in_d & (ci > 0), other=0.0)
            b = _from_lanes(tl.load(Bm + (tok0 + c0 + token) * N + n, mask=c0 + token < n_tok, other=0.0).to(tl.float32), CT, LANES)  # B_t[n], t in the chunk
            c = _from_lanes(tl.load(Cm + (tok0 + c0 + token) * N + n, mask=c0 + token < n_tok, other=0.0).to(tl.float32), CT, LANES)
            a, h_prev = (), ()
            dC_c = ()
            for i in tl.static_range(CT):
                a_i = tl.exp2(dt[i] * a2_n)
                a, h_prev = a + (a_i,), h_prev + (h,)
                h = a_i * h + b[i] * x[i]
                dC_c = dC_c + (dyc[i] * h,)
            tl.store(dC_part + sums + (c0 + row) * N + n, _sum_over_channels(dC_c, lane, CT, LANES), mask=live)
            dB_c = ()
            new_b, new_a = (), ()
            for i in tl.static_range(CT - 1, -1, -1):
                dh = c[i] * dyc[i] + g  # dh_t
                dB_c = (dh * x[i],) + dB_c
                g = a[i] * dh
                p = g * h_prev[i]  # dh_t exp(Delta_t A) h_{t-1}
                dA += p * dt[i]
                new_b, new_a = (s_b[i] + dh * b[i],) + new_b, (s_a[i] + p * a2_n,) + new_a
            s_b, s_a = new_b, new_a
            tl.store(dB_part + sums + (c0 + row) * N + n, _sum_over_channels(dB_c, lane, CT, LANES), mask=live)
            tl.store(carry + n * Di, g, mask=in_d)
            tl.store(dA_row + n * Di, dA, mask=in_d)
        for i in tl.static_range(CT):
            off = (tok0 + c0 + i) * Di + cd
            m = in_d & (c0 + i < n_tok)
            u_i = tl.load(u + off, mask=m, other=0.0, volatile=True).to(tl.float32)  # loaded again, not kept in registers through the chunk
            tl.store(du + off, (dt[i] * s_b[i] + d_skip * dyc[i]).to(du.dtype.element_ty), mask=m)
            tl.store(ddelta + off, (u_i * s_b[i] + _LN2 * s_a[i]).to(ddelta.dtype.element_ty), mask=m)
    tl.store(dD_part + part * Di + cd, dD_acc, mask=in_d)


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


def _grad_segment_length(batch_channels: int, T: int) -> int:
    """Tokens per segment of the backward's passes 4, 5 and 6B (pass 6A keeps the forward's): a
    power of two >= 4 chunks, grown while B * Di * segments stays >= _TARGET_GRAD_CHANNEL_SEGMENTS;
    T when that is shorter."""
    L = 4 * _CT
    while L < T and batch_channels * triton.cdiv(T, 2 * L) >= _TARGET_GRAD_CHANNEL_SEGMENTS:
        L *= 2
    return min(L, T)


def _bulk_aligned(*tensor_rows) -> bool:
    """Whether every (tensor, row length) starts and keeps its rows at 16-byte multiples, as the
    forward's bulk L2 prefetch needs (also its channel blocks: BD is a multiple of 8)."""
    return all(t.data_ptr() % 16 == 0 and row * t.element_size() % 16 == 0 for t, row in tensor_rows)


def _selective_scan_fwd(u, delta, A, B, C, D, h0, segment_length, grad_segment_length=None):
    """y (B, T, Di), h_T (B, Di, N) and, for the backward (grad_segment_length given), the states
    entering its segments of grad_segment_length tokens (B, NG, N, Di), or None: zeros."""
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
    L, LG = segment_length, grad_segment_length or T
    NS, NG = triton.cdiv(T, L), triton.cdiv(T, LG)
    assert NG == 1 or (LG & (LG - 1) == 0 and (NS == 1 or L % LG == 0)), f"grad_segment_length {LG}: a power of two dividing segment_length {L}"
    BN = max(2, triton.next_power_of_2(N))  # even and odd n: two tiles of BN / 2
    words = B.dtype == torch.bfloat16 and C.dtype == torch.bfloat16 and N % 2 == 0
    prefetch = _PREFETCH_TOKENS if _bulk_aligned((u, Di), (delta, Di), (B, N), (C, N)) else 0
    if NS == 1:  # h0, as (B, 1, N, Di), is the state entering the only segment
        states, dt_sums = (h0 if h0 is not None else ht), ht
    else:
        states = torch.empty(Bsz, NS, N, Di, device=u.device, dtype=torch.float32)
        dt_sums = torch.empty(Bsz, NS, Di, device=u.device, dtype=torch.float32)
        _segment_kernel[lambda meta: (Bsz, triton.cdiv(Di, meta["BD"]), NS - 1)](
            u, delta, a2, B, C, D, states, dt_sums, y, ht, ht, T, Di, NS, L, 0, 0, N=N, BN=BN, OUTPUTS=False, LOAD_STATE=False, PREFETCH=prefetch,
            WORDS=words, CHUNKS=False,
        )
        E = 512  # state entries per carry program: 48 programs at N = 16, Di = 1536
        _carry_states_kernel[(Bsz, triton.cdiv(N * Di, E))](
            states, dt_sums, a2, h0 if h0 is not None else states, NS, Di, N, E=E, HAS_H0=h0 is not None, num_warps=4
        )
    entering = torch.empty(Bsz, NG, N, Di, device=u.device, dtype=torch.float32) if NG > 1 else ht  # stored by pass 3
    _segment_kernel[lambda meta: (Bsz, triton.cdiv(Di, meta["BD"]), NS)](
        u, delta, a2, B, C, D, states, dt_sums, y, ht, entering, T, Di, NS, L, NG, LG.bit_length() - 1, N=N, BN=BN, OUTPUTS=True,
        LOAD_STATE=NS > 1 or h0 is not None, PREFETCH=prefetch, WORDS=words, CHUNKS=NG > 1,
    )
    if NG == 1:  # the backward's only segment starts from h0
        entering = h0[:, None] if h0 is not None else None
    return y, ht.transpose(1, 2), entering


def _chunk_scan_fwd(u, delta, A, B, C, D, h0):
    """y (B, T, Di) and h_T (B, Di, N) in one pass (`_chunk_scan_kernel`), the forward without a backward."""
    Bsz, T, Di = u.shape
    N = A.shape[1]
    assert delta.shape == u.shape, f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}"
    assert A.shape == (Di, N), f"A {tuple(A.shape)} must be (Di, N) = {(Di, N)}"
    assert B.shape == (Bsz, T, N) and C.shape == (Bsz, T, N), f"B {tuple(B.shape)}, C {tuple(C.shape)} must be (B, T, N) = {(Bsz, T, N)}"
    assert D.shape == (Di,), f"D {tuple(D.shape)} must be (Di,) = {(Di,)}"
    assert h0 is None or h0.shape == (Bsz, Di, N), f"h0 {tuple(h0.shape)} must be (B, Di, N) = {(Bsz, Di, N)}"
    assert T > 0 and N <= 64, f"T = {T} must be positive and N = {N} at most 64 (the kernel unrolls its loop over n)"

    u, delta = u.contiguous(), delta.contiguous()
    a2 = (A.float() * _LOG2E).t().contiguous()  # (N, Di)
    TP = triton.cdiv(T, _CHUNK_PAD) * _CHUNK_PAD
    BC = torch.zeros(Bsz, 2, TP, N, device=u.device, dtype=torch.float32)  # B, C in fp32, zero past T: every load in range
    BC[:, 0, :T], BC[:, 1, :T] = B, C
    y = torch.empty_like(u)
    ht = torch.empty(Bsz, N, Di, device=u.device, dtype=torch.float32)
    h0 = h0.float().transpose(1, 2).contiguous() if h0 is not None else None  # (B, N, Di)
    _chunk_scan_kernel[lambda meta: (Bsz, triton.cdiv(Di, meta["BD"]))](
        u, delta, a2, BC, D.float().contiguous(), h0 if h0 is not None else ht, y, ht, T, TP, Di, 1, N=N, HAS_H0=h0 is not None
    )
    return y, ht.transpose(1, 2)


def _selective_scan_bwd(u, delta, A, B, C, D, h0, states, dy, dht, grad_segment_length):
    """Gradients (du, ddelta, dA, dB, dC, dD, dh0 or None) from the forward's inputs, the states
    entering segments of grad_segment_length tokens (B, NG, N, Di) (None: one segment from zeros),
    dy (B, T, Di) and dht (B, Di, N) or None."""
    Bsz, T, Di = u.shape
    N = A.shape[1]
    LG = grad_segment_length
    NG = triton.cdiv(T, LG)
    assert delta.shape == u.shape and dy.shape == u.shape, f"delta {tuple(delta.shape)}, dy {tuple(dy.shape)} must match u {tuple(u.shape)}"
    assert A.shape == (Di, N) and D.shape == (Di,), f"A {tuple(A.shape)}, D {tuple(D.shape)} must be (Di, N), (Di,) = {(Di, N)}, {(Di,)}"
    assert B.shape == (Bsz, T, N) and C.shape == (Bsz, T, N), f"B {tuple(B.shape)}, C {tuple(C.shape)} must be (B, T, N) = {(Bsz, T, N)}"
    assert states is None or states.shape == (Bsz, NG, N, Di), f"states {tuple(states.shape)} must be (B, NG, N, Di) = {(Bsz, NG, N, Di)}"
    assert dht is None or dht.shape == (Bsz, Di, N), f"dht {tuple(dht.shape)} must be (B, Di, N) = {(Bsz, Di, N)}"
    assert NG == 1 or LG % _CT == 0, f"grad_segment_length {LG}: a multiple of the chunk, {_CT} tokens, when T = {T} spans several"

    u, delta, B, C = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
    dy = dy.to(u.dtype).contiguous()
    a2 = (A.float() * _LOG2E).t().contiguous()  # (N, Di)
    D = D.float().contiguous()
    BN = triton.next_power_of_2(N)
    f32 = dict(device=u.device, dtype=torch.float32)
    if states is None:
        states = torch.zeros(Bsz, 1, N, Di, **f32)
    dht = dht.float().transpose(1, 2).contiguous() if dht is not None else None  # (B, N, Di)
    if NG == 1:  # the gradient at the only segment's end is dh_T
        dstates = dht[:, None] if dht is not None else torch.zeros(Bsz, 1, N, Di, **f32)
    else:
        dstates = torch.empty(Bsz, NG, N, Di, **f32)  # reversed: the gradient at the end of segment NG - 1 - r
        dt_sums = torch.empty(Bsz, NG, Di, **f32)
        _segment_grad_kernel[lambda meta: (Bsz, triton.cdiv(Di, meta["BD"]), NG - 1)](
            delta, a2, C, dy, dstates, dt_sums, T, Di, NG, LG, N=N, BN=BN
        )
        _carry_states_kernel[(Bsz, triton.cdiv(N * Di, 512))](
            dstates, dt_sums, a2, dht if dht is not None else dstates, NG, Di, N, E=512, HAS_H0=dht is not None, num_warps=4
        )
    NCH = triton.cdiv(T, _CT)
    chunk_states = torch.empty(Bsz, NCH, N, Di, **f32)  # the state entering every _CT tokens
    words = B.dtype == torch.bfloat16 and C.dtype == torch.bfloat16 and N % 2 == 0
    prefetch = _PREFETCH_TOKENS if _bulk_aligned((u, Di), (delta, Di), (B, N), (C, N)) else 0
    _segment_kernel[lambda meta: (Bsz, triton.cdiv(Di, meta["BD"]), NG)](  # 6A: the forward's walk
        u, delta, a2, B, C, D, states, chunk_states, chunk_states, chunk_states, chunk_states, T, Di, NG, LG, NCH, _CT.bit_length() - 1,
        N=N, BN=max(2, BN), OUTPUTS=False, LOAD_STATE=True, PREFETCH=prefetch, WORDS=words, CHUNKS=True,
    )
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    n_blocks = triton.cdiv(Di, _GRAD_BD)
    dB_part, dC_part = torch.empty(n_blocks, Bsz, T, N, **f32), torch.empty(n_blocks, Bsz, T, N, **f32)  # per channel block
    dA_part, dD_part = torch.empty(Bsz * NG, N, Di, **f32), torch.empty(Bsz * NG, Di, **f32)  # per (batch, segment)
    dh_carry = torch.empty(Bsz, NG, N, Di, **f32)  # per (batch, segment): ends as the gradient to its entering state
    _chunk_grads_kernel[(Bsz, n_blocks, NG)](
        u, delta, a2, B, C, D, dy, dstates, chunk_states, du, ddelta, dB_part, dC_part, dA_part, dD_part, dh_carry,
        T, Bsz * T, Di, NG, LG, NCH, N=N, BD=_GRAD_BD, CT=_CT, LANES=_LANES, num_warps=_GRAD_WARPS,
    )
    dh0 = dh_carry[:, 0].transpose(1, 2) if h0 is not None else None
    return du, ddelta, dA_part.sum(0).t(), dB_part.sum(0).to(B.dtype), dC_part.sum(0).to(C.dtype), dD_part.sum(0), dh0


class _SelectiveScan(torch.autograd.Function):
    """The Triton forward, saving the states entering each segment for the Triton backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, segment_length, grad_segment_length):
        y, ht, states = _selective_scan_fwd(u, delta, A, B, C, D, h0, segment_length, grad_segment_length)
        ctx.save_for_backward(u, delta, A, B, C, D, h0, states)
        ctx.grad_segment_length = grad_segment_length
        ctx.set_materialize_grads(False)  # an unused final state's gradient arrives as None: no work for it
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        u, delta, A, B, C, D, h0, states = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy
        du, ddelta, dA, dB, dC, dD, dh0 = _selective_scan_bwd(u, delta, A, B, C, D, h0, states, dy, dht, ctx.grad_segment_length)
        return du, ddelta, dA.to(A.dtype), dB, dC, dD.to(D.dtype), None if h0 is None else dh0.to(h0.dtype), None, None


def selective_scan(u, delta, A, B, C, D, h0=None):
    """Same contract as `selective_scan_ref`, on a GPU through Triton, with a Triton backward under
    autograd (gradients to u, delta, A, B, C, D and h0):

    u, delta: (B, T, Di)   A: (Di, N)   B, C: (B, T, N)   D: (Di,)   h0: (B, Di, N) or None
    returns y: (B, T, Di) in u's dtype, h_T: (B, Di, N) in fp32 (a transposed view)
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, h0)):
        channels, T = u.shape[0] * u.shape[2], u.shape[1]
        return _SelectiveScan.apply(u, delta, A, B, C, D, h0, _segment_length(channels, T), _grad_segment_length(channels, T))
    return _chunk_scan_fwd(u, delta, A, B, C, D, h0)
