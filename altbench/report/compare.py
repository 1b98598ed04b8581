"""Architectures side by side, from the rows of one or more stored runs.

Cells are matched on everything but the architecture: measurement, seq_len and the other series
fields (size, dtype, batch, backend, device; task and metric for capability rows). Named sizes
are the matching unit, so `130m` of one family meets `130m` of another (the families define
their sizes at matched parameter count). When the same cell appears in several runs, the row
read last wins.

Per measurement, the table has one column per architecture ("median [ci_low, ci_high]" in ms,
or the cell's status) and, for every architecture B after the first A, the ratio B/A of the
medians (above 1: B is slower). Capability measurements (probe, lm_eval) show the difference
B − A of the metric instead, since a ratio of accuracies reads badly. Timed measurements also get
an overlaid plot of ms vs L, one colour per architecture, with each line's scaling exponent.

    <out>/compare.md                      every table, with the runs they came from
    <out>/compare_<measurement>.csv       the same numbers, raw
    <out>/compare_<measurement>.png|svg   the overlaid plot
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from altbench.errors import UserError
from altbench.measure import roofline
from altbench.report import load_rows, runs_under
from altbench.report.plots import label, log_axes, save
from altbench.report.tables import (
    IMPL_LEGEND, UNITS, fmt, fmt_len, generate_matched, is_timed, ordered_measurements, series_fields, series_fits, shown_fields,
    sort_key, timing_text, value_text,
)
from altbench.runner import rundir


def find_runs(root: Path, archs: list[str]) -> list[Path]:
    """Runs under `root` holding any of `archs`, oldest first (so that newer rows win)."""
    runs = [run for run in runs_under(root) if any(r.get("arch") in archs for r in rundir.latest_rows(run))]
    if not runs:
        raise UserError(f"no run under {root} holds {', '.join(archs)}; run a suite with them or pass --run RUN")
    return runs


def read_runs(runs: list[Path]) -> list[dict]:
    """The rows of several runs, in the order given; each row keeps (or gets) its run id."""
    return [{"run_id": Path(run).name, **row} for run in runs for row in load_rows(run)]


def check_archs(archs: list[str]) -> None:
    if len(archs) < 2 or len(set(archs)) != len(archs):
        raise UserError(f"compare needs two or more different archs (got {', '.join(archs) or 'none'}), "
                        "e.g. `altbench compare transformer mamba`")


def _check(rows: list[dict], archs: list[str]) -> None:
    check_archs(archs)
    present = sorted({r["arch"] for r in rows if r.get("arch")})
    unknown = [a for a in archs if a not in present]
    if unknown:
        raise UserError(f"no results for {', '.join(unknown)} in the runs read; archs present: "
                        f"{', '.join(present) or 'none'}")


def _figure(row: dict | None, timed: bool) -> float | None:
    if row is None or row.get("status") != "ok":
        return None
    return row.get("ms_median") if timed else row.get("value")


def side_by_side(rows: list[dict], archs: list[str], timed: bool) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """(header lines, Markdown frame, numeric CSV frame) of one measurement's rows."""
    fields = [f for f in series_fields(rows) if f != "arch"]
    shown, constant = shown_fields(rows, fields + ["arch"])
    shown = [f for f in shown if f != "arch"]
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:  # later rows overwrite earlier ones
        cells.setdefault((*(r.get(f) for f in fields), r.get("seq_len")), {})[r["arch"]] = r
    base = archs[0]
    text = timing_text if timed else value_text
    shown_rows, numeric_rows = [], []
    for key in sorted(cells, key=sort_key):
        by_arch = cells[key]
        shown_row = {f: ("–" if v is None else str(v)) for f, v in zip(fields, key) if f in shown}
        numeric_row = dict(zip(fields, key))
        shown_row["L"] = fmt_len(key[-1])
        numeric_row["seq_len"] = key[-1]
        for arch in archs:
            row = by_arch.get(arch)
            shown_row[arch] = text(row) if row is not None else "–"
            numeric_row[f"{arch} status"] = row.get("status") if row is not None else None
            numeric_row[f"{arch} {'ms' if timed else 'value'}"] = _figure(row, timed)
        a = _figure(by_arch.get(base), timed)
        for arch in archs[1:]:
            b = _figure(by_arch.get(arch), timed)
            column = f"{arch}/{base}" if timed else f"{arch} − {base}"
            if a is None or b is None or (timed and a <= 0):
                shown_row[column], numeric_row[column] = "–", None
            else:
                numeric_row[column] = b / a if timed else b - a
                shown_row[column] = fmt(numeric_row[column]) if timed else f"{numeric_row[column]:+.3g}"
        shown_rows.append(shown_row)
        numeric_rows.append(numeric_row)

    setting = " · ".join(f"{f} {v}" for f, v in constant.items() if v is not None and f != "arch")
    unit = UNITS.get(rows[0]["measurement"], "ms per call") if timed else "metric value ± standard error"
    ratio = (f"ratios B/{base} of the medians (above 1: slower than {base})" if timed
             else f"differences B − {base} of the metric")
    matched = any(sum(_figure(by_arch.get(a), timed) is not None for a in archs) >= 2 for by_arch in cells.values())
    lines = [f"Unit: {unit}; {ratio}.", "", f"Setting: {setting or 'see columns'}.", ""]
    if not matched:
        lines += ["No cell ran for two of these archs at the same setting: nothing to compare here.", ""]
    return lines, pd.DataFrame.from_records(shown_rows), pd.DataFrame.from_records(numeric_rows)


