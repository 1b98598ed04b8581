"""altbench's Triton kernels on a CUDA GPU beside their peers: scalar-decay linear attention and
Mamba's selective scan, forward and forward+backward.

For B=1, H=32 heads of D=64, bf16, at each length L (1K ... 1M tokens), times the forward of

    ours            altbench.kernels.chunk_scalar_decay (H=32, K=V=64)
    fla             fla.ops.simple_gla.chunk_simple_gla, the same op (fla 0.6.0)
    mamba_ssm       mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined: 64 heads x 64,
                    d_state 128, one group (B, C shared by all heads), chunk 256, as in
                    shared/ANCHORS.md section 1
    ours, SSD shape the same problem as mamba_ssm through our kernel: H=64, K=128, V=64, with
                    q, k per head (x3 the bytes) and with q = C, k = B shared like mamba_ssm's
    sdpa            torch.nn.functional.scaled_dot_product_attention(is_causal=True), (1, 32, L, 64)

and forward+backward ("fwd+bwd": the forward, then torch.autograd.grad of the output against a
fixed random gradient, with respect to every input: q, k, v, g; x, dt, A, B, C) of ours, ours SSD
shape (q k shared), fla and mamba_ssm SSD. The selective scan (Mamba-1, the 130m layer: Di=1536,
N=16, bf16 u, Delta, B, C; fp32 A, D) is timed forward and forward+backward (gradients to u, Delta,
A, B, C, D) as

    ours selective_scan        altbench.kernels.selective_scan
    mamba_ssm selective_scan_fn mamba_ssm.ops.selective_scan_interface.selective_scan_fn (its CUDA
                               extension selective_scan_cuda; its own layout, u, Delta (B, Di, L),
                               B, C (B, N, L), transposed before timing); a `not installed` row
                               naming the missing piece when it cannot be imported

Before timing, each of our kernel's rows is checked at L=4K against a float64 chunked computation
in torch (itself first checked against the fp32 loop `chunk_scalar_decay_ref` at L=256), and at
the longest length >= 256K on two heads (the first and the last, whose offsets are largest)
against the same float64 computation; relative errors ||out - ref|| / ||ref|| are printed. The
fwd+bwd rows of ours are checked at L=4K on all heads, output and every gradient, against the same
float64 computation through torch.autograd; the selective scan at L=1K (two 512-token segments)
against the fp32 loop `selective_scan_ref` through torch.autograd. A check over its tolerance
(CHECK_TOL) makes every cell of that op an `error` row naming the measured error, with no time.

Each peer runs in its own worker process, so an ImportError, an out-of-memory or an illegal
memory access (which poisons the CUDA context) becomes a row and the sweep goes on. Timing:
`triton.testing.do_bench` median (it flushes L2 before every repetition); the first call of each
cell (compile + autotune for Triton kernels, cuDNN / cuBLAS setup for SDPA) is timed on its own
and reported apart. Cells whose first call takes over a second are timed over 2 more calls.
Cells under 5 ms are also timed replayed from a CUDA graph, which removes host launch cost (the
bound below about 16K tokens for every op here).

The device's ceilings are measured in the same run: a 1 GiB device-to-device copy (bytes read +
written / time) and a bf16 8192^3 matmul. Each row's floor is the bytes its inputs and outputs
must cross once (q, k, v, g read, o written) over that copy bandwidth; for fwd+bwd, those of the
forward and of the backward (q, k, v, g, do read; dq, dk, dv, dg written).

    python benchmarks/kernels.py [--lengths 1K,4K,16K,64K,256K,1M] [--quick] [--out FILE]

Writes a Markdown table to stdout and the rows as JSON to --out, else $OUT/kernels.json when OUT
is set, else ./kernels.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback

LENGTHS = "1K,4K,16K,64K,256K,1M"
QUICK_LENGTHS = "1K,16K,256K"
CHECK_LENGTH = 4096
LONG_CHECK_MIN = 256 * 1024
GRAPH_BELOW_MS = 5.0  # cells faster than this are also timed replayed from a CUDA graph

# name -> (heads H, key heads Hk, K, V): the problem each "ours" row solves
OURS = {
    "ours": (32, 32, 64, 64),
    "ours SSD shape (q k per head)": (64, 64, 128, 64),
    "ours SSD shape (q k shared)": (64, 1, 128, 64),
}
BWD = " fwd+bwd"  # suffix of the forward+backward ops
SCAN_OPS = ["ours selective_scan", "mamba_ssm selective_scan_fn"]
SCAN_SHAPE = (1536, 16)  # Di, N: Mamba 130m's layer
OPS = [
    "ceilings", *OURS, "fla chunk_simple_gla", "mamba_ssm SSD", "sdpa causal",
    "ours" + BWD, "ours SSD shape (q k shared)" + BWD, "fla chunk_simple_gla" + BWD, "mamba_ssm SSD" + BWD,
    *SCAN_OPS, *(op + BWD for op in SCAN_OPS),
]
CHECK_TOL = {"o": 1e-2, "grad": 3e-2}  # relative to float64 / fp32 references; bf16 rounding is ~3e-3


def parse_length(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(s[-1], 1)
    return int(s.rstrip("KM")) * mult


def fmt_length(L: int) -> str:
    return f"{L >> 20}M" if L % (1 << 20) == 0 else f"{L >> 10}K" if L % 1024 == 0 else str(L)


# --- worker side (imports torch) ---------------------------------------------------------------


def emit(**row):
    print("ROW " + json.dumps(row), flush=True)


def import_ours():
    """`altbench.kernels.chunk_scalar_decay`, also from a checkout that was never pip-installed
    (the folder kernels/ becomes altbench.kernels only through the install's package-dir)."""
    try:
        from altbench.kernels import chunk_scalar_decay
    except ModuleNotFoundError:
        import altbench

        altbench.__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from altbench.kernels import chunk_scalar_decay
    return chunk_scalar_decay


def import_selective_scan():
    """`altbench.kernels.selective_scan`, as `import_ours`."""
    import_ours()
    from altbench.kernels import selective_scan

    return selective_scan


def cuda_fault(message: str) -> bool:
    """An error after which the CUDA context cannot be trusted (illegal address, launch failure)."""
    return any(s in message for s in ("CUDA error", "illegal memory access", "cudaError", "CUBLAS_STATUS", "unspecified launch failure"))


def timed(fn, warmup_ms, rep_ms):
    """(first-call seconds, steady-state median ms)."""
    import torch
    from triton.testing import do_bench

    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t
    if first > 1.0:  # do_bench would spend 5 calls on its estimate: take 2 event-timed calls
        times = []
        for _ in range(2):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return first, statistics.median(times)
    return first, do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def graph_timed(fn, warmup_ms, rep_ms):
    """Median ms of `fn` replayed from a CUDA graph: the device time without host launch cost."""
    import torch
    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def scalar_decay_inputs(L, H, Hk, K, V, decay_bias=5.0, seed=0):
    """bf16 q, k (1, L, Hk, K), v (1, L, H, V); fp32 g = logsigmoid(N(decay_bias, 1)) (mean about
    -0.01: a state that remembers hundreds of tokens, across many chunks)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, L, Hk, K, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, L, Hk, K, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, L, H, V, device="cuda", dtype=torch.bfloat16, generator=gen)
    g = F.logsigmoid(torch.randn(1, L, H, device="cuda", generator=gen) + decay_bias)
    return q, k, v, g


def selective_scan_inputs(L, seed=0):
    """Mamba 130m's layer at batch 1: bf16 u, Delta = softplus(N(-3, 1)), B, C; fp32 A = -exp(N(0, 1)), D."""
    import torch
    import torch.nn.functional as F

    Di, N = SCAN_SHAPE
    gen = torch.Generator(device="cuda").manual_seed(seed)
    u = torch.randn(1, L, Di, device="cuda", generator=gen).bfloat16()  # (B, L, Di)
    delta = F.softplus(torch.randn(1, L, Di, device="cuda", generator=gen) - 3).bfloat16()  # (B, L, Di)
    A = -torch.exp(torch.randn(Di, N, device="cuda", generator=gen))  # (Di, N)
    Bm = torch.randn(1, L, N, device="cuda", generator=gen).bfloat16()  # (B, L, N)
    Cm = torch.randn(1, L, N, device="cuda", generator=gen).bfloat16()  # (B, L, N)
    D = torch.randn(Di, device="cuda", generator=gen)  # (Di,)
    return u, delta, A, Bm, Cm, D


def forward_backward(forward, inputs):
    """A call that runs `forward` (returning one tensor) and the gradients of that tensor, against a
    fixed random gradient, with respect to `inputs` (made leaves that require grad)."""
    import torch

    leaves = [x.detach().requires_grad_() for x in inputs]
    out = forward(*leaves)
    grad = torch.randn(out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(7)).to(out.dtype)
    del out
    return lambda: torch.autograd.grad(forward(*leaves), leaves, grad)


def reference_f64(q, k, v, g, scale, chunk=64):
    """The op in float64 by chunks: a check for long L, where the fp32 loop is too slow.
    q, k: (B, T, H, K) (already one per head), v: (B, T, H, V), g: (B, T, H) -> o (B, T, H, V), S_T."""
    import torch
    import torch.nn.functional as F

    B, T, H, K = q.shape
    V = v.shape[-1]
    pad = -T % chunk
    q, k, v, g = (F.pad(x.double(), (0, 0) * (x.dim() - 2) + (0, pad)) for x in (q, k, v, g))
    N = q.shape[1] // chunk
    q, k = (x.reshape(B, N, chunk, H, K) for x in (q, k))
    v = v.reshape(B, N, chunk, H, V)
    G = g.reshape(B, N, chunk, H).cumsum(2)  # (B, N, C, H): log-decay from each chunk's start
    i = torch.arange(chunk, device=q.device)
    causal = (i[:, None] >= i[None, :])[None, None, :, :, None]  # (1, 1, C, C, 1)
    gap = (G[:, :, :, None] - G[:, :, None, :]).masked_fill(~causal, -math.inf)  # (B, N, Ci, Cj, H)
    scores = torch.einsum("bnihk,bnjhk->bnijh", q, k) * gap.exp()
    o = torch.einsum("bnijh,bnjhv->bnihv", scores, v)  # (B, N, C, H, V), inside each chunk
    own = torch.einsum("bnch,bnchk,bnchv->bnhkv", (G[:, :, -1:] - G).exp(), k, v)  # (B, N, H, K, V)
    S = q.new_zeros(B, H, K, V)
    entering = torch.empty_like(own)
    for n in range(N):
        entering[:, n] = S
        S = G[:, n, -1].exp()[..., None, None] * S + own[:, n]
    o = o + torch.einsum("bnchk,bnhkv->bnchv", q * G.exp()[..., None], entering)
    return scale * o.reshape(B, N * chunk, H, V)[:, :T], S


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def check_ours(name, H, Hk, K, V, lengths, quick):
    """Relative errors of our kernel at 4K (all heads) and at the longest length >= 256K (2 heads);
    for the first variant, of the float64 reference against the fp32 loop first. Returns (False
    after a CUDA fault, else True; a message naming the errors over CHECK_TOL, or "")."""
    import torch

    csd = import_ours()
    scale = K**-0.5
    checks = [("reference", 256)] if name == "ours" else []
    checks.append(("kernel", CHECK_LENGTH))
    failed = ""
    long = [L for L in lengths if L >= LONG_CHECK_MIN]
    if long and not quick:
        checks.append(("kernel", max(long)))
    for what, L in checks:
        heads = list(range(H)) if L <= CHECK_LENGTH else [0, H - 1]
        label = "float64 chunked reference vs fp32 loop" if what == "reference" else name
        q = k = v = g = o = S = ref_o = ref_S = None
        try:
            if what == "reference":
                q, k, v, g = scalar_decay_inputs(L, 4, 4, K, V, seed=1)
                heads = list(range(4))
                o, S = csd.chunk_scalar_decay_ref(q, k, v, g)
                o = o.float()
            else:
                q, k, v, g = scalar_decay_inputs(L, H, Hk, K, V, seed=2)
                o, S = csd.chunk_scalar_decay(q, k, v, g)
                sel = torch.tensor(heads, device="cuda")
                kh = sel // (H // Hk)
                o, S = o[:, :, sel], S[:, sel]
                q, k, v, g = q[:, :, kh], k[:, :, kh], v[:, :, sel], g[:, :, sel]
            ref_o, ref_S = reference_f64(q, k, v, g, scale)
            o_err, S_err, finite = rel_err(o, ref_o), rel_err(S, ref_S), bool(torch.isfinite(o).all())
            emit(kind="check", op=label, L=L, heads=heads, o_rel_err=o_err, state_rel_err=S_err, finite=finite)
            if not (finite and max(o_err, S_err) <= CHECK_TOL["o"]):
                failed = f"numerical check failed at L={fmt_length(L)}: o rel err {o_err:.2e}, state {S_err:.2e}, finite {finite}"
        except Exception as e:  # noqa: BLE001 - a failed check is a row, not a crash
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            emit(kind="check", op=label, L=L, heads=heads, status="error", message=msg)
            failed = "numerical check raised " + msg
            if cuda_fault(msg):
                return False, failed
        finally:
            q = k = v = g = o = S = ref_o = ref_S = None
            free_cache()
    return True, failed


def check_ours_backward(name, H, Hk, K, V):
    """Relative errors of o and of dq, dk, dv, dg of our kernel at 4K, all heads, against the float64
    chunked computation through torch.autograd. Returns (ok, message)."""
    import torch

    csd = import_ours()
    q, k, v, g = scalar_decay_inputs(CHECK_LENGTH, H, Hk, K, V, seed=3)
    do = torch.randn(v.shape, device="cuda", dtype=v.dtype, generator=torch.Generator(device="cuda").manual_seed(4))
    inputs = [x.detach().requires_grad_() for x in (q, k, v, g)]
    o, _ = csd.chunk_scalar_decay(*inputs)
    grads = torch.autograd.grad(o, inputs, do)
    ref_inputs = [x.detach().double().requires_grad_() for x in (q, k, v, g)]
    per_head = [x.repeat_interleave(H // Hk, dim=2) for x in ref_inputs[:2]]  # q, k per value head
    ref_o, _ = reference_f64(*per_head, *ref_inputs[2:], K**-0.5)
    ref_grads = torch.autograd.grad(ref_o, ref_inputs, do.double())
    errs = {"o": rel_err(o, ref_o)} | {f"d{n}": rel_err(a, b) for n, a, b in zip("qkvg", grads, ref_grads)}
    return emit_check(name + BWD, CHECK_LENGTH, list(range(H)), errs)


def check_selective_scan(backward, L=1024):
    """Relative errors of y, h_T (and of every gradient) of our selective scan against the fp32 loop
    at L tokens, through torch.autograd. Returns (ok, message)."""
    import torch

    sel = import_selective_scan()
    inputs = selective_scan_inputs(L, seed=1)
    leaves = [x.detach().requires_grad_(backward) for x in inputs]
    ref_leaves = [x.detach().requires_grad_(backward) for x in inputs]
    with torch.set_grad_enabled(backward):
        y, h = sel.selective_scan(*leaves)
        ref_y, ref_h = sel.selective_scan_ref(*ref_leaves)
    errs = {"y": rel_err(y, ref_y), "h_T": rel_err(h, ref_h)}
    if backward:
        dy = torch.randn(y.shape, device="cuda", dtype=y.dtype, generator=torch.Generator(device="cuda").manual_seed(2))
        grads = torch.autograd.grad(y, leaves, dy)
        ref_grads = torch.autograd.grad(ref_y, ref_leaves, dy)
        errs |= {f"d{n}": rel_err(a, b) for n, a, b in zip(("u", "delta", "A", "B", "C", "D"), grads, ref_grads)}
    return emit_check("ours selective_scan" + (BWD if backward else ""), L, None, errs)


def emit_check(op, L, heads, errs):
    """One check row with every relative error; (ok, message naming the errors over CHECK_TOL)."""
    bad = {n: e for n, e in errs.items() if not math.isfinite(e) or e > CHECK_TOL["o" if n in ("o", "y", "h_T") else "grad"]}
    emit(kind="check", op=op, L=L, heads=heads, errors=errs, status="error" if bad else "ok",
         message="; ".join(f"{n} rel err {e:.2e}" for n, e in bad.items()))
    return not bad, "numerical check failed at L=" + fmt_length(L) + ": " + "; ".join(f"{n} {e:.2e}" for n, e in bad.items()) if bad else ""


def free_cache():
    import torch

    try:
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - after a fault; the caller reports the fault itself
        pass


def make_cell(op, L):
    """(fn, bytes that must cross memory once) for one cell; raises if the peer is missing."""
    import torch
    import torch.nn.functional as F

    if op.endswith(BWD):
        return make_backward_cell(op[: -len(BWD)], L)
    if op in SCAN_OPS:
        fn, inputs = scan_call(op, L)
        return lambda: fn(*inputs), scan_bytes(L, backward=False)
    if op in OURS:
        chunk_scalar_decay = import_ours().chunk_scalar_decay
        H, Hk, K, V = OURS[op]
        q, k, v, g = scalar_decay_inputs(L, H, Hk, K, V)
        nbytes = 2 * (q.numel() + k.numel() + 2 * v.numel()) + 4 * g.numel()
        return lambda: chunk_scalar_decay(q, k, v, g), nbytes
    if op == "fla chunk_simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla

        q, k, v, g = scalar_decay_inputs(L, 32, 32, 64, 64)
        nbytes = 2 * (q.numel() + k.numel() + 2 * v.numel()) + 4 * g.numel()
        return lambda: chunk_simple_gla(q, k, v, g=g, scale=64**-0.5, output_final_state=True), nbytes
    if op == "mamba_ssm SSD":
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(1, L, 64, 64, device="cuda", dtype=torch.bfloat16, generator=gen)  # (B, L, H, P)
        dt = F.softplus(torch.randn(1, L, 64, device="cuda", generator=gen) - 4)  # (B, L, H)
        A = -torch.rand(64, device="cuda", generator=gen) - 0.5  # (H,)
        Bm = torch.randn(1, L, 1, 128, device="cuda", dtype=torch.bfloat16, generator=gen)  # (B, L, G, N)
        Cm = torch.randn(1, L, 1, 128, device="cuda", dtype=torch.bfloat16, generator=gen)  # (B, L, G, N)
        nbytes = 2 * (2 * x.numel() + Bm.numel() + Cm.numel()) + 4 * dt.numel()
        return lambda: mamba_chunk_scan_combined(x, dt, A, Bm, Cm, chunk_size=256, return_final_states=True), nbytes
    if op == "sdpa causal":
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, 32, L, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 2 * 4 * q.numel()
    raise ValueError(op)


def scan_call(op, L):
    """(forward returning y, its inputs) for a selective-scan op, in the op's own layout."""
    if op == "ours selective_scan":
        selective_scan = import_selective_scan().selective_scan
        return (lambda *x: selective_scan(*x)[0]), selective_scan_inputs(L)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as e:
        missing = getattr(e, "name", None) or "mamba_ssm"
        raise ImportError(f"{missing} cannot be imported ({type(e).__name__}: {e}); mamba_ssm with its CUDA extension is needed") from None
    u, delta, A, Bm, Cm, D = selective_scan_inputs(L)
    layout = [x.transpose(1, 2).contiguous() for x in (u, delta, Bm, Cm)]  # (B, Di, L), (B, N, L)
    return (lambda u, delta, A, B, C, D: selective_scan_fn(u, delta, A, B, C, D, return_last_state=True)[0]), (
        layout[0], layout[1], A, layout[2], layout[3], D)


def scan_bytes(L, backward):
    """u, Delta, B, C read and y written (bf16); fwd+bwd adds u, Delta, B, C, dy read and du, dDelta, dB, dC written."""
    Di, N = SCAN_SHAPE
    return 2 * L * ((3 * Di + 2 * N) + ((5 * Di + 4 * N) if backward else 0))


def make_backward_cell(op, L):
    """(fwd+bwd fn, bytes) for the forward op `op`."""
    import torch
    import torch.nn.functional as F

    if op in SCAN_OPS:
        fn, inputs = scan_call(op, L)
        return forward_backward(fn, inputs), scan_bytes(L, backward=True)
    if op in OURS:
        chunk_scalar_decay = import_ours().chunk_scalar_decay
        q, k, v, g = scalar_decay_inputs(L, *OURS[op])
        return forward_backward(lambda *x: chunk_scalar_decay(*x)[0], (q, k, v, g)), scalar_decay_backward_bytes(q, k, v, g)
    if op == "fla chunk_simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla

        q, k, v, g = scalar_decay_inputs(L, 32, 32, 64, 64)
        fn = lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g, scale=64**-0.5, output_final_state=True)[0]  # noqa: E731
        return forward_backward(fn, (q, k, v, g)), scalar_decay_backward_bytes(q, k, v, g)
    if op == "mamba_ssm SSD":
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(1, L, 64, 64, device="cuda", dtype=torch.bfloat16, generator=gen)  # (B, L, H, P)
        dt = F.softplus(torch.randn(1, L, 64, device="cuda", generator=gen) - 4)  # (B, L, H)
        A = -torch.rand(64, device="cuda", generator=gen) - 0.5  # (H,)
        Bm = torch.randn(1, L, 1, 128, device="cuda", dtype=torch.bfloat16, generator=gen)  # (B, L, G, N)
        Cm = torch.randn(1, L, 1, 128, device="cuda", dtype=torch.bfloat16, generator=gen)  # (B, L, G, N)
        fn = lambda x, dt, A, B, C: mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256)  # noqa: E731
        nbytes = 2 * (5 * x.numel() + 3 * Bm.numel() + 3 * Cm.numel()) + 4 * 3 * dt.numel()
        return forward_backward(fn, (x, dt, A, Bm, Cm)), nbytes
    raise ValueError(op)


def scalar_decay_backward_bytes(q, k, v, g):
    """Forward (q, k, v, g read, o written) and backward (q, k, v, g, do read; dq, dk, dv, dg written)."""
    return 2 * (3 * q.numel() + 3 * k.numel() + 5 * v.numel()) + 4 * 3 * g.numel()


def run_ceilings(warmup_ms, rep_ms):
    import torch
    from triton.testing import do_bench

    src = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=warmup_ms, rep=rep_ms, return_mode="median")
    emit(kind="ceiling", op="copy 1 GiB", ms=ms, copy_tb_s=2 * src.numel() * 2 / ms / 1e9)
    del src, dst
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    emit(kind="ceiling", op="matmul bf16 8192^3", ms=ms, matmul_tflop_s=2 * 8192**3 / ms / 1e9)


