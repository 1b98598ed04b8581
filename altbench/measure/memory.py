"""Peak memory of a cell: the CUDA caching allocator's peak on a GPU, the process's peak RSS on a CPU.

Both peaks are reset before the cell starts, so a worker that serves several cells reports each
cell's own: the allocator's statistics, and on Linux the kernel's peak-RSS mark (VmHWM, reset by
writing 5 to /proc/self/clear_refs). The RSS peak includes the interpreter and torch (~0.3 GB).
Where the mark cannot be reset, the row says `process_rss_lifetime`: the peak since the worker
started, an upper bound on the cell's own.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
_rss_mark_reset = False  # whether the last reset_peak on a CPU restarted the kernel's peak-RSS mark


def reset_peak(device: torch.device) -> None:
    global _rss_mark_reset
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")
        _rss_mark_reset = True
    except OSError:
        _rss_mark_reset = False  # not Linux, or not allowed: `peak` falls back to the lifetime peak


def _rss_mark() -> int | None:
    """The kernel's peak-RSS mark (VmHWM) in bytes, or None where /proc does not give it."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def peak(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_mem_bytes": torch.cuda.max_memory_allocated(device), "mem_source": "cuda_allocator"}
    mark = _rss_mark() if _rss_mark_reset else None
    if mark is not None:
        return {"peak_mem_bytes": mark, "mem_source": "process_rss"}
    return {"peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "mem_source": "process_rss_lifetime"}


def device_capacity(device: torch.device) -> int | None:
    """Bytes the allocator may use on `device`; None on a CPU (no prediction-based skipping there)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free
    return None