def overlay_plot(measurement: str, rows: list[dict], archs: list[str], out_dir: Path) -> list[Path]:
    fields = ["arch"] + [f for f in series_fields(rows) if f != "arch"]
    shown, _ = shown_fields(rows, fields)
    fits = series_fits(rows, fields)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("ms_median") is not None and r.get("seq_len") is not None]
    if not ok:
        return []
    groups = sorted({tuple(r.get(f) for f in fields[1:]) for r in ok}, key=sort_key)
    styles = ("-", "--", ":", "-.")
    fig = Figure(layout="constrained", figsize=(7, 4.5))
    ax = fig.subplots()
    for a, arch in enumerate(archs):
        for g, group in enumerate(groups):
            key = (arch, *group)
            points = sorted((r for r in ok if r["arch"] == arch and tuple(r.get(f) for f in fields[1:]) == group),
                            key=lambda r: r["seq_len"])
            if not points:
                continue
            fit = fits.get(key)
            exponent = f" (exponent {fit.exponent:.2f})" if fit is not None else ""
            ax.plot([r["seq_len"] for r in points], [r["ms_median"] for r in points], marker="o",
                    color=f"C{a % 10}", linestyle=styles[g % len(styles)], label=label(key, fields, shown) + exponent)
    log_axes(ax, "context length (tokens)" if measurement == "decode" else "sequence length L (tokens)", "ms (median)")
    ax.set_title(f"{measurement}: {' vs '.join(archs)}", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, out_dir, f"compare_{measurement}")


def compare(rows: list[dict], archs: list[str], out_dir: Path) -> list[Path]:
    """Side-by-side tables and overlaid plots of `archs` (the first is the reference) in `out_dir`."""
    _check(rows, archs)
    out_dir = rundir.output_dir(Path(out_dir))
    rows = [r for r in rows if r.get("arch") in archs]
    runs = sorted({str(r["run_id"]) for r in rows if r.get("run_id")})
    lines = [f"# {' vs '.join(archs)}", "", f"Runs: {', '.join(runs) or 'not recorded'}.", ""]
    written = []
    for measurement in ordered_measurements(rows):
        subset = [r for r in rows if r.get("measurement") == measurement]
        timed = is_timed(measurement, subset)
        matched = generate_matched(subset) if measurement == "generate" else subset  # AR rows stand at every N
        head, shown, numeric = side_by_side(matched, archs, timed)
        lines += [f"## {measurement}", "", *head, shown.to_markdown(index=False, disable_numparse=True), ""]
        if timed and any(roofline.is_implementation_bound(r) for r in subset):
            lines += [IMPL_LEGEND, ""]
        csv = out_dir / f"compare_{measurement}.csv"
        with rundir.atomic(csv) as tmp:
            numeric.to_csv(tmp, index=False)
        written.append(csv)
        if timed:
            written += overlay_plot(measurement, subset, archs, out_dir)
    md = rundir.write_text(out_dir / "compare.md", "\n".join(lines))
    return [md, *written]
