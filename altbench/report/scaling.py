"""Scaling exponents: how cost grows with sequence length L.

The exponent is the least-squares slope of log(ms) against log(L). Fitted over every length it
would mostly measure fixed overhead: at short lengths a GPU call costs its launch and Python time
whatever L is, so cost is flat, and only past some length does the model's own work dominate.
The fit therefore uses the *compute-bound range*:

    the lengths from the first one whose cost is at least GROWTH (8) times the cheapest
    length's cost, up to the longest length measured.

At 8x the cheapest cost, fixed overhead is at most an eighth of the cost, and it shrinks further
along the range. With a sharp knee (cost = max(overhead, a L^p), which is how a GPU that is not
yet full behaves) the slope over the range is exactly p; with a smooth one (overhead + a L^p) the
leftover overhead biases it low by a few percent (0.96 for p = 1 over 32K..1M, see
tests/test_report.py).

When fewer than two lengths get that far, the exponent is the slope between the two longest
lengths: near 0 when cost never grew out of its overhead (a recurrent model's decode, say), and
the start of the growth when only the longest length did. Failed cells (OOM, error, ...) carry no
cost; callers leave them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROWTH = 8.0  # a length is compute-bound once its cost is this many times the cheapest length's


@dataclass(frozen=True)
class Fit:
    exponent: float  # log-log slope of cost vs L over the range
    first_len: int  # shortest length in the fitted range
    last_len: int  # longest length in the fitted range
    points: int  # lengths in the range


def _points(seq_lens, values) -> tuple[np.ndarray, np.ndarray]:
    """Finite, positive (L, cost) pairs sorted by L; repeated lengths keep their median cost."""
    by_len: dict[int, list[float]] = {}
    for length, value in zip(seq_lens, values):
        if length is None or value is None:
            continue
        length, value = float(length), float(value)
        if np.isfinite(length) and np.isfinite(value) and length > 0 and value > 0:
            by_len.setdefault(int(length), []).append(value)
    lengths = np.array(sorted(by_len), dtype=float)
    costs = np.array([np.median(by_len[int(n)]) for n in lengths], dtype=float)
    return lengths, costs


def compute_bound_range(seq_lens, values, growth: float = GROWTH) -> tuple[np.ndarray, np.ndarray]:
    """The (L, cost) points the exponent is fitted over (see the module docstring), sorted by L."""
    lengths, costs = _points(seq_lens, values)
    if len(lengths) < 2:
        return lengths, costs
    grown = np.nonzero(costs >= growth * costs.min())[0]
    start = int(grown[0]) if len(grown) else len(lengths)
    start = min(start, len(lengths) - 2)
    return lengths[start:], costs[start:]


def fit_scaling(seq_lens, values, growth: float = GROWTH) -> Fit | None:
    """The exponent with the range it was fitted over; None with fewer than two usable lengths."""
    lengths, costs = compute_bound_range(seq_lens, values, growth)
    if len(lengths) < 2:
        return None
    slope = np.polyfit(np.log(lengths), np.log(costs), 1)[0]
    return Fit(float(slope), int(lengths[0]), int(lengths[-1]), len(lengths))


def fit_exponent(seq_lens, values) -> float:
    """Log-log slope of cost vs L over the compute-bound range; NaN with fewer than two usable lengths."""
    fit = fit_scaling(seq_lens, values)
    return fit.exponent if fit is not None else float("nan")