def worker(op, lengths, quick, check):
    """Runs one op over `lengths`, one ROW line per cell; returns 3 after a CUDA fault."""
    import torch

    warmup_ms, rep_ms = (10, 40) if quick else (25, 100)
    if op == "ceilings":
        run_ceilings(warmup_ms, rep_ms)
        return 0
    failed = ""
    if op in OURS and check:
        fault_free, failed = check_ours(op, *OURS[op], lengths, quick)
        if not fault_free:
            return 3
    if check and (op.startswith("ours") and op.endswith(BWD) or op == "ours selective_scan"):
        try:
            base = op[: -len(BWD)] if op.endswith(BWD) else op
            ok, message = check_selective_scan(op.endswith(BWD)) if base in SCAN_OPS else check_ours_backward(base, *OURS[base])
        except Exception as e:  # noqa: BLE001 - a failed check is a row, not a crash
            ok, message = False, "numerical check raised " + f"{type(e).__name__}: {e}".splitlines()[0][:300]
            emit(kind="check", op=op, L=None, heads=None, status="error", message=message)
            if cuda_fault(message):
                return 3
        finally:
            free_cache()
        failed = "" if ok else message
    for L in lengths:
        if failed:  # no time for a kernel whose numbers are wrong
            emit(kind="cell", op=op, L=L, status="error", message=failed)
            continue
        fn = None
        try:
            fn, nbytes = make_cell(op, L)
            first, ms = timed(fn, warmup_ms, rep_ms)
            row = dict(kind="cell", op=op, L=L, status="ok", ms=ms, first_call_s=first, bytes=nbytes)
            if ms < GRAPH_BELOW_MS:
                try:
                    row["graph_ms"] = graph_timed(fn, warmup_ms, rep_ms)
                except Exception as e:  # noqa: BLE001 - e.g. a host sync inside the op
                    row["graph_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                    torch.cuda.synchronize()
            if op == "sdpa causal":
                row["tflop_s"] = 2 * L * L * 32 * 64 / ms / 1e9  # causal: half of 4 L^2 H D
            emit(**row)
        except ImportError as e:
            emit(kind="cell", op=op, L=L, status="not installed", message=f"{type(e).__name__}: {e}"[:300])
        except torch.cuda.OutOfMemoryError as e:
            emit(kind="cell", op=op, L=L, status="oom", message=str(e).splitlines()[0][:300])
        except Exception as e:  # noqa: BLE001 - every failure is a row
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            emit(kind="cell", op=op, L=L, status="error", message=msg)
            if cuda_fault(msg):
                return 3  # the context is poisoned: the parent starts a fresh worker for the rest
        finally:
            fn = None
            free_cache()
    return 0


# --- parent side (no CUDA) ---------------------------------------------------------------------


def run_op(op, lengths, quick, timeout_s):
    """Rows for `op`, through as many worker processes as its crashes take."""
    rows, todo, check = [], [None] if op == "ceilings" else list(lengths), True
    while todo:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", op, "--lengths", ",".join(str(L) for L in todo if L)]
        cmd += (["--quick"] if quick else []) + ([] if check else ["--skip-check"])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            err, rc = f"timed out after {timeout_s} s", -1
        new = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")]
        rows += new
        done = {r["L"] for r in new if r["kind"] == "cell"}
        todo = [L for L in todo if L not in done]
        if rc == 0 or op == "ceilings":
            if rc != 0:
                rows.append(dict(kind="cell", op=op, L=None, status="error", message=_last_line(err, rc)))
            return rows
        check = False  # the checks ran (or faulted) in the first worker
        if rc != 3 and todo:  # died without a row: the length it was on takes the blame
            rows.append(dict(kind="cell", op=op, L=todo.pop(0), status="error", message=_last_line(err, rc)))
    return rows


def _last_line(err, rc):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else f"exit code {rc}")[:300]


