"""The results store of a run: one JSON object per line in `<run>/cells.jsonl`, one line per cell.

Rows are appended the moment a cell finishes, each with a single write of a complete line followed
by fsync, so an interrupted run keeps every finished cell and a crash can at worst leave one
partial last line, which `read_rows` ignores. Nothing ever rewrites the file.

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

import json
import math
import os
from pathlib import Path

STORE_FILE = "cells.jsonl"
STATUSES = ("ok", "oom", "error", "timeout", "skipped")
OUTCOMES = (*STATUSES, "diverged")  # diverged: an 'ok' probe row whose training loss turned NaN


def store_path(run_dir: Path) -> Path:
    return Path(run_dir) / STORE_FILE


def _finite(value):
    """NaN / inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def append_row(run_dir: Path, row: dict) -> None:
    """Append one complete line atomically (one write, then fsync)."""
    row = {k: _finite(v) for k, v in row.items()}
    line = (json.dumps(row, default=str, allow_nan=False) + "\n").encode()
    path = store_path(run_dir)
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn line from a crash: end it so this row stays whole
                line = b"\n" + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(run_dir: Path) -> list[dict]:
    """Every complete row, in the order written; a torn final line is skipped."""
    path = store_path(run_dir)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def cell_of(row: dict) -> str:
    """The cell a row belongs to (a probe cell stores one row per scored point, each naming its cell)."""
    return row.get("cell", row["cell_id"])


def latest_rows(run_dir: Path) -> list[dict]:
    """The rows of each cell's last attempt (`--resume --retry` may have run a cell again; the rows of
    one attempt share its started_at), in the order written."""
    rows = read_rows(run_dir)
    last = {cell_of(row): row.get("started_at") for row in rows}
    return list({row["cell_id"]: row for row in rows if row.get("started_at") == last[cell_of(row)]}.values())


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
