"""The fairness section of summary.md: for each measurement and architecture, the implementation that
ran (backend; compiled or not; replayed from a CUDA graph or launched eagerly) and the fraction of its
roofline bound it reached (measure/roofline.py), so no reader takes an implementation's cost for
an architecture's."""

from __future__ import annotations

from altbench.measure import roofline


def implementation(row: dict) -> str:
    """e.g. "triton, compiled, CUDA graph" or "torch, eager"."""
    parts = [str(row.get("backend", "?"))]
    if row.get("compiled"):
        parts.append("compiled")
    parts.append("CUDA graph" if row.get("cuda_graphs") else "eager")
    if row.get("fast_path_note"):
        parts.append("graph capture failed")
    return ", ".join(parts)


def fairness_lines(rows: list[dict], measurements: list[str]) -> list[str]:
    """Markdown lines of the section ([] when no row carries a roofline fraction: CPU runs)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("measurement") in measurements]
    if not any(r.get("roofline_frac") is not None for r in ok):
        return []
    lines = ["", "## Fairness: the implementation behind each figure", "",
             f"Fraction of the roofline bound over the run's lengths (1.0 is the device's limit); a cell under "
             f"{roofline.IMPLEMENTATION_BOUND:.0%} is {roofline.IMPLEMENTATION_LABEL}: it measures the code, not the "
             "architecture.", "",
             "| measurement | arch | implementation | roofline fraction (min–max) | implementation-bound cells |",
             "|---|---|---|---|---:|"]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["measurement"], r.get("arch"), implementation(r)), []).append(r)
    for (measurement, arch, impl), group in sorted(groups.items(), key=lambda g: (measurements.index(g[0][0]), str(g[0][1]), g[0][2])):
        fracs = [r["roofline_frac"] for r in group if r.get("roofline_frac") is not None]
        span = f"{min(fracs):.2f}–{max(fracs):.2f}" if fracs else "n/a"
        bound = sum(roofline.is_implementation_bound(r) for r in group)
        lines.append(f"| {measurement} | {arch} | {impl} | {span} | {bound} of {len(group)} |")
    return lines
