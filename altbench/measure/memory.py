"""Peak memory of a cell: the CUDA caching allocator's peak on a GPU, the process's peak RSS on a CPU.

Every cell runs in a fresh worker process, so the RSS peak is that cell's own (plus the
interpreter and torch, ~0.3 GB), and the allocator peak is reset before the cell starts.
"""

from __future__ import annotations

import resource

import torch


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_mem_bytes": torch.cuda.max_memory_allocated(device), "mem_source": "cuda_allocator"}
    return {"peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "mem_source": "process_rss"}


def device_capacity(device: torch.device) -> int | None:
    """Bytes the allocator may use on `device`; None on a CPU (no prediction-based skipping there)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free
    return None