def markdown(rows, lengths):
    ceil = {r["op"]: r for r in rows if r["kind"] == "ceiling"}
    copy_bw = ceil.get("copy 1 GiB", {}).get("copy_tb_s")
    lines = []
    if ceil:
        lines.append(
            "Ceilings: copy 1 GiB " + (f"{copy_bw:.2f} TB/s (read + write)" if copy_bw else "n/a")
            + "; bf16 matmul 8192^3 " + (f"{ceil['matmul bf16 8192^3']['matmul_tflop_s']:.0f} TFLOP/s" if "matmul bf16 8192^3" in ceil else "n/a")
        )
        lines.append("")
    checks = [r for r in rows if r["kind"] == "check"]
    if checks:
        lines += ["| check | L | heads | o rel err | state rel err | |", "|---|---|---|---|---|---|"]
        for r in checks:
            heads = "all" if r.get("heads") is None or len(r["heads"]) > 2 else ",".join(map(str, r["heads"]))
            if "errors" in r:  # fwd+bwd and selective-scan checks: every relative error in one cell
                errs = ", ".join(f"{n} {e:.2e}" for n, e in r["errors"].items())
                lines.append(f"| {r['op']} | {fmt_length(r['L'])} | {heads} | {errs} | | {r['status']}{': ' + r['message'] if r['message'] else ''} |")
            elif r.get("status") == "error":
                lines.append(f"| {r['op']} | {fmt_length(r['L']) if r.get('L') else '–'} | {heads} | – | – | {r['message']} |")
            else:
                lines.append(f"| {r['op']} | {fmt_length(r['L'])} | {heads} | {r['o_rel_err']:.2e} | {r['state_rel_err']:.2e} | {'' if r.get('finite', True) else 'NON-FINITE'} |")
        lines.append("")
    cells = [r for r in rows if r["kind"] == "cell"]
    ops = list(dict.fromkeys(r["op"] for r in cells if r.get("L")))
    lines += ["Median ms, forward, or forward+backward for `fwd+bwd` rows (B=1, bf16; `first` = first call, s):", "",
              "| op | " + " | ".join(fmt_length(L) for L in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for op in ops:
        by_L = {r["L"]: r for r in cells if r["op"] == op}
        lines.append(f"| {op} | " + " | ".join(_short(by_L.get(L)) for L in lengths) + " |")
    lines += ["", "| op | L | ms | graph ms | M tokens/s | floor ms | % of floor | first call s | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in cells:
        if r["status"] == "ok":
            floor = r["bytes"] / (copy_bw * 1e9) if copy_bw else None
            r["floor_ms"] = floor
            r["frac_of_floor"] = floor / r["ms"] if floor else None
            extra = f" ({r['tflop_s']:.0f} TFLOP/s)" if "tflop_s" in r else ""
            graph = f"{r['graph_ms']:.4g}" if "graph_ms" in r else "capture failed" if "graph_error" in r else "–"
            lines.append(
                f"| {r['op']} | {fmt_length(r['L'])} | {r['ms']:.4g} | {graph} | {r['L'] / r['ms'] / 1e3:.1f} | "
                + (f"{floor:.4g} | {100 * floor / r['ms']:.0f}% | " if floor else "– | – | ")
                + f"{r['first_call_s']:.2f} | ok{extra} |"
            )
        else:
            L = fmt_length(r["L"]) if r.get("L") else "–"
            lines.append(f"| {r['op']} | {L} | – | – | – | – | – | – | {r['status']}: {r.get('message', '')} |")
    return "\n".join(lines)


def _short(r):
    if r is None:
        return "–"
    return f"{r['ms']:.3g}" if r["status"] == "ok" else r["status"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default=None, help=f"comma-separated, K = 1024, M = 1024^2 (default {LENGTHS}; --quick: {QUICK_LENGTHS})")
    ap.add_argument("--quick", action="store_true", help="fewer lengths, shorter timing, no 1M check")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of: " + ", ".join(OPS))
    ap.add_argument("--out", default=None, help="JSON file (default $OUT/kernels.json or ./kernels.json)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per worker process")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip-check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    lengths = [parse_length(s) for s in (args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)).split(",") if s.strip()]

    if args.worker:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            return worker(args.worker, lengths, args.quick, check=not args.skip_check)
        except Exception:  # noqa: BLE001 - the parent turns the traceback's last line into a row
            traceback.print_exc()
            return 1

    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(ops) - set(OPS)
    if unknown:
        ap.error(f"unknown ops {sorted(unknown)}; choose from {OPS}")
    out = args.out or os.path.join(os.environ.get("OUT") or ".", "kernels.json")
    rows = []
    for op in ops:  # the JSON is rewritten after each op, so a run cut off by a time limit keeps what it measured
        t = time.time()
        rows += run_op(op, lengths, args.quick, args.timeout)
        print(f"[{op}: {time.time() - t:.0f} s]", file=sys.stderr, flush=True)
        with open(out, "w") as f:
            json.dump({"lengths": lengths, "argv": sys.argv, "rows": rows, "complete": op == ops[-1]}, f, indent=1)
    print(markdown(rows, lengths))
    print(f"\nrows written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
