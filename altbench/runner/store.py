"""What a row of a run's store (`<run>/cells.jsonl`, one JSON object per line) holds, and how to
read its outcome. Reading and writing the file is runner/rundir.py's.

Rows are appended the moment a cell finishes and the file is never rewritten, so an interrupted
run keeps every finished cell.

Row fields (absent when not applicable):
  identity   cell_id, arch, size, backend, measurement, dtype, device, batch, seq_len
  outcome    status ('ok' | 'oom' | 'error' | 'timeout' | 'skipped'), message, traceback; `outcome()`
             adds 'diverged' for a probe whose stored training curve holds a NaN
  timing     ms_median, ms_ci_low, ms_ci_high (95% interval of the median), ms_samples, reps,
             warmup, first_call_ms (compile / autotune / first call, never in the steady state)
  derived    tokens_per_s, tflops (achieved, from flops_per_token), flops, bandwidth_gbs
  memory     peak_mem_bytes, mem_source ('cuda_allocator' | 'process_rss'), predicted_mem_bytes,
             state_bytes, params
  capability task, metric, value, stderr, curve (probes and lm-eval)
  bookkeeping run_id, started_at, wall_s, cuda_graphs, segment, worker_exit_code
"""

from __future__ import annotations

import math

STATUSES = ("ok", "oom", "error", "timeout", "skipped")
OUTCOMES = (*STATUSES, "diverged")  # diverged: an 'ok' probe row whose training loss turned NaN

_NUMBER = (int, float)
# The JSON type of every field a reader indexes into; a row is an object with cell_id and status.
FIELD_TYPES = {
    "cell_id": str, "cell": str, "arch": str, "size": str, "backend": str, "measurement": str, "dtype": str,
    "device": str, "batch": int, "seq_len": int, "status": str, "message": str, "traceback": str, "task": str,
    "metric": str, "run_id": str, "ms_median": _NUMBER, "ms_ci_low": _NUMBER, "ms_ci_high": _NUMBER,
    "ms_samples": list, "reps": int, "warmup": int, "first_call_ms": _NUMBER, "tokens_per_s": _NUMBER,
    "tflops": _NUMBER, "flops": _NUMBER, "bandwidth_gbs": _NUMBER, "peak_mem_bytes": _NUMBER,
    "predicted_mem_bytes": _NUMBER, "state_bytes": _NUMBER, "params": _NUMBER, "value": _NUMBER,
    "stderr": _NUMBER, "curve": list, "started_at": _NUMBER, "wall_s": _NUMBER, "cuda_graphs": bool,
}
REQUIRED = ("cell_id", "status")


def _typed(value, expected) -> bool:
    if isinstance(value, bool) and expected is not bool:
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, expected)


def row_problem(value) -> str | None:
    """Why `value` (a parsed JSON line) is not a row, or None when it is one."""
    if not isinstance(value, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED if k not in value]
    if missing:
        return f"no {missing[0]}"
    wrong = [k for k, t in FIELD_TYPES.items() if value.get(k) is not None and not _typed(value[k], t)]
    if wrong or value["cell_id"] is None or value["status"] is None:
        return f"{(wrong or ['cell_id'])[0]} has the wrong type"
    if not all(s is None or _typed(s, _NUMBER) for s in value.get("ms_samples") or []):
        return "ms_samples holds something other than numbers"
    points = value.get("curve") or []
    if not all(isinstance(p, list) and len(p) == 2 and all(v is None or _typed(v, _NUMBER) for v in p) for p in points):
        return "curve is not a list of [step, loss] points"
    return None


def cell_of(row: dict) -> str:
    """The cell a row belongs to (a probe cell stores one row per scored point, each naming its cell)."""
    return row.get("cell", row["cell_id"])


def diverged_at(row: dict) -> int | None:
    """The first step of a probe's training curve whose loss is not finite (stored as null), or None:
    such a row's accuracy scores a broken model."""
    for step, loss in row.get("curve") or []:
        if loss is None or not math.isfinite(loss):
            return step
    return None


def outcome(row: dict) -> str:
    """The row's status, or 'diverged' for an 'ok' row whose training loss turned NaN."""
    return "diverged" if row.get("status") == "ok" and diverged_at(row) else row.get("status", "unknown")
