"""A cell's roofline bound: the least time its analytic work can take on the measured device.

    compute_bound_ms  = flops / (bf16 matmul ceiling)        FLOPs from the model's analytic counts
    memory_bound_ms   = bytes_moved / (copy bandwidth)       the fewest bytes the call must move
    roofline_frac     = max(compute_bound_ms, memory_bound_ms) / measured ms

Both ceilings are measured once per run on the device (measure/ceilings.py), so a fraction of 1.0
is the device's limit for that work, whatever the implementation. A cell under
IMPLEMENTATION_BOUND of its bound measures its code, not its architecture: reports label it
"implementation-bound".

`bytes_moved` per timed call, as the measurements count it (measure/scenarios.py):
    decode      weights + state (recurrent state or KV cache), each read once per step
    prefill     weights + the residual stream read and written once per layer + the final state
    kernel      the mixer's input read and its output written
    reasoning   weights + the residual stream read and written once per layer call (HRM: every
                layer of every L- and H-update of every segment) + the carried state
    train_step  fp32 weights read in forward and backward, grads written, AdamW's read and write of
                weights and both moments (32 bytes per parameter), + 2x the prefill's activations
    generate    masked diffusion: N x (weights + the residual stream over L + G tokens, x2 with
                guidance); autoregressive: G x weights + the prefill's activations + G - 1 reads of
                the state at context L + G/2
"""

from __future__ import annotations

IMPLEMENTATION_BOUND = 0.2  # under this fraction of its bound a figure is labelled implementation-bound
IMPLEMENTATION_LABEL = "implementation-bound"


def run_ceilings(env: dict) -> dict | None:
    """The ceilings a run's newest session measured (a resume may run on another machine)."""
    return next((r["ceilings"] for r in reversed(env.get("resumes") or []) if r.get("ceilings")), env.get("ceilings"))


def bounds(row: dict, ceilings: dict | None) -> dict:
    """compute_bound_ms, memory_bound_ms, bound_ms (the larger) and roofline_frac for an ok row of
    a GPU cell; {} where the ceilings or the row's analytic counts are missing."""
    ceilings = ceilings or {}
    if row.get("status") != "ok" or row.get("device") != "cuda" or not row.get("ms_median"):
        return {}
    out = {}
    if row.get("flops") and ceilings.get("matmul_bf16_tflops"):
        out["compute_bound_ms"] = row["flops"] / (ceilings["matmul_bf16_tflops"] * 1e12) * 1e3
    moved = row.get("bytes_moved") or row.get("bytes_per_token")  # decode rows before bytes_moved had the latter
    if moved and ceilings.get("copy_gbs"):
        out["memory_bound_ms"] = moved / (ceilings["copy_gbs"] * 1e9) * 1e3
    if out:
        out["bound_ms"] = max(out.values())
        out["roofline_frac"] = out["bound_ms"] / row["ms_median"]
    return out


def is_implementation_bound(row: dict) -> bool:
    frac = row.get("roofline_frac")
    return frac is not None and frac < IMPLEMENTATION_BOUND


def with_bounds(row: dict, ceilings: dict | None) -> dict:
    """The row with its bounds filled in where it lacks them (stores written before they existed)."""
    if row.get("roofline_frac") is not None:
        return row
    return {**row, **bounds(row, ceilings)}
