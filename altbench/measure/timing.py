"""Steady-state timing: CUDA events on a GPU, `perf_counter` on a CPU.

The first call is timed on its own (`first_call_ms`: compile, autotune, lazy init) and never mixed
into the steady-state samples. Then `warmup` untimed calls, then at least `reps` timed calls (and
at least `min_time_s` of timed work). On a GPU each sample is bracketed by its own pair of events
with the L2 cache flushed in between (outside the events), as `triton.testing.do_bench` does, so
repeated calls do not measure a warm cache. Reported: the median and a distribution-free 95%
interval for it (order statistics, `scipy.stats.quantile_test`); None when there are too few
samples for 95% coverage (fewer than 6).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats

L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2 (H100: 50 MB)


@dataclass
class Timing:
    samples_ms: list[float]
    first_call_ms: float
    warmup: int

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    def interval(self, confidence: float = 0.95) -> tuple[float | None, float | None]:
        x = np.asarray(self.samples_ms)
        ci = stats.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(confidence)
        low, high = float(ci.low), float(ci.high)
        return (None if np.isnan(low) else low), (None if np.isnan(high) else high)

    def row(self) -> dict:
        low, high = self.interval()
        return {
            "ms_median": self.median, "ms_ci_low": low, "ms_ci_high": high, "ms_samples": self.samples_ms,
            "reps": len(self.samples_ms), "warmup": self.warmup, "first_call_ms": self.first_call_ms,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_REPS = 3  # a time budget never cuts a cell below this many samples


def time_calls(
    fn: Callable[[], object], device: torch.device | str, reps: int, warmup: int, min_time_s: float = 0.0,
    flush_l2: bool = True, budget_s: float = 0.0,
) -> Timing:
    """Time `fn()`; see the module docstring for the protocol.

    `budget_s` > 0 bounds the time spent on a slow cell: warm-up calls are dropped when the first
    call shows they would eat more than a quarter of the budget, and repetitions stop once the
    budget is spent (never below MIN_REPS). The row records how many samples were taken.
    """
    device = torch.device(device)
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first_call_ms = (time.perf_counter() - t0) * 1e3
    if budget_s and warmup * first_call_ms > budget_s * 1e3 / 4:
        warmup = 0
    if budget_s:
        reps = max(min(reps, int(budget_s * 1e3 / max(first_call_ms, 1e-3))), MIN_REPS)
    for _ in range(warmup):
        fn()
    _sync(device)

    samples: list[float] = []
    if device.type == "cuda":
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if flush_l2 else None
        while len(samples) < reps or sum(samples) < min_time_s * 1e3:
            n = max(reps - len(samples), 1)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            for start, end in events:
                if flush is not None:
                    flush.zero_()
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize(device)
            samples += [start.elapsed_time(end) for start, end in events]
    else:
        while len(samples) < reps or sum(samples) < min_time_s * 1e3:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(samples, first_call_ms, warmup)
